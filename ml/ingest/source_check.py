"""`python -m ml check-source`: the label's assumption about the app, checked every night.

A label is the count H days after posting, carried forward from the last snapshot on the belief
that a post absent from later extracts did not change (`ml.learn.labels`). That belief holds only
if the app moves `updated_at` whenever `comment_count` changes: the nightly extract selects on
`updated_at`, so a count that moves silently is never re-read, and a count read on the posting
day passes for the count at the horizon.

The check: a seeded random sample (bounded, `source_check_sample`) of the posts of the window, as
the lake last saw them, is re-read from MySQL by id on the pipeline's SELECT-only account. A post
whose `updated_at` is unchanged but whose `comment_count` differs is a *silent change*: a
finding, kept in the lake (`source_check/ds=<end>`: the findings as rows, the totals in the
manifest) and shown in the report's data quality. Above `source_check_max_fraction` of the
re-read posts, the window's labels are *held back*: `train` refuses the window and says why
(`held_back`). A post whose `updated_at` moved is not a finding: the next extract reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from typing import Any

import numpy as np

from ml.ingest.source import MySQLTarget, naive_utc
from ml.lake.schema import DATASET_CLEAN, DATASET_SOURCE_CHECK

SELECT_CHUNK = 1_000  # ids per `WHERE id IN (...)`


def lake_view(lake: Any, start: str, end: str):
    """The latest snapshot of each post in posts_clean start..end: a pyarrow Table (id,
    comment_count, updated_at, ds) sorted by id. What the lake believes the source holds."""
    import pyarrow as pa

    cols = ["id", "comment_count", "updated_at"]
    tables = []
    for d in [d for d in lake.partitions(DATASET_CLEAN, since=start) if d <= end]:
        t = lake.read_partition(DATASET_CLEAN, d, columns=cols)
        tables.append(t.append_column("ds", pa.array([d] * t.num_rows, pa.string())))
    if not tables:
        raise FileNotFoundError(f"no posts_clean partitions between {start} and {end}")
    t = pa.concat_tables(tables).sort_by(
        [("id", "ascending"), ("ds", "ascending"), ("updated_at", "ascending")]
    )
    ids = t["id"].to_numpy()
    last = np.ones(len(ids), bool)
    last[:-1] = ids[:-1] != ids[1:]
    return t.filter(pa.array(last))


def reread(target: MySQLTarget, ids: list[int]) -> dict[int, tuple[int | None, datetime]]:
    """id -> (comment_count, updated_at naive UTC) of the posts `ids`, read now from MySQL."""
    out: dict[int, tuple[int | None, datetime]] = {}
    conn = target.connect()
    try:
        cur = conn.cursor()
        for lo in range(0, len(ids), SELECT_CHUNK):
            chunk = ids[lo : lo + SELECT_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            cur.execute(
                f"SELECT id, comment_count, updated_at FROM posts WHERE id IN ({marks})", chunk
            )
            for pid, cc, upd in cur.fetchall():
                out[int(pid)] = (None if cc is None else int(cc), naive_utc(upd))
    finally:
        conn.close()
    return out


def check_source(
    lake: Any,
    target: MySQLTarget,
    start: str,
    end: str,
    sample: int = 500,
    max_fraction: float = 0.01,
    seed: int | None = None,
) -> dict[str, Any]:
    """Re-read a sample of the window's posts and compare (module docstring). Returns the
    totals, whether the labels are held and why, and the findings (id, lake and source count,
    updated_at)."""
    view = lake_view(lake, start, end)
    rng = np.random.default_rng(date.fromisoformat(end).toordinal() if seed is None else seed)
    n = min(sample, view.num_rows)
    rows = np.sort(rng.choice(view.num_rows, n, replace=False)) if n else np.array([], int)
    ids = view["id"].to_numpy()[rows].tolist()
    counts = view["comment_count"].to_pylist()
    updated = view["updated_at"].to_pylist()
    ds = view["ds"].to_pylist()
    now = reread(target, ids)
    findings, unchanged = [], 0
    for r, pid in zip(rows.tolist(), ids, strict=True):
        if pid not in now:
            continue  # deleted at the source: not this check's question
        cc, upd = now[pid]
        if upd != updated[r]:
            continue  # updated_at moved: the next extract reads it
        unchanged += 1
        if cc != counts[r]:
            findings.append(
                {
                    "id": pid,
                    "ds": ds[r],
                    "lake_comment_count": counts[r],
                    "source_comment_count": cc,
                    "updated_at": updated[r].isoformat(),
                }
            )
    fraction = len(findings) / unchanged if unchanged else 0.0
    held = fraction > max_fraction
    reason = (
        f"{len(findings)} of {unchanged} re-read posts ({fraction:.1%}) changed comment_count "
        f"without moving updated_at, above {max_fraction:.1%}: the labels of {start}..{end} "
        "cannot be trusted (a count read early would pass for the count at the horizon)"
        if held
        else ""
    )
    return {
        "window": [start, end],
        "sampled": n,
        "unchanged": unchanged,
        "silent_changes": len(findings),
        "fraction": fraction,
        "max_fraction": max_fraction,
        "held": held,
        "reason": reason,
        "findings": findings,
    }


def write_result(lake: Any, ds: str, result: dict[str, Any]) -> None:
    """`source_check/ds=<ds>`: the findings as rows, the totals in the manifest."""
    import pyarrow as pa

    from ml.lake.schema import SOURCE_CHECK_SCHEMA

    f = result["findings"]
    table = pa.table(
        {
            "id": pa.array([x["id"] for x in f], pa.int64()),
            "ds": pa.array([x["ds"] for x in f], pa.string()),
            "lake_comment_count": pa.array([x["lake_comment_count"] for x in f], pa.int64()),
            "source_comment_count": pa.array([x["source_comment_count"] for x in f], pa.int64()),
            "updated_at": pa.array([datetime.fromisoformat(x["updated_at"]) for x in f]).cast(
                pa.timestamp("us")
            ),
        },
        schema=SOURCE_CHECK_SCHEMA,
    )
    with lake.writer(DATASET_SOURCE_CHECK, ds, SOURCE_CHECK_SCHEMA) as w:
        w.write(table)
        w.meta.update({k: v for k, v in result.items() if k != "findings"})


def held_back(lake: Any, start: str, end: str) -> str | None:
    """Why the labels of start..end are held back (the latest source check in the window that
    held them), or None."""
    for d in reversed([d for d in lake.partitions(DATASET_SOURCE_CHECK, since=start) if d <= end]):
        m = lake.read_manifest(DATASET_SOURCE_CHECK, d) or {}
        if "held" in m:
            return f"source check of {d}: {m['reason']}" if m["held"] else None
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml check-source", description=__doc__.split("\n")[0]
    )
    p.add_argument("--start", required=True, help="first posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--sample", type=int, help="default: POSTFLOW_SOURCE_CHECK_SAMPLE")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake.partitions import Lake

    settings = Settings.load()
    lake = Lake.from_settings(settings)
    try:
        result = check_source(
            lake,
            MySQLTarget.parse(settings.mysql_uri),
            args.start,
            args.end,
            settings.source_check_sample if args.sample is None else args.sample,
            settings.source_check_max_fraction,
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_result(lake, args.end, result)
    if result["held"]:
        print(f"warning: labels held back: {result['reason']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "findings"}))
    return 0
