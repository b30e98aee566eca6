"""The nightly ETL of one window: extract → validate + sanitise → reconcile.

Each stage reads and writes whole lake partitions keyed by the window's start date, so a stage
can be retried alone and re-running a date replaces its partitions. Every extracted row ends in
exactly one of `posts_clean` or `quarantine`; `reconcile` proves it and fails loudly otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml.config import ConfigError, Settings
from ml.ingest.extract import EXTRACT_PLANS, choose_plan, extract_window
from ml.ingest.reasons import Reason
from ml.ingest.source import MySQLTarget
from ml.lake.partitions import Lake, PartitionWriter, ds_str
from ml.lake.schema import (
    CLEAN_SCHEMA,
    DATASET_CLEAN,
    DATASET_QUARANTINE,
    DATASET_RAW,
    DISTINCT_COLUMNS,
    QUARANTINE_SCHEMA,
    RAW_SCHEMA,
)
from ml.progress import Progress

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """A batch-level expectation of severity `error` failed: the day must not feed training."""


class StaleExtract(RuntimeError):
    """posts_raw changed while a validate step read it: its partitions would be stale."""


class ReconciliationError(RuntimeError):
    """Rows were lost or duplicated between extract and the clean/quarantine partitions."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty window: end {self.end} is not after start {self.start}")

    @property
    def ds(self) -> str:
        return ds_str(self.start)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# -- extract --------------------------------------------------------------------------------------


def extract(
    settings: Settings, window: Window, target: MySQLTarget | None = None
) -> dict[str, Any]:
    """Copy the window's posts from MySQL into `posts_raw/ds=D` (a replayable snapshot)."""
    target = target or MySQLTarget.parse(settings.mysql_uri)
    lake = Lake.from_settings(settings)
    lake.check()
    t0 = time.monotonic()
    plan = settings.extract_plan
    if plan not in EXTRACT_PLANS:
        raise ConfigError(
            f"POSTFLOW_EXTRACT_PLAN={plan!r} is not one of {', '.join(EXTRACT_PLANS)}"
        )
    if plan == "auto":
        plan = choose_plan(target, window.start, window.end)
    progress = Progress(f"extract {window.ds} ({plan})", None)
    chunks = extract_window(
        target,
        window.start,
        window.end,
        plan,
        settings.extract_chunk_rows,
        parallel=settings.workers,
    )
    with (
        lake.writer(DATASET_RAW, window.ds, RAW_SCHEMA, DISTINCT_COLUMNS) as w,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = None  # the Parquet write of chunk i overlaps the read of chunk i+1
        for chunk in chunks:
            if pending is not None:
                pending.result()
            pending = pool.submit(w.write, chunk)
            progress.add(chunk.num_rows)
        if pending is not None:
            pending.result()
        w.meta.update(
            window_start=window.start.isoformat(),
            window_end=window.end.isoformat(),
            source=target.describe(),
        )
    seconds = time.monotonic() - t0
    progress.add(0, force=True)
    log.info("extracted %d rows of %s in %.1fs", w.rows, window.ds, seconds)
    return {
        "ds": window.ds,
        "rows": w.rows,
        "uri": lake.partition_uri(DATASET_RAW, window.ds),
        "plan": plan,
        "seconds": round(seconds, 3),
    }


# -- validate + sanitise --------------------------------------------------------------------------


@dataclass
class CleanStats:
    rows_in: int = 0
    clean: int = 0
    reasons: Counter = field(default_factory=Counter)
    batch_errors: list[str] = field(default_factory=list)
    batch_warnings: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())


def superseded_positions(lake: Lake, ds: str) -> set[int]:
    """Row positions (in partition order) of older versions of a post id: the latest wins."""
    return superseded_in(lake.read_partition(DATASET_RAW, ds, columns=["id", "updated_at"]))


def superseded_in(keys: pa.Table) -> set[int]:
    """Positions (in `keys` order) of rows whose post id has a newer version in `keys`.

    Computed on (id, updated_at) of a whole partition, or of a shard (all versions of an id
    fall in one id range), so duplicates are found whatever batch they fall in; 16 bytes a
    row keeps this small even for millions of rows.
    """
    if keys.num_rows == 0:
        return set()
    ids = keys.column("id")
    if pc.count_distinct(ids).as_py() == keys.num_rows - ids.null_count:
        return set()
    pos = pa.array(range(keys.num_rows), pa.int64())
    t = pa.table({"id": ids, "updated_at": keys.column("updated_at"), "pos": pos})
    t = t.filter(pc.is_valid(t["id"])).sort_by(
        [("id", "ascending"), ("updated_at", "descending"), ("pos", "descending")]
    )
    id_list = t.column("id").to_pylist()
    positions = t.column("pos").to_pylist()
    return {positions[i] for i in range(1, len(id_list)) if id_list[i] == id_list[i - 1]}


def require_extract(lake: Lake, ds: str, raw_run_id: str) -> Callable[[], None]:
    """A writer precondition: posts_raw/ds is still the extract `raw_run_id`.

    A run of the same day may re-extract meanwhile (a backfill overlapping the scheduled run):
    rows of the older extract must then not replace partitions built from the newer one. Each
    writer checks right before its manifest, so no partition of a stale run lands; the retry
    validates the current extract. (Between that read and the manifest write a window of
    microseconds remains: the lake has no compare-and-set.)
    """

    def same_extract() -> None:
        current = (lake.read_manifest(DATASET_RAW, ds) or {}).get("run_id")
        if current != raw_run_id:
            raise StaleExtract(
                f"{ds}: posts_raw was re-extracted ({raw_run_id} -> {current}) "
                "while this run validated it; not committed, re-run the validate step"
            )

    return same_extract


def clean(settings: Settings, window: Window, now: datetime | None = None) -> dict[str, Any]:
    """Validate and sanitise `posts_raw/ds=D` into `posts_clean/ds=D` and `quarantine/ds=D`."""
    now = _utc(now or datetime.now(UTC))
    lake = Lake.from_settings(settings)
    ds = window.ds
    raw_manifest = lake.read_manifest(DATASET_RAW, ds)
    if raw_manifest is None:
        raise FileNotFoundError(
            f"{lake.partition_uri(DATASET_RAW, ds)} does not exist: run the extract step first"
        )
    superseded = superseded_positions(lake, ds)
    progress = Progress(f"validate {ds}", raw_manifest["rows"])
    t0 = time.monotonic()
    with (
        lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA, DISTINCT_COLUMNS) as clean_w,
        lake.writer(DATASET_QUARANTINE, ds, QUARANTINE_SCHEMA, DISTINCT_COLUMNS) as quar_w,
    ):
        batches = lake.iter_batches(DATASET_RAW, ds, settings.extract_chunk_rows)
        stats, results = clean_into(
            batches, superseded, window, now, settings, clean_w, quar_w, progress
        )
        day_checks(stats, settings)
        # Raised inside both writers: neither partition is committed, so the day's previous
        # posts_clean (or none) stays what readers see.
        fail_if_errors(stats, ds)
        report_uri = finish_day(stats, results, window, raw_manifest["run_id"], clean_w, quar_w)
        clean_w.precondition = quar_w.precondition = require_extract(
            lake, ds, raw_manifest["run_id"]
        )
    progress.add(0, force=True)
    return day_summary(lake, ds, stats, report_uri, time.monotonic() - t0)


def clean_into(
    batches: Iterable[pa.Table],
    superseded: set[int],
    window: Window,
    now: datetime,
    settings: Settings,
    clean_w: PartitionWriter,
    quar_w: PartitionWriter,
    progress: Progress,
) -> tuple[CleanStats, list[dict[str, Any]]]:
    """Validate and sanitise `batches` (rows of posts_raw, `superseded` their positions in
    this stream) into the two writers; returns the counts and each chunk's GX result. What
    the day as a whole must pass (row count, quarantined fraction) is `day_checks`."""
    import pandas as pd

    from ml.ingest.captions import sanitize_captions
    from ml.ingest.images import check_uris
    from ml.ingest.validate import validate_posts

    stats = CleanStats()
    results: list[dict[str, Any]] = []
    offset = 0
    chunk_settings = settings.replace(min_rows_error=0)  # row count is checked on the whole day
    for batch in batches:
        n = batch.num_rows
        df = batch.to_pandas(types_mapper=pd.ArrowDtype)
        df.index = pd.RangeIndex(offset, offset + n)
        stats.rows_in += n
        # one reason and message per row, by position in this batch
        reason = np.full(n, None, dtype=object)
        message = np.full(n, "", dtype=object)

        if superseded:
            dup = np.isin(np.arange(offset, offset + n), list(superseded))
            reason[dup] = Reason.DUPLICATE_SUPERSEDED.value
            message[dup] = "a newer version of this post id is in the same window"
        offset += n

        todo = _pending(reason)
        outcome = validate_posts(
            df.iloc[todo],
            window.start,
            window.end,
            now,
            chunk_settings,
        )
        if len(outcome.row_reasons):
            pos = outcome.row_reasons.index.to_numpy(dtype=np.int64) - (offset - n)
            reason[pos] = outcome.row_reasons["reason"].astype(str).to_numpy()
            message[pos] = outcome.row_reasons["message"].astype(str).to_numpy()
        stats.batch_errors += [c.message for c in outcome.errors]
        stats.batch_warnings += [c.message for c in outcome.warnings]
        results.append(outcome.result_json)

        todo = _pending(reason)
        cleaned = sanitize_captions(df["caption"].iloc[todo]).to_numpy(dtype=object, copy=True)
        empty = np.array([c is None or c is pd.NA or c == "" for c in cleaned], dtype=bool)
        if settings.require_caption:
            reason[todo[empty]] = Reason.CAPTION_EMPTY.value
            message[todo[empty]] = (
                "caption is empty after removing whitespace and control characters"
            )
        cleaned[empty] = ""  # no caption is a valid post: it is kept with ""
        caption_of = dict(zip(todo.tolist(), cleaned.tolist(), strict=True))

        todo = _pending(reason)
        uris = batch.column("image_uri").take(pa.array(todo, pa.int64())).to_pylist()
        images = dict(zip(todo.tolist(), check_uris(uris, settings), strict=True))
        for p, res in images.items():
            if res.reason is not None:
                reason[p] = Reason(res.reason).value
                message[p] = res.message

        ok = _pending(reason)
        clean_t = batch.take(pa.array(ok, pa.int64()))
        clean_t = clean_t.set_column(
            clean_t.schema.get_field_index("caption"),
            "caption",
            pa.array([caption_of[p] for p in ok], pa.large_string()),
        )
        for col in ("format", "width", "height", "exif_orientation"):
            name = col if col == "exif_orientation" else f"image_{col}"
            values = [getattr(images[p], col) for p in ok]
            clean_t = clean_t.append_column(name, pa.array(values, CLEAN_SCHEMA.field(name).type))
        clean_w.write(clean_t)
        stats.clean += clean_t.num_rows

        bad = np.flatnonzero(np.array([r is not None for r in reason], dtype=bool))
        if len(bad):
            q = batch.take(pa.array(bad, pa.int64()))
            q = q.append_column("reason", pa.array(reason[bad].tolist(), pa.string()))
            q = q.append_column("message", pa.array(message[bad].tolist(), pa.string()))
            quar_w.write(q)
            stats.reasons.update(reason[bad].tolist())
        progress.add(n)

    return stats, results


def day_checks(stats: CleanStats, settings: Settings) -> None:
    """The day's own expectations (row count, quarantined fraction), added to `stats`."""
    if stats.rows_in < settings.min_rows_error:
        stats.batch_errors.append(
            f"row count {stats.rows_in} is below the minimum {settings.min_rows_error}"
        )
    fraction = stats.quarantined / stats.rows_in if stats.rows_in else 0.0
    if fraction > settings.max_quarantine_fraction_error:
        stats.batch_errors.append(
            f"{fraction:.1%} of rows quarantined (error above "
            f"{settings.max_quarantine_fraction_error:.0%})"
        )
    elif fraction > settings.max_quarantine_fraction_warn:
        stats.batch_warnings.append(
            f"{fraction:.1%} of rows quarantined (warning above "
            f"{settings.max_quarantine_fraction_warn:.0%})"
        )


def fail_if_errors(stats: CleanStats, ds: str) -> None:
    if stats.batch_errors:
        for error in stats.batch_errors:
            log.error("validation error for %s: %s", ds, error)
        raise ValidationFailed(
            f"{ds}: batch validation failed, posts_clean and quarantine not committed: "
            + "; ".join(stats.batch_errors)
        )


def finish_day(
    stats: CleanStats,
    results: list[dict[str, Any]],
    window: Window,
    raw_run_id: str,
    clean_w: PartitionWriter,
    quar_w: PartitionWriter,
) -> str:
    """The validation report and the manifests' metadata of a validated day; its report URI."""
    status = "ok"
    report = json.dumps(
        {
            "status": status,
            "errors": stats.batch_errors,
            "warnings": stats.batch_warnings,
            "chunks": results,
        },
        default=str,
    ).encode()
    report_uri = clean_w.write_artifact("validation.json", report)
    common = dict(
        window_start=window.start.isoformat(),
        window_end=window.end.isoformat(),
        source_rows=stats.rows_in,
        raw_run_id=raw_run_id,
        validation_status=status,
        validation_report=report_uri,
    )
    clean_w.meta.update(common, quarantined=stats.quarantined)
    quar_w.meta.update(common, reasons=dict(sorted(stats.reasons.items())))
    return report_uri


def day_summary(
    lake: Lake, ds: str, stats: CleanStats, report_uri: str, seconds: float
) -> dict[str, Any]:
    for warning in stats.batch_warnings:
        log.warning("validation warning for %s: %s", ds, warning)
    return {
        "ds": ds,
        "rows_in": stats.rows_in,
        "clean": stats.clean,
        "quarantined": stats.quarantined,
        "reasons": dict(sorted(stats.reasons.items())),
        "warnings": stats.batch_warnings,
        "errors": stats.batch_errors,
        "clean_uri": lake.partition_uri(DATASET_CLEAN, ds),
        "quarantine_uri": lake.partition_uri(DATASET_QUARANTINE, ds),
        "validation_report": report_uri,
        "seconds": round(seconds, 3),
    }


def _pending(reason: np.ndarray) -> np.ndarray:
    """Positions of rows with no reason yet: each check only sees rows still in the running."""
    return np.flatnonzero(np.array([r is None for r in reason], dtype=bool))


# -- reconcile ------------------------------------------------------------------------------------


def reconcile(settings: Settings, window: Window) -> dict[str, Any]:
    """Prove nothing was lost or duplicated: raw ids == clean ids ⊎ quarantine ids."""
    lake = Lake.from_settings(settings)
    ds = window.ds
    manifests = {
        d: lake.read_manifest(d, ds) for d in (DATASET_RAW, DATASET_CLEAN, DATASET_QUARANTINE)
    }
    missing = [d for d, m in manifests.items() if m is None]
    if missing:
        raise ReconciliationError(f"{ds}: partitions missing: {missing}")
    raw_run = manifests[DATASET_RAW]["run_id"]
    for d in (DATASET_CLEAN, DATASET_QUARANTINE):
        if manifests[d].get("raw_run_id") != raw_run:
            raise ReconciliationError(
                f"{ds}: {d} was built from extract {manifests[d].get('raw_run_id')}, "
                f"but posts_raw is now {raw_run}: re-run the validate step"
            )
    # Arrow arrays, not Python objects: 8 bytes a post (a Counter of a 1M-post day took 190 MB)
    ids = {
        d: lake.read_partition(d, ds, columns=["id"]).column("id").combine_chunks()
        for d in manifests
    }
    raw, clean_a, quar = ids[DATASET_RAW], ids[DATASET_CLEAN], ids[DATASET_QUARANTINE]
    out = pa.concat_arrays([clean_a, quar])
    problems = []
    if len(raw) != len(out):
        problems.append(
            f"row counts differ: raw {len(raw)} != clean {len(clean_a)} + quarantine {len(quar)}"
        )
    if not pc.take(raw, pc.sort_indices(raw)).equals(pc.take(out, pc.sort_indices(out))):
        raw_ids, out_ids = Counter(raw.to_pylist()), Counter(out.to_pylist())  # failure only
        lost, extra = raw_ids - out_ids, out_ids - raw_ids
        problems.append(
            f"ids lost {sorted(lost, key=str)[:10]}, ids added {sorted(extra, key=str)[:10]}"
        )
    counts = pc.value_counts(clean_a)
    twice = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
    if twice:
        problems.append(f"post ids twice in posts_clean: {sorted(twice, key=str)[:10]}")
    for d, m in manifests.items():
        actual = len(ids[d])
        if m["rows"] != actual:
            problems.append(f"{d} manifest says {m['rows']} rows, files hold {actual}")
    if problems:
        raise ReconciliationError(f"{ds}: " + "; ".join(problems))
    result = {
        "ds": ds,
        "rows_in": len(raw),
        "clean": len(clean_a),
        "quarantined": len(quar),
        "reasons": manifests[DATASET_QUARANTINE].get("reasons", {}),
        "validation_status": manifests[DATASET_CLEAN].get("validation_status"),
        "clean_uri": lake.partition_uri(DATASET_CLEAN, ds),
        "quarantine_uri": lake.partition_uri(DATASET_QUARANTINE, ds),
    }
    log.info("reconciled %s: %s", ds, result)
    return result


def run_etl(settings: Settings, window: Window, now: datetime | None = None) -> dict[str, Any]:
    """All three stages in one process: what `python -m ml etl` and the demo run."""
    t0 = time.monotonic()
    ex = extract(settings, window)
    cl = clean(settings, window, now)
    rc = reconcile(settings, window)
    seconds = time.monotonic() - t0
    return {
        **rc,
        "warnings": cl["warnings"],
        "validation_report": cl["validation_report"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(ex["rows"] / seconds, 1) if seconds else None,
    }
