"""Labels and splits: engagement bins of `comment_count`, the label-age filter, and a split by
post-id hash that keeps evaluation sets clean across retrains.

Split rule (why it looks like this): every post id hashes to one of `N_BUCKETS` buckets. Test is
the bucket range `[0, t)`, validation `[VAL_START, VAL_START + v)`, train everything else. `t`
and `v` are a non-increasing function of the number of labelled posts `n` (20 % each up to 10k
posts, then about 2,000 posts each, never under 1 % until the 20k cap, then 20k each), rounded
*down* to a fixed ladder so that small changes of `n` change nothing. Consequences:
- the same post is in the same split for the same `n` on any machine (no RNG, no state);
- as data grows the evaluation ranges only shrink, so a post can move from test/val into train,
  but never from train into test/val and never between test and val. Today's test set is thus a
  subset of every earlier test set: no earlier model (today's champion) was trained on it, and
  the promotion gate compares champion and challenger on posts neither has seen;
- the price: when `n` crosses a ladder step, posts leave the evaluation sets (their history of
  scores is not comparable across that step), and if the training window *shrinks* (a backfill
  of a short window) the ranges grow and posts the champion trained on can enter test. Keep the
  retrain window growing or fixed, or pin `n_total` when comparing across windows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from ml.schema import DATASET_CLEAN

log = logging.getLogger(__name__)

DEFAULT_EDGES: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 600)
N_CLASSES = len(DEFAULT_EDGES)
DEFAULT_LABEL_AGE_DAYS = 7
MIN_HEARTS = 1

N_BUCKETS = 100_000
VAL_START = N_BUCKETS // 2
SMALL_FRACTION = 0.2  # 60/20/20 for small data
EVAL_TARGET_ROWS = 2_000  # per evaluation set, between "small" and the 1 % floor
MIN_FRACTION = 0.01
MAX_EVAL_ROWS = 20_000
# bucket counts allowed for an evaluation range: 20 % * 10^(-j/10), each step ~21 % smaller
_LADDER = sorted(
    {max(1, int(N_BUCKETS * SMALL_FRACTION * 10 ** (-j / 10))) for j in range(80)}, reverse=True
)

_SPLIT_SALT = 0x5F3759DF
SHARD_SALT = 0x9E3779B9


# -- bins ---------------------------------------------------------------------------------------


def bin_labels(comment_count, edges: Sequence[int] = DEFAULT_EDGES):
    """Class index 0..len(edges)-1 of each count: class k is `[edges[k], edges[k+1])`, the last
    open-ended. A scalar gives an int, an array an int64 array."""
    e = np.asarray(edges)
    if e.ndim != 1 or len(e) < 2 or np.any(np.diff(e) <= 0):
        raise ValueError(f"bin edges must be strictly increasing, got {list(edges)}")
    counts = np.asarray(comment_count)
    if np.any(counts < e[0]):
        raise ValueError(f"comment_count below the first edge {e[0]}")
    out = np.searchsorted(e, counts, side="right").astype(np.int64) - 1
    return int(out) if out.ndim == 0 else out


def bin_names(edges: Sequence[int]) -> list[str]:
    """ "0", "1-2", ..., "600+": the comment counts of each class, for people to read."""
    out = []
    for i, e in enumerate(edges):
        if i + 1 < len(edges):
            hi = edges[i + 1] - 1
            out.append(str(e) if hi == e else f"{e}-{hi}")
        else:
            out.append(f"{e}+")
    return out


def _nice(x: float) -> int:
    """Round to the nearest of 1, 2, 3, 4, 5, 6, 8 x 10^k (in log space): edges people read."""
    if x < 1:
        return 1 if x >= 0.5 else 0
    k = math.floor(math.log10(x))
    cands = [m * 10**e for e in (k, k + 1) for m in (1, 2, 3, 4, 5, 6, 8)]
    return int(min(cands, key=lambda c: abs(math.log(c) - math.log(x))))


def _next_nice(x: int) -> int:
    if x < 1:
        return 1
    k = math.floor(math.log10(x))
    return min(m * 10**e for e in (k, k + 1) for m in (1, 2, 3, 4, 5, 6, 8) if m * 10**e > x)


def tune_bins(counts, n_bins: int = N_CLASSES) -> tuple[int, ...]:
    """Propose `n_bins` edges from a histogram of comment counts: equal-mass quantiles rounded to
    nice numbers, bumped up where rounding made two equal, so edges are strictly increasing and
    start at 0. Heavy ties (many zeros) therefore give smaller, not empty, low bins."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[np.isfinite(c) & (c >= 0)]
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    if c.size == 0:
        raise ValueError("no counts to tune bins on")
    qs = np.quantile(c, np.arange(1, n_bins) / n_bins)
    edges = [0]
    for q in qs:
        e = _nice(float(q))
        while e <= edges[-1]:
            e = _next_nice(edges[-1])
        edges.append(e)
    return tuple(edges)


def histogram(labels, n_classes: int = N_CLASSES) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


# -- split --------------------------------------------------------------------------------------


def hash_buckets(post_ids, salt: int = _SPLIT_SALT, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """Bucket of each id by splitmix64 (vectorised, stable across platforms and processes)."""
    x = np.asarray(post_ids, dtype=np.int64).astype(np.uint64) ^ np.uint64(salt)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(n_buckets)).astype(np.int64)


def eval_fraction(n_total: int) -> float:
    """Target fraction of each of val and test for `n_total` labelled posts (non-increasing)."""
    n = max(int(n_total), 1)
    f = min(SMALL_FRACTION, max(MIN_FRACTION, EVAL_TARGET_ROWS / n))
    return min(f, MAX_EVAL_ROWS / n)


def split_buckets(n_total: int) -> int:
    """Buckets of each evaluation range: the target rounded down to the ladder."""
    want = eval_fraction(n_total) * N_BUCKETS
    for b in _LADDER:
        if b <= want:
            return b
    return _LADDER[-1]


def assign_splits(post_ids, n_total: int) -> np.ndarray:
    """Split name ("train", "val", "test") of each post id; see the module docstring."""
    b = hash_buckets(post_ids)
    k = split_buckets(n_total)
    out = np.full(b.shape, "train", dtype=object)
    out[b < k] = "test"
    out[(b >= VAL_START) & (b < VAL_START + k)] = "val"
    return out


def split_of(post_id: int, n_total: int) -> str:
    return str(assign_splits(np.array([post_id]), n_total)[0])


# -- label age ----------------------------------------------------------------------------------


def label_mask(
    created_at,
    hearts,
    cutoff: datetime,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
) -> np.ndarray:
    """Rows whose label can be trusted: created at least `label_age_days` before the training
    cut-off (the comment count has settled) and with `hearts >= min_hearts` (as in the seed)."""
    limit = np.datetime64(cutoff - timedelta(days=label_age_days), "us")
    created = np.asarray(created_at, dtype="datetime64[us]")
    return (created <= limit) & (np.asarray(hearts) >= min_hearts)


def cutoff_of(end: str | date) -> datetime:
    """Training cut-off for a window ending with partition `end`: the end of that day."""
    d = date.fromisoformat(end) if isinstance(end, str) else end
    return datetime.combine(d + timedelta(days=1), datetime.min.time())


def load_labels(
    lake: Any,
    start: str,
    end: str,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
):
    """Latest snapshot of each post in `posts_clean` start..end (inclusive), label filter
    applied: a pyarrow Table (id, hearts, comment_count, created_at, ds), sorted by id."""
    import pyarrow as pa

    cols = ["id", "hearts", "comment_count", "created_at", "updated_at"]
    parts = [d for d in lake.partitions(DATASET_CLEAN) if start <= d <= end]
    tables = []
    for d in parts:
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
    t = t.filter(pa.array(last))
    keep = label_mask(
        t["created_at"].to_numpy(),
        t["hearts"].to_numpy(),
        cutoff_of(end),
        label_age_days,
        min_hearts,
    )
    return t.filter(pa.array(keep)).drop_columns(["updated_at"])


# -- CLI: python -m ml tune-bins ---------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml tune-bins",
        description="Propose comment-count bin edges from the labelled posts of a window.",
    )
    p.add_argument("--start", required=True, help="first posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last posts_clean partition (YYYY-MM-DD)")
    p.add_argument("--n-bins", type=int, default=N_CLASSES)
    p.add_argument("--label-age-days", type=int, help="default: POSTFLOW_LABEL_AGE_DAYS (settings)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake import Lake

    settings = Settings.load()
    age = settings.label_age_days if args.label_age_days is None else args.label_age_days
    labels = load_labels(Lake.from_settings(settings), args.start, args.end, label_age_days=age)
    counts = labels["comment_count"].to_numpy()
    edges = tune_bins(counts, args.n_bins)
    print(
        json.dumps(
            {
                "rows": int(len(counts)),
                "proposed_edges": list(edges),
                "proposed_histogram": histogram(bin_labels(counts, edges), len(edges)),
                "current_edges": list(DEFAULT_EDGES),
                "current_histogram": histogram(bin_labels(counts, DEFAULT_EDGES)),
            }
        )
    )
    return 0
