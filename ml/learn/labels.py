"""Labels: which posts of a window have a trustworthy comment count, and `tune-bins`.

Label maturity: a count is trusted only when the post was at least `label_age_days` old at the
latest time the count is *known* to hold, measured from extractions, not from the training
cut-off: the snapshot's extraction (`observed_at`: the end of its extraction window, or the
manifest's commit time if earlier), carried forward through every following day whose partition
exists, because that day's extract would have returned the post had its count changed. A gap
(a day not extracted) stops it: a count read the day after posting, followed by missing days,
stays immature however late the window ends. This needs the source to move `updated_at`
whenever `comment_count` changes; carrying forward (rather than the snapshot's extraction
alone) keeps posts whose count stopped changing early, which would otherwise never mature and
bias the labels towards posts still gaining comments.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from ml.lake.schema import DATASET_CLEAN
from ml.learn.bins import bin_labels, histogram, tune_bins
from ml.learn.splits import caption_key

DEFAULT_LABEL_AGE_DAYS = 7
MIN_HEARTS = 1


def label_mask(
    created_at,
    hearts,
    observed_at,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
) -> np.ndarray:
    """Rows whose label can be trusted: the post was at least `label_age_days` old when its count
    was observed (`observed_at`: one time or one per row), so the count had settled, and it has
    `hearts >= min_hearts` (as in the seed)."""
    observed = np.asarray(observed_at, dtype="datetime64[us]")
    created = np.asarray(created_at, dtype="datetime64[us]")
    age = np.timedelta64(timedelta(days=label_age_days), "us")
    return (observed - created >= age) & (np.asarray(hearts) >= min_hearts)


def cutoff_of(end: str | date) -> datetime:
    """The end of day `end` (naive UTC): when a nightly extract of that day runs."""
    d = date.fromisoformat(end) if isinstance(end, str) else end
    return datetime.combine(d + timedelta(days=1), datetime.min.time())


def _naive_utc(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None)


def observed_at(manifest: dict[str, Any] | None, ds: str) -> datetime:
    """When the counts of `posts_clean/ds` were observed (naive UTC): the end of the partition's
    extraction window (the earliest a complete day can be extracted; a nightly run reads minutes
    later, a backfill later still but, `updated_at` being unchanged, the same counts), or its
    commit time if that is earlier (an extract run before its day ended). Without a window in the
    manifest, the end of day `ds`."""
    m = manifest or {}
    t = _naive_utc(m["window_end"]) if m.get("window_end") else cutoff_of(ds)
    if m.get("committed_at"):
        t = min(t, _naive_utc(m["committed_at"]))
    return t


def known_through(observed: dict[str, datetime]) -> dict[str, datetime]:
    """For each partition day, the latest time a count it holds is known to hold: its own
    `observed_at`, carried through the run of consecutive days that follows it (module
    docstring)."""
    out: dict[str, datetime] = {}
    later: tuple[str, datetime] | None = None
    for d in sorted(observed, reverse=True):
        t = observed[d]
        nxt = (date.fromisoformat(d) + timedelta(days=1)).isoformat()
        if later is not None and later[0] == nxt:
            t = max(t, later[1])
        out[d] = t
        later = (d, t)
    return out


def load_labels(
    lake: Any,
    start: str,
    end: str,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
):
    """Latest snapshot of each post in `posts_clean` start..end (inclusive), label filter
    applied (maturity at `observed_at`, when its count is last known to hold: `known_through`):
    a pyarrow Table (id, hearts, comment_count, created_at, ds, observed_at, caption_key),
    sorted by id."""
    import pyarrow as pa

    cols = ["id", "hearts", "comment_count", "created_at", "updated_at", "caption"]
    parts = [d for d in lake.partitions(DATASET_CLEAN, since=start) if d <= end]
    known = known_through({d: observed_at(lake.read_manifest(DATASET_CLEAN, d), d) for d in parts})
    tables = []
    for d in parts:
        t = lake.read_partition(DATASET_CLEAN, d, columns=cols)
        t = t.append_column("ds", pa.array([d] * t.num_rows, pa.string()))
        seen = pa.array([known[d]] * t.num_rows, pa.timestamp("us"))
        tables.append(t.append_column("observed_at", seen))
    if not tables:
        raise FileNotFoundError(f"no posts_clean partitions between {start} and {end}")
    t = pa.concat_tables(tables).sort_by(
        [("id", "ascending"), ("ds", "ascending"), ("updated_at", "ascending")]
    )
    ids = t["id"].to_numpy()
    last = np.ones(len(ids), bool)
    last[:-1] = ids[:-1] != ids[1:]
    t = t.filter(pa.array(last))
    keep = label_mask(
        t["created_at"].to_numpy(),
        t["hearts"].to_numpy(),
        t["observed_at"].to_numpy(),
        label_age_days,
        min_hearts,
    )
    t = t.filter(pa.array(keep))
    keys = pa.array([caption_key(c) for c in t["caption"].to_pylist()], pa.uint64())
    return t.drop_columns(["updated_at", "caption"]).append_column("caption_key", keys)


# -- CLI: python -m ml tune-bins ---------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml tune-bins",
        description="Propose comment-count bin edges from the labelled posts of a window.",
    )
    p.add_argument("--start", required=True, help="first posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--n-bins", type=int, help="default: as many as POSTFLOW_BIN_EDGES has")
    p.add_argument("--label-age-days", type=int, help="default: POSTFLOW_LABEL_AGE_DAYS (settings)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake.partitions import Lake

    settings = Settings.load()
    age = settings.label_age_days if args.label_age_days is None else args.label_age_days
    labels = load_labels(Lake.from_settings(settings), args.start, args.end, label_age_days=age)
    counts = labels["comment_count"].to_numpy()
    edges = tune_bins(counts, args.n_bins or len(settings.edges))
    print(
        json.dumps(
            {
                "rows": int(len(counts)),
                "proposed_edges": list(edges),
                "proposed_histogram": histogram(bin_labels(counts, edges), len(edges)),
                "current_edges": list(settings.edges),
                "current_histogram": histogram(
                    bin_labels(counts, settings.edges), len(settings.edges)
                ),
                # to adopt them (a re-baselining: the next model is judged as a first model)
                "setting": "POSTFLOW_BIN_EDGES=" + ",".join(map(str, edges)),
            }
        )
    )
    return 0
