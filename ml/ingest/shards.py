"""`validate` of one day sharded over id ranges of `posts_raw`, their merge, and the `python -m ml
etl` command (issue 22).

A day past one worker's night is validated by N shards, each on any worker: shard i of N reads the
ids of the current extract, cuts them into N ranges of equal row counts (the same cut in every
shard, computed from the data, so no plan has to travel), validates its range with the very code
of the unsharded step (`ml.ingest.etl.clean_into`) and commits its two parts under
`_staging/validate/ds=D/raw=<extract run>/n=N/shard=i/`. All versions of a post id fall in one
range, so the duplicate rule holds per shard. The merge then commits one `posts_clean` and one
`quarantine` partition for the day (one manifest each, the staged Parquet files copied in whole)
after the day's own checks on the summed counts. Shards and merge are tied to the extract they
read: staged parts are keyed by it, each commit checks it is still current (`require_extract`),
and a merge refuses shards of any other extract, so two runs of one day never mix.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import posixpath
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ml.config import ConfigError, Settings, parse_shard
from ml.ingest.etl import (
    CleanStats,
    ReconciliationError,
    StaleExtract,
    ValidationFailed,
    Window,
    clean,
    clean_into,
    day_checks,
    day_summary,
    extract,
    fail_if_errors,
    finish_day,
    reconcile,
    require_extract,
    run_etl,
    superseded_in,
)
from ml.ingest.source import SourceError
from ml.lake.partitions import ORPHAN_GRACE_S, Lake, LakeError
from ml.lake.schema import (
    CLEAN_SCHEMA,
    DATASET_CLEAN,
    DATASET_QUARANTINE,
    DATASET_RAW,
    DISTINCT_COLUMNS,
    QUARANTINE_SCHEMA,
)
from ml.progress import Progress

log = logging.getLogger(__name__)

STAGING = "_staging/validate"


class ShardsMissing(RuntimeError):
    """The merge found no complete set of shards for the current extract."""


def shard_count(settings: Settings, rows: int) -> int:
    """`validate_shards`, or when 0: one shard per `validate_shard_rows` rows, capped."""
    if settings.validate_shards > 0:
        return settings.validate_shards
    per = max(1, settings.validate_shard_rows)
    return max(1, min(max(1, settings.validate_max_shards), math.ceil(rows / per)))


def plan(settings: Settings, window: Window) -> dict[str, Any]:
    """How many shards validate the day's current extract."""
    lake = Lake.from_settings(settings)
    raw = _raw_manifest(lake, window.ds)
    n = shard_count(settings, raw["rows"])
    return {"ds": window.ds, "rows": raw["rows"], "raw_run_id": raw["run_id"], "shards": n}


def shard_bounds(ids: pa.Array | pa.ChunkedArray, n: int) -> list[int | None]:
    """n + 1 bounds of n id ranges with equal row counts: shard i holds `lo <= id < hi` (None:
    unbounded; rows without an id go to shard 0). Equal ids never straddle two ranges."""
    values = np.sort(pc.drop_null(ids).to_numpy(zero_copy_only=False).astype(np.int64))
    inner = [int(values[k * len(values) // n]) if len(values) else 0 for k in range(1, n)]
    return [None, *inner, None]


def in_range(ids: pa.Array | pa.ChunkedArray, lo: int | None, hi: int | None) -> pa.Array:
    """The rows of shard [lo, hi) as a boolean mask (null ids belong to the first shard)."""
    mask = pc.is_valid(ids)
    if lo is not None:
        mask = pc.and_(mask, pc.greater_equal(ids, lo))
    if hi is not None:
        mask = pc.and_(mask, pc.less(ids, hi))
    mask = pc.fill_null(mask, False)
    return pc.or_(mask, pc.is_null(ids)) if lo is None else mask


def iter_range(
    lake: Lake,
    files: list[str],
    lo: int | None,
    hi: int | None,
    batch_rows: int,
    columns: list[str] | None = None,
) -> Iterator[pa.Table]:
    """The rows of `files` (in their order) with an id in [lo, hi), in batches of `batch_rows`;
    row groups whose id statistics lie outside the range are not read."""
    pending: list[pa.Table] = []
    size = 0
    for path in files:
        with lake.fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            groups = [
                g
                for g in range(pf.num_row_groups)
                if _may_hold(
                    pf.metadata.row_group(g), pf.schema_arrow.get_field_index("id"), lo, hi
                )
            ]
            cols = columns if columns is None or "id" in columns else ["id", *columns]
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols):
                t = pa.Table.from_batches([batch])
                t = t.filter(in_range(t.column("id"), lo, hi))
                if columns is not None:
                    t = t.select(columns)
                pending.append(t)
                size += t.num_rows
                while size >= batch_rows:
                    whole = pa.concat_tables(pending)
                    yield whole.slice(0, batch_rows)
                    rest = whole.slice(batch_rows)
                    pending, size = [rest], rest.num_rows
    if size:
        yield pa.concat_tables(pending)


def _may_hold(row_group: Any, id_index: int, lo: int | None, hi: int | None) -> bool:
    stats = row_group.column(id_index).statistics
    if stats is None or not stats.has_min_max:
        return True
    if stats.null_count and lo is None:
        return True
    return not ((lo is not None and stats.max < lo) or (hi is not None and stats.min >= hi))


def staging_dataset(ds: str, raw_run_id: str, shards: int, shard: int, dataset: str) -> str:
    """Where shard `shard` of `shards` stages its part of `dataset`, for one extract."""
    return f"{STAGING}/ds={ds}/raw={raw_run_id}/n={shards}/shard={shard}/{dataset}"


def validate_shard(
    settings: Settings, window: Window, shard: int, shards: int, now: datetime | None = None
) -> dict[str, Any]:
    """Validate and sanitise shard `shard` of `shards` of the current `posts_raw/ds=D` into
    its staged parts (committed only if posts_raw is still the extract it read)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    lake = Lake.from_settings(settings)
    ds = window.ds
    raw = _raw_manifest(lake, ds)
    run = raw["run_id"]
    base = lake.partition_path(DATASET_RAW, ds)
    files = [posixpath.join(base, f) for f in raw["files"]]
    ids = [pq.read_table(f, columns=["id"], filesystem=lake.fs).column("id") for f in files]
    bounds = shard_bounds(pa.chunked_array([c for i in ids for c in i.chunks], pa.int64()), shards)
    lo, hi = bounds[shard], bounds[shard + 1]
    rows = settings.extract_chunk_rows
    keys = list(iter_range(lake, files, lo, hi, rows, columns=["id", "updated_at"]))
    superseded = superseded_in(pa.concat_tables(keys)) if keys else set()
    progress = Progress(f"validate {ds} shard {shard}/{shards}", None)
    t0 = time.monotonic()
    name = staging_dataset(ds, run, shards, shard, DATASET_CLEAN)
    qname = staging_dataset(ds, run, shards, shard, DATASET_QUARANTINE)
    with (
        lake.writer(name, ds, CLEAN_SCHEMA, DISTINCT_COLUMNS) as clean_w,
        lake.writer(qname, ds, QUARANTINE_SCHEMA, DISTINCT_COLUMNS) as quar_w,
    ):
        batches = iter_range(lake, files, lo, hi, rows)
        stats, results = clean_into(
            batches, superseded, window, now, settings, clean_w, quar_w, progress
        )
        clean_w.write_artifact("validation.json", json.dumps(results, default=str).encode())
        meta = {
            "raw_run_id": run,
            "shard": shard,
            "shards": shards,
            "id_lo": lo,
            "id_hi": hi,
            "attempt": uuid.uuid4().hex,  # the two parts of one try belong together
            "rows_in": stats.rows_in,
            "clean": stats.clean,
            "reasons": dict(sorted(stats.reasons.items())),
            "batch_errors": stats.batch_errors,
            "batch_warnings": stats.batch_warnings,
        }
        clean_w.meta.update(meta)
        quar_w.meta.update(meta)
        clean_w.precondition = quar_w.precondition = require_extract(lake, ds, run)
    progress.add(0, force=True)
    return {
        "ds": ds,
        "shard": shard,
        "shards": shards,
        "raw_run_id": run,
        "id_lo": lo,
        "id_hi": hi,
        "rows_in": stats.rows_in,
        "clean": stats.clean,
        "quarantined": stats.quarantined,
        "seconds": round(time.monotonic() - t0, 3),
    }


def merge(settings: Settings, window: Window, shards: int | None = None) -> dict[str, Any]:
    """Commit the day's `posts_clean` and `quarantine` from the staged shards of the current
    extract: one manifest each, or nothing. A retry after the commit finds the day merged."""
    lake = Lake.from_settings(settings)
    ds = window.ds
    t0 = time.monotonic()
    raw = _raw_manifest(lake, ds)
    run = raw["run_id"]
    n = shards if shards is not None else shard_count(settings, raw["rows"])
    parts = [
        (
            lake.read_manifest(staging_dataset(ds, run, n, i, DATASET_CLEAN), ds),
            lake.read_manifest(staging_dataset(ds, run, n, i, DATASET_QUARANTINE), ds),
        )
        for i in range(n)
    ]
    missing = [i for i, (c, q) in enumerate(parts) if c is None or q is None]
    if missing:
        done = [lake.read_manifest(d, ds) or {} for d in (DATASET_CLEAN, DATASET_QUARANTINE)]
        # merged by this run's earlier try or a twin run of the same extract and shard count
        if all(m.get("raw_run_id") == run and m.get("shards") == n for m in done):
            stats = CleanStats(raw["rows"], done[0]["rows"], Counter(done[1].get("reasons", {})))
            report = done[0].get("validation_report", "")
            return day_summary(lake, ds, stats, report, time.monotonic() - t0)
        others = sorted(set(_staged_extracts(lake, ds)) - {run})
        message = f"{ds}: shards {missing} of {n} are not staged for extract {run} (posts_raw now)"
        if others:
            raise StaleExtract(
                f"{message}; staged shards belong to extract(s) {others}, not merged: "
                "re-run the validate shards"
            )
        raise ShardsMissing(f"{message}: run validate --shard i/{n} for them")
    _check_parts(ds, run, n, raw["rows"], parts)
    stats = CleanStats()
    results: list[dict[str, Any]] = []
    for i, (c, q) in enumerate(parts):
        stats.rows_in += c["rows_in"]
        stats.clean += c["rows"]
        stats.reasons.update(q["reasons"])
        stats.batch_errors += c["batch_errors"]
        stats.batch_warnings += c["batch_warnings"]
        name = staging_dataset(ds, run, n, i, DATASET_CLEAN)
        results += json.loads(lake.read_artifact(name, ds, c["artifacts"][0]))
    day_checks(stats, settings)
    fail_if_errors(stats, ds)
    with (
        lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA, DISTINCT_COLUMNS) as clean_w,
        lake.writer(DATASET_QUARANTINE, ds, QUARANTINE_SCHEMA, DISTINCT_COLUMNS) as quar_w,
    ):
        for i in range(n):
            for dataset, w in ((DATASET_CLEAN, clean_w), (DATASET_QUARANTINE, quar_w)):
                for f in lake.partition_files(staging_dataset(ds, run, n, i, dataset), ds):
                    w.adopt(f, pq.read_metadata(f, filesystem=lake.fs).num_rows)
        report_uri = finish_day(stats, results, window, run, clean_w, quar_w)
        clean_w.meta["shards"] = quar_w.meta["shards"] = n
        clean_w.precondition = quar_w.precondition = require_extract(lake, ds, run)
    _drop_staging(lake, ds, run)
    return {**day_summary(lake, ds, stats, report_uri, time.monotonic() - t0), "shards": n}


def _check_parts(ds: str, run: str, n: int, rows: int, parts: list) -> None:
    """The staged parts are this extract's, one try each, and tile the id line once."""
    problems = []
    for i, (c, q) in enumerate(parts):
        for m in (c, q):
            if m.get("raw_run_id") != run or m.get("shard") != i or m.get("shards") != n:
                problems.append(
                    f"shard {i}: staged part {m['dataset']} is shard {m.get('shard')}/"
                    f"{m.get('shards')} of extract {m.get('raw_run_id')}"
                )
        if c.get("attempt") != q.get("attempt"):
            problems.append(f"shard {i}: its two parts come from different tries")
        if i and c.get("id_lo") != parts[i - 1][0].get("id_hi"):
            problems.append(f"shard {i}: its id range does not start where shard {i - 1} ends")
    if parts and (parts[0][0].get("id_lo") is not None or parts[-1][0].get("id_hi") is not None):
        problems.append("the shards' id ranges do not cover every id")
    if not problems and sum(c["rows_in"] for c, _ in parts) != rows:
        problems.append(f"shards read {sum(c['rows_in'] for c, _ in parts)} rows, raw has {rows}")
    if problems:
        raise StaleExtract(f"{ds}: shards not merged: " + "; ".join(problems))


def _raw_manifest(lake: Lake, ds: str) -> dict[str, Any]:
    raw = lake.read_manifest(DATASET_RAW, ds)
    if raw is None:
        raise FileNotFoundError(
            f"{lake.partition_uri(DATASET_RAW, ds)} does not exist: run the extract step first"
        )
    return raw


def _staged_extracts(lake: Lake, ds: str) -> list[str]:
    selector = pafs.FileSelector(
        posixpath.join(lake.base, STAGING, f"ds={ds}"), allow_not_found=True
    )
    names = [posixpath.basename(i.path) for i in lake.fs.get_file_info(selector)]
    return [n[len("raw=") :] for n in names if n.startswith("raw=")]


def _drop_staging(lake: Lake, ds: str, run: str) -> None:
    """Delete the merged extract's staged parts, and those of older extracts once nothing was
    written to them for ORPHAN_GRACE_S (a run still validating one is never robbed)."""
    day = posixpath.join(lake.base, STAGING, f"ds={ds}")
    cutoff = time.time() - ORPHAN_GRACE_S
    for other in _staged_extracts(lake, ds):
        path = posixpath.join(day, f"raw={other}")
        if other != run:
            infos = lake.fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if any(i.mtime is not None and i.mtime.timestamp() >= cutoff for i in infos):
                continue
        try:
            lake.fs.delete_dir(path)
        except (FileNotFoundError, OSError) as exc:  # a leftover, removed by a later merge
            log.warning("could not remove staged shards %s: %s", path, exc)


# -- python -m ml etl ----------------------------------------------------------------------------


def _parse_ts(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or datetime") from exc
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml etl",
        description="Extract [start, end) on updated_at from MySQL, validate, sanitise and "
        "write posts_clean/quarantine partitions (ds = the start date). Reads POSTFLOW_MYSQL_URI "
        "and POSTFLOW_LAKE.",
    )
    parser.add_argument("--start", type=_parse_ts, required=True, help="ISO date/datetime (UTC)")
    parser.add_argument(
        "--end", type=_parse_ts, help="ISO date/datetime, exclusive (default +1 day)"
    )
    parser.add_argument(
        "--step",
        choices=["all", "extract", "validate", "plan", "merge", "reconcile"],
        default="all",
        help="run one stage only (what the Airflow tasks do); validate is unsharded unless "
        "--shard is given; plan prints the shard count; merge commits the staged shards",
    )
    parser.add_argument(
        "--shard", type=parse_shard, help="with --step validate: validate shard i of N only"
    )
    parser.add_argument(
        "--shards", type=int, help="with --step merge: N (default: derived like plan)"
    )
    args = parser.parse_args(argv)
    if args.shard and args.step != "validate":
        parser.error("--shard goes with --step validate")
    try:
        window = Window(args.start, args.end or args.start + timedelta(days=1))
        settings = Settings.load()
        if args.step == "validate" and args.shard:
            result = validate_shard(settings, window, *args.shard)
        elif args.step == "merge":
            result = merge(settings, window, args.shards)
        else:
            step = {
                "all": run_etl,
                "extract": extract,
                "validate": clean,
                "plan": plan,
                "reconcile": reconcile,
            }
            result = step[args.step](settings, window)
    except (
        SourceError,
        LakeError,
        ConfigError,
        ValidationFailed,
        ReconciliationError,
        StaleExtract,
        ShardsMissing,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"postflow etl: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0
