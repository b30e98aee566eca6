"""Labels: what the model predicts, for which posts, and `tune-bins`.

The target: a post's `comment_count` H days after its `created_at` (H = `label_horizon_days`,
`POSTFLOW_LABEL_HORIZON_DAYS`), binned by the bin edges (`target_sentence` says it in one
sentence, for the MLflow run and the report's header). Every post is labelled at the same age,
so "accuracy" is accuracy at one question, whatever the window.

- The count at the horizon is the one of the post's last snapshot whose `updated_at` is at or
  before `created_at + H`, valid only when that count is *known* to have held until the horizon:
  the snapshot's extraction (`observed_at`: the end of its extraction window, or the manifest's
  commit time if earlier), carried forward through every following day whose partition exists
  (`known_through`), because that day's extract would have returned the post had its count
  changed. A gap (a day not extracted) stops it. This needs the source to move `updated_at`
  whenever `comment_count` changes: `ml.ingest.source_check` re-reads a sample from MySQL every
  night to check it.
- The labelled population of a window start..end is the posts *created* in it whose horizon has
  passed (and was covered by extracts) by the last partition read: not "posts that changed in
  the window", which would select old posts on their outcome (only posts gaining comments
  re-appear in a nightly extract).
- The features of a post are those of its *first* clean snapshot, the post as posted: a caption
  edited after the post took off is not what a model scoring a new post would see.
  `feature_ds` names that partition.

The horizon subsumes the former `label_age_days` (a count read when the post was at least that
old): the label is read at exactly the horizon, so one setting says both what is predicted and
when it is mature.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from ml.lake.schema import DATASET_CLEAN
from ml.learn.bins import bin_labels, bin_names, histogram, tune_bins
from ml.learn.splits import caption_key

DEFAULT_LABEL_HORIZON_DAYS = 7
MIN_HEARTS = 1


def target_sentence(horizon_days: int, edges: Sequence[int]) -> str:
    """What the model predicts, in the words of the report and the MLflow run: "comments within
    7 days of posting, 8 bins: 0, 1-2, ..."."""
    days = "day" if horizon_days == 1 else "days"
    names = ", ".join(bin_names(edges))
    return f"comments within {horizon_days} {days} of posting, {len(edges)} bins: {names}"


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


def _first_of_groups(ids: np.ndarray) -> np.ndarray:
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    return first


def _last_of_groups(ids: np.ndarray) -> np.ndarray:
    last = np.ones(len(ids), bool)
    last[:-1] = ids[:-1] != ids[1:]
    return last


def load_labels(
    lake: Any,
    start: str,
    end: str,
    horizon_days: int = DEFAULT_LABEL_HORIZON_DAYS,
    min_hearts: int = MIN_HEARTS,
    *,
    through: str | None = None,
):
    """The labelled posts created start..end (inclusive days, UTC), read from the `posts_clean`
    partitions start..`through` (default `end`): a pyarrow Table sorted by id with
    id, hearts, comment_count (at the horizon), created_at, ds (partition of the label's
    snapshot), observed_at (when that count is last known to hold), feature_ds (partition of the
    first snapshot: the post as posted) and caption_key (of the first snapshot's caption).
    A post is labelled when its horizon `created_at + horizon_days` is covered (module
    docstring) and its label snapshot has hearts >= `min_hearts`."""
    import pyarrow as pa

    through = through or end
    cols = ["id", "hearts", "comment_count", "created_at", "updated_at", "caption"]
    parts = [d for d in lake.partitions(DATASET_CLEAN, since=start) if d <= through]
    known = known_through({d: observed_at(lake.read_manifest(DATASET_CLEAN, d), d) for d in parts})
    tables = []
    for d in parts:
        t = lake.read_partition(DATASET_CLEAN, d, columns=cols)
        t = t.append_column("ds", pa.array([d] * t.num_rows, pa.string()))
        seen = pa.array([known[d]] * t.num_rows, pa.timestamp("us"))
        tables.append(t.append_column("observed_at", seen))
    if not tables:
        raise FileNotFoundError(f"no posts_clean partitions between {start} and {through}")
    t = pa.concat_tables(tables)
    created = t["created_at"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    lo = np.datetime64(date.fromisoformat(start), "us")
    hi = np.datetime64(cutoff_of(end), "us")
    t = t.filter(pa.array((created >= lo) & (created < hi)))  # NaT compares False: dropped
    t = t.sort_by([("id", "ascending"), ("ds", "ascending"), ("updated_at", "ascending")])
    ids = t["id"].to_numpy()
    first = t.filter(pa.array(_first_of_groups(ids)))  # the post as posted
    created = t["created_at"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    updated = t["updated_at"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    horizon = created + np.timedelta64(timedelta(days=horizon_days), "us")
    before = t.filter(pa.array(updated <= horizon))  # snapshots of the count up to the horizon
    label = before.filter(pa.array(_last_of_groups(before["id"].to_numpy())))
    h = label["created_at"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    h = h + np.timedelta64(timedelta(days=horizon_days), "us")
    seen = label["observed_at"].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    keep = (seen >= h) & (label["hearts"].to_numpy(zero_copy_only=False) >= min_hearts)
    label = label.filter(pa.array(keep))
    at = np.searchsorted(first["id"].to_numpy(), label["id"].to_numpy())
    first = first.take(pa.array(at))
    keys = pa.array([caption_key(c) for c in first["caption"].to_pylist()], pa.uint64())
    return (
        label.drop_columns(["updated_at", "caption"])
        .append_column("feature_ds", first["ds"])
        .append_column("caption_key", keys)
    )


# -- CLI: python -m ml tune-bins ---------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml tune-bins",
        description="Propose comment-count bin edges from the labelled posts of a window.",
    )
    p.add_argument("--start", required=True, help="first posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--n-bins", type=int, help="default: as many as POSTFLOW_BIN_EDGES has")
    p.add_argument(
        "--label-horizon-days", type=int, help="default: POSTFLOW_LABEL_HORIZON_DAYS (settings)"
    )
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake.partitions import Lake

    settings = Settings.load()
    h = settings.label_horizon_days if args.label_horizon_days is None else args.label_horizon_days
    labels = load_labels(Lake.from_settings(settings), args.start, args.end, h)
    counts = labels["comment_count"].to_numpy()
    edges = tune_bins(counts, args.n_bins or len(settings.edges))
    print(
        json.dumps(
            {
                "rows": int(len(counts)),
                "target": target_sentence(h, settings.edges),
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
