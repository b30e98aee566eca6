"""Validate raw post chunks with Great Expectations: a reason per bad row, checks for the batch.

The suite is data (`expectations/posts_raw.json`). Expectations whose `meta.reason` names an
`ml.reasons.Reason` are row level: their failing rows go to quarantine with that reason (the
first in `PRECEDENCE` when several fail). Expectations with `meta.severity` (`error`/`warn`) judge
the chunk as a whole. GX runs in-process on an ephemeral context that is built once per process;
`great_expectations` is imported lazily because importing it costs seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ml.config import Settings
from ml.expectations import load_suite
from ml.reasons import PRECEDENCE, Reason
from ml.source import naive_utc

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

log = logging.getLogger(__name__)

# GX's context and validation objects are not meant for concurrent runs: one at a time.
_LOCK = threading.RLock()

# Kept in result_json per failed expectation; the quarantine itself holds every bad row.
RESULT_INDEX_CAP = 1000
RESULT_VALUES_CAP = 20

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


@dataclass(frozen=True)
class BatchCheck:
    """One batch-level expectation's verdict on a chunk."""

    name: str
    severity: Literal["error", "warn"]
    success: bool
    observed: Any
    message: str


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
    """Validate one raw chunk (columns of `ml.source.RAW_SCHEMA`, naive-UTC timestamps).

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
        raised = _exception_message(res.exception_info)
        positions = np.asarray(res.result.get("unexpected_index_list") or [], dtype=np.int64)
        if raised is None and "reason" in meta:
            count = int(res.result.get("unexpected_count") or 0)
            if count != len(positions):
                raised = f"GX counted {count} failing rows but listed {len(positions)}"
        if raised is not None:
            # Rows this expectation should have judged were not: the chunk cannot be trusted.
            batch.append(
                BatchCheck(
                    name=meta.get("name") or _describe(cfg.type, cfg.kwargs),
                    severity="error",
                    success=False,
                    observed=None,
                    message=f"{_describe(cfg.type, cfg.kwargs)} could not run: {raised}",
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
                        messages=_row_messages(df, cfg.type, cfg.kwargs, meta, positions),
                    )
                )
        else:
            batch.append(_batch_check(cfg.type, cfg.kwargs, meta, res.success, res.result))
        trimmed |= _cap_lists(res.result)

    row_reasons, positions = _combine(row_failures, df.index)
    return ValidationOutcome(
        row_reasons=row_reasons,
        batch=batch,
        result_json=_result_json(result, trimmed, params),
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


# --------------------------------------------------------------------------- messages


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime, pd.Timestamp)):
        return pd.Timestamp(value).isoformat(sep=" ")
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return str(value)


def _bounds(kwargs: dict[str, Any]) -> str:
    parts = []
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None:
        parts.append(f"{'>' if kwargs.get('strict_min') else '>='} {_fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if kwargs.get('strict_max') else '<='} {_fmt(hi)}")
    return " and ".join(parts) or "in range"


def _row_messages(
    work: pd.DataFrame, etype: str, kwargs: dict[str, Any], meta: dict[str, Any], pos: np.ndarray
) -> list[str]:
    """A human sentence per failing row, e.g. `comment_count is -3 (must be >= 0)`."""
    col = kwargs.get("column")
    builder = _ROW_MESSAGES.get(etype)
    if builder is None:
        return [f"fails {_describe(etype, kwargs)}"] * len(pos)
    msgs = builder(work, col, kwargs, pos)
    if meta.get("hint"):
        msgs = [f"{m} ({meta['hint']})" for m in msgs]
    return msgs


def _values(work: pd.DataFrame, col: str, pos: np.ndarray) -> list[Any]:
    return work[col].iloc[pos].tolist()


def _msg_not_null(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    return [f"{col} is null"] * len(pos)


def _msg_between(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    bounds = _bounds(kwargs)
    return [f"{col} is {_fmt(v)} (must be {bounds})" for v in _values(work, col, pos)]


def _msg_lengths(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    bounds = _bounds(kwargs)
    lengths = work[col].iloc[pos].astype(str).str.len().tolist()
    return [f"{col} has {n} characters (must be {bounds})" for n in lengths]


def _msg_regex(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    return [f"{col} is {_fmt(v)}" for v in _values(work, col, pos)]


def _msg_pair_greater(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    a, b = kwargs["column_A"], kwargs["column_B"]
    op = ">=" if kwargs.get("or_equal") else ">"
    return [
        f"{a} is {_fmt(x)} (must be {op} {b} {_fmt(y)})"
        for x, y in zip(_values(work, a, pos), _values(work, b, pos), strict=True)
    ]


_ROW_MESSAGES: dict[str, Callable[[pd.DataFrame, str, dict, np.ndarray], list[str]]] = {
    "expect_column_values_to_not_be_null": _msg_not_null,
    "expect_column_values_to_be_between": _msg_between,
    "expect_column_value_lengths_to_be_between": _msg_lengths,
    "expect_column_values_to_match_regex": _msg_regex,
    "expect_column_values_to_not_match_regex": _msg_regex,
    "expect_column_pair_values_a_to_be_greater_than_b": _msg_pair_greater,
}


def _describe(etype: str, kwargs: dict[str, Any]) -> str:
    target = kwargs.get("column") or ",".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    return f"{etype}({target})" if target else etype


def _batch_check(
    etype: str, kwargs: dict[str, Any], meta: dict[str, Any], success: bool, result: dict
) -> BatchCheck:
    name = meta.get("name") or _describe(etype, kwargs)
    severity = meta["severity"]
    if "observed_value" in result:
        observed = result["observed_value"]
        if etype == "expect_table_columns_to_match_set":
            want, got = set(kwargs.get("column_set") or []), set(observed or [])
            message = (
                "columns as expected"
                if success
                else f"missing columns {sorted(want - got)}, unexpected {sorted(got - want)}"
            )
        else:
            message = f"{name} is {_fmt(observed)} (must be {_bounds(kwargs)})"
    else:
        count = int(result.get("unexpected_count") or 0)
        pct = float(result.get("unexpected_percent") or 0.0)
        observed = {"unexpected_count": count, "unexpected_percent": pct}
        mostly = kwargs.get("mostly")
        allowed = f"at most {100 * (1 - mostly):.3g}%" if mostly is not None else "none"
        message = f"{_describe(etype, kwargs)}: {count} rows ({pct:.3g}%) fail, {allowed} allowed"
    if success:
        message = f"ok: {message}"
    return BatchCheck(
        name=name, severity=severity, success=bool(success), observed=observed, message=message
    )


def _exception_message(info: Any) -> str | None:
    """GX keeps either one exception dict or a dict of them keyed by metric."""
    if not info:
        return None
    if "raised_exception" in info:
        if not info["raised_exception"]:
            return None
        return info.get("exception_message") or "unknown error"
    for sub in info.values():
        msg = _exception_message(sub) if isinstance(sub, dict) else None
        if msg:
            return msg
    return None


def _cap_lists(result: dict[str, Any]) -> bool:
    """Cap per-row lists in a GX result in place (before JSON conversion, which is slow on them).

    The quarantine holds every bad row; the kept result only needs counts and examples.
    """
    capped = False
    for key, cap in (
        ("unexpected_index_list", RESULT_INDEX_CAP),
        ("unexpected_list", RESULT_VALUES_CAP),
        ("partial_unexpected_index_list", RESULT_VALUES_CAP),
    ):
        values = result.get(key)
        if isinstance(values, list) and len(values) > cap:
            result[key] = values = values[:cap]
            capped = True
        if isinstance(values, list) and key != "unexpected_index_list":
            result[key] = [_short(v) for v in values]
    return capped


def _short(value: Any, limit: int = 200) -> Any:
    """A 3000-character caption is no better an example than its first 200 characters."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...[{len(value)} chars]"
    return value


def _result_json(result: Any, trimmed: bool, params: dict[str, Any]) -> dict[str, Any]:
    data = result.to_json_dict()
    data.setdefault("meta", {})["postflow"] = {
        "expectation_parameters": {
            k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()
        },
        "index": "row positions within the validated chunk",
        "lists_capped_at": {"index": RESULT_INDEX_CAP, "values": RESULT_VALUES_CAP},
        "trimmed": trimmed,
    }
    return data


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
