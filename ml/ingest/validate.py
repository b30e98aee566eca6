"""Validate raw post chunks with Great Expectations: a reason per bad row, checks for the batch.

The suite is data (`expectations/posts_raw.json`). Expectations whose `meta.reason` names an
`ml.ingest.reasons.Reason` are row level: their failing rows go to quarantine with that reason (the
first in `PRECEDENCE` when several fail). Expectations with `meta.severity` (`error`/`warn`) judge
the chunk as a whole. GX runs in-process on an ephemeral context that is built once per process;
`great_expectations` is imported lazily because importing it costs seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.config import Settings
from ml.ingest.expectations import load_suite
from ml.ingest.gx_results import (
    RESULT_VALUES_CAP,
    BatchCheck,
    batch_check,
    cap_lists,
    describe,
    exception_message,
    result_json,
    row_messages,
)
from ml.ingest.reasons import PRECEDENCE, Reason
from ml.ingest.source import naive_utc

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

log = logging.getLogger(__name__)

# GX's context and validation objects are not meant for concurrent runs: one at a time.
_LOCK = threading.RLock()


_RESULT_FORMAT: dict[str, Any] = {
    # COMPLETE is what returns every failing row's index; the values lists are capped by GX at
    # 200 anyway and the index query (a pandas expression string per expectation) is not needed.
    "result_format": "COMPLETE",
    "partial_unexpected_count": RESULT_VALUES_CAP,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
_RANK = {reason: i for i, reason in enumerate(PRECEDENCE)}
TIMESTAMP_COLUMNS = ("created_at", "updated_at")
COUNT_COLUMNS = ("hearts", "comment_count")
_NS = np.dtype("datetime64[ns]")
_MIN_US = pd.Timestamp.min.ceil("us").as_unit("us")
_MAX_US = pd.Timestamp.max.floor("us").as_unit("us")


@dataclass
class ValidationOutcome:
    """What the ETL needs from one chunk: reasons for bad rows, verdicts for the batch."""

    row_reasons: pd.DataFrame  # index: df labels of failing rows; columns reason, message
    batch: list[BatchCheck]
    result_json: dict[str, Any]  # the GX result, index lists are row positions in the chunk
    n_rows: int = 0
    row_positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seconds: float = 0.0

    @property
    def errors(self) -> list[BatchCheck]:
        return [c for c in self.batch if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[BatchCheck]:
        return [c for c in self.batch if not c.success and c.severity == "warn"]

    @property
    def ok(self) -> bool:
        """No batch error (quarantined rows do not make a chunk fail)."""
        return not self.errors

    @property
    def passed_mask(self) -> np.ndarray:
        """Boolean array over the chunk's rows by position: True where no row-level check failed."""
        mask = np.ones(self.n_rows, dtype=bool)
        mask[self.row_positions] = False
        return mask

    def reason_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.row_reasons["reason"].value_counts().items()}

    def split(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(passed rows, quarantined rows with `reason` and `message`) of the validated `df`."""
        if len(df) != self.n_rows:
            raise ValueError(f"outcome is for {self.n_rows} rows, got a frame of {len(df)}")
        bad = df.iloc[self.row_positions].copy()
        bad["reason"] = self.row_reasons["reason"].to_numpy()
        bad["message"] = self.row_reasons["message"].to_numpy()
        return df.iloc[np.flatnonzero(self.passed_mask)], bad


# --------------------------------------------------------------------------- GX engine


class _Engine:
    """One ephemeral GX context per process with a dataframe asset; suites added once each.

    Chunks are validated with `Batch.validate(suite)`, which runs the same Validator as
    `ValidationDefinition.run` but does not put the result in the context's validation-results
    store: `run` serialises every result into that in-memory store (~0.2 s per 250k-row chunk)
    and keeps it there for the life of the process.
    """

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        # tqdm bars per run would flood task logs.
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        asset = self.context.data_sources.add_pandas("postflow").add_dataframe_asset("posts_raw")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("chunk")
        self._suites: dict[int, tuple[Any, Any]] = {}

    def added(self, suite: ExpectationSuite) -> ExpectationSuite:
        """`suite` as added to the context, which gives each expectation the id results carry."""
        key = id(suite)
        if key not in self._suites:
            if self._suites:  # suite names are unique per context
                suite.name = f"{suite.name}_{len(self._suites)}"
            # Keep `suite` referenced so its id() is not reused by another object.
            self._suites[key] = (suite, self.context.suites.add(suite))
        return self._suites[key][1]

    def run(self, suite: ExpectationSuite, df: pd.DataFrame, params: dict[str, Any]) -> Any:
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": df})
        return batch.validate(
            self.added(suite), result_format=_RESULT_FORMAT, expectation_parameters=params
        )


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


# --------------------------------------------------------------------------- validation


def validate_posts(
    df: pd.DataFrame,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    settings: Settings,
    *,
    suite: ExpectationSuite | None = None,
    min_rows: int | None = None,
) -> ValidationOutcome:
    """Validate one raw chunk (columns of `ml.ingest.source.RAW_SCHEMA`, naive-UTC timestamps).

    `window_start`/`window_end` bound `updated_at` as `[start, end)`; `now` bounds every
    timestamp. Aware datetimes are converted to naive UTC. A NULL caption is a reason only with
    `settings.require_caption`. `min_rows` overrides
    `settings.min_rows_error` (a day of several chunks checks its total elsewhere and passes 0).
    """
    t0 = time.perf_counter()
    start, end, now = naive_utc(window_start), naive_utc(window_end), naive_utc(now)
    if start >= end:
        raise ValueError(f"empty window [{start}, {end})")
    params = {
        "window_start": start,
        "window_end": end,
        "now": now,
        "caption_max_chars": int(settings.caption_max_chars),
        "min_rows": int(settings.min_rows_error if min_rows is None else min_rows),
    }
    suite = suite if suite is not None else load_suite()
    work = _prepare(df)
    with _LOCK:  # GX's context and validation objects are not meant for concurrent runs
        engine = _engine()
        added = engine.added(suite)
        result = engine.run(suite, work, params)
    order = {e.id: i for i, e in enumerate(added.expectations)}

    # GX groups results by column; suite order makes the result and ties readable.
    result.results = sorted(
        result.results, key=lambda r: order.get(r.expectation_config.id, len(order))
    )
    row_failures: list[_RowFailures] = []
    batch: list[BatchCheck] = []
    trimmed = False
    for res in result.results:
        cfg = res.expectation_config
        meta = cfg.meta or {}
        raised = exception_message(res.exception_info)
        positions = np.asarray(res.result.get("unexpected_index_list") or [], dtype=np.int64)
        if raised is None and "reason" in meta:
            count = int(res.result.get("unexpected_count") or 0)
            if count != len(positions):
                raised = f"GX counted {count} failing rows but listed {len(positions)}"
        if raised is not None:
            # Rows this expectation should have judged were not: the chunk cannot be trusted.
            batch.append(
                BatchCheck(
                    name=meta.get("name") or describe(cfg.type, cfg.kwargs),
                    severity="error",
                    success=False,
                    observed=None,
                    message=f"{describe(cfg.type, cfg.kwargs)} could not run: {raised}",
                )
            )
        elif "reason" in meta:
            # a post without a caption is a valid post unless POSTFLOW_REQUIRE_CAPTION
            optional = meta["reason"] == Reason.CAPTION_NULL and not settings.require_caption
            if len(positions) and not optional:
                row_failures.append(
                    _RowFailures(
                        positions=positions,
                        reason=Reason(meta["reason"]),
                        order=order.get(cfg.id, len(order)),
                        messages=row_messages(df, cfg.type, cfg.kwargs, meta, positions),
                    )
                )
        else:
            batch.append(batch_check(cfg.type, cfg.kwargs, meta, res.success, res.result))
        trimmed |= cap_lists(res.result)

    row_reasons, positions = _combine(row_failures, df.index)
    return ValidationOutcome(
        row_reasons=row_reasons,
        batch=batch,
        result_json=result_json(result, trimmed, params),
        n_rows=len(df),
        row_positions=positions,
        seconds=time.perf_counter() - t0,
    )


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A view of `df` that GX reports on by position and checks with vectorised pandas.

    GX reports a failing row by the frame's index label (by a dict of values when the index is
    named); positions survive duplicate or odd labels and map back with `df.index[pos]`.
    GX 1.24 compares timestamps vectorised only for datetime64[ns] columns: pandas 3 and Arrow
    give datetime64[us], which GX checks one Python object at a time (~20x slower). Values
    beyond the ns range (MySQL allows 0001..9999) are clipped to it: still in the future or out
    of the window, and messages quote the original values. Nullable integer columns become
    float64 for the same reason.
    """
    work = df.reset_index(drop=True)  # lazy under copy-on-write: no data copied
    for col in TIMESTAMP_COLUMNS:
        if col not in work or not pd.api.types.is_datetime64_any_dtype(work[col].dtype):
            continue  # missing or not a timestamp: the columns check or GX reports it
        s = work[col]
        if s.dt.tz is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        if s.dtype != _NS:
            s = s.astype("datetime64[us]").clip(_MIN_US, _MAX_US).astype(_NS)
        work[col] = s
    for col in COUNT_COLUMNS:
        dtype = work[col].dtype if col in work else None
        if dtype is not None and not isinstance(dtype, np.dtype):  # Int64, int64[pyarrow], ...
            if pd.api.types.is_numeric_dtype(dtype):
                work[col] = work[col].astype("float64")  # nulls become NaN
    return work


@dataclass
class _RowFailures:
    positions: np.ndarray
    reason: Reason
    order: int
    messages: list[str]


def _combine(failures: Sequence[_RowFailures], index: pd.Index) -> tuple[pd.DataFrame, np.ndarray]:
    """One reason per row: the first by PRECEDENCE (then suite order); others go in the message."""
    if not failures:
        empty = pd.DataFrame(
            {"reason": pd.Series([], dtype=object), "message": pd.Series([], dtype=object)},
            index=index[:0],
        )
        return empty, np.empty(0, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "pos": np.concatenate([f.positions for f in failures]),
            "rank": np.concatenate([np.full(len(f.positions), _RANK[f.reason]) for f in failures]),
            "order": np.concatenate([np.full(len(f.positions), f.order) for f in failures]),
            "reason": np.concatenate(
                [np.full(len(f.positions), f.reason.value, dtype=object) for f in failures]
            ),
            "message": np.concatenate([np.asarray(f.messages, dtype=object) for f in failures]),
        }
    ).sort_values(["pos", "rank", "order"], kind="stable")
    dup = frame.duplicated("pos", keep="first").to_numpy()
    first = frame[~dup]
    messages = first["message"].to_numpy(dtype=object)
    if dup.any():
        rest = frame[dup]
        extra = (
            (rest["reason"] + ": " + rest["message"]).groupby(rest["pos"].to_numpy()).agg("; ".join)
        )
        pos_first = first["pos"].to_numpy()
        where = np.flatnonzero(np.isin(pos_first, extra.index.to_numpy()))
        also = extra.reindex(pos_first[where]).to_numpy(dtype=object)
        messages[where] = messages[where] + "; also " + also
    positions = first["pos"].to_numpy(dtype=np.int64)
    out = pd.DataFrame(
        {"reason": first["reason"].to_numpy(dtype=object), "message": messages},
        index=index[positions],
    )
    return out, positions


def render_summary(outcome: ValidationOutcome) -> str:
    """A few lines for task logs and the report: rows, quarantine reasons, failed checks."""
    n, bad = outcome.n_rows, len(outcome.row_reasons)
    pct = 100.0 * bad / n if n else 0.0
    lines = [f"validated {n} rows in {outcome.seconds:.2f}s: {bad} quarantined ({pct:.2f}%)"]
    for reason, count in sorted(outcome.reason_counts().items(), key=lambda kv: -kv[1]):
        example = outcome.row_reasons.loc[outcome.row_reasons["reason"] == reason, "message"]
        lines.append(f"  {reason}: {count} (e.g. {example.iloc[0]})")
    for check in outcome.errors:
        lines.append(f"  ERROR {check.name}: {check.message}")
    for check in outcome.warnings:
        lines.append(f"  WARN {check.name}: {check.message}")
    if outcome.ok and not outcome.warnings:
        lines.append("  batch checks: all passed")
    return "\n".join(lines)
