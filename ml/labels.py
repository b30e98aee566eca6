"""Labels and splits: engagement bins of `comment_count`, label maturity, and a split that is a
pure function of a post's group, so evaluation sets stay clean across retrains.

Split rule (why it looks like this): every post has a *group key* (`group_keys`): the perceptual
hash of its photo (`photo_hash` of the features row, a dHash of what the image model sees), or
its id where that is unknown (features written before the hash existed). The key hashes to one
of `N_BUCKETS` buckets; test is the fixed range `[0, 20 %)`, validation `[50 %, 70 %)`, train
the rest (60/20/20). Consequences:
- a post's split depends on nothing but the post: not on `n`, the window, the machine or the
  order of the data. It never moves, so no earlier model (today's champion) was trained on
  today's test posts, and the gate compares models on posts neither has seen;
- reposts of one photo share a key, hence a split: a repost cannot leak a photo from train into
  test. Why not the caption too: a pure rule cannot honour two keys (posts linked by photo *or*
  caption form groups that merge as data arrives, and a merge would move posts; rules that
  respect both keys without merging discard about half the data). The photo wins, and captions
  shared across splits are counted (`WindowSplit.caption_overlap`, normalised by
  `caption_key`) so the residual leak is measured, not assumed away;
- size policy without moving anyone: on large data each evaluation set is cut to its
  `MAX_EVAL_ROWS` posts ranked first by a second, independent hash of the key
  (`cap_evaluation`); the rest are `reserve`: never trained on, not scored. The price: at 1M
  labelled posts train keeps 60 %.

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
import hashlib
import json
import logging
import math
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from ml.schema import DATASET_CLEAN

log = logging.getLogger(__name__)

_WORDS = re.compile(r"[^\W_]+")

DEFAULT_EDGES: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 600)
N_CLASSES = len(DEFAULT_EDGES)
DEFAULT_LABEL_AGE_DAYS = 7
MIN_HEARTS = 1

N_BUCKETS = 100_000
TEST_BUCKETS = (0, N_BUCKETS // 5)  # [0, 20 %)
VAL_BUCKETS = (N_BUCKETS // 2, N_BUCKETS // 2 + N_BUCKETS // 5)  # [50 %, 70 %)
MAX_EVAL_ROWS = 20_000  # per evaluation set; the rest of a larger one is `reserve`
EVAL_SPLITS = ("val", "test")

_SPLIT_SALT = 0x5F3759DF
_RANK_SALT = 0x2545F491
_PHOTO_SALT = 0x632BE5AB
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


def mix64(x) -> np.ndarray:
    """splitmix64 finaliser of uint64 values (vectorised, stable across platforms)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_buckets(post_ids, salt: int = _SPLIT_SALT, n_buckets: int = N_BUCKETS) -> np.ndarray:
    """Bucket of each id (or uint64 key) by splitmix64 (stable across platforms and processes)."""
    x = np.asarray(post_ids)
    x = (x if x.dtype == np.uint64 else x.astype(np.int64).astype(np.uint64)) ^ np.uint64(salt)
    return (mix64(x) % np.uint64(n_buckets)).astype(np.int64)


def group_keys(post_ids, photo_hashes: Sequence[str | None] | None = None) -> np.ndarray:
    """uint64 split key of each post: its photo's perceptual hash (hex) mixed into a namespace of
    its own, or the post id where the photo hash is unknown (module docstring)."""
    keys = np.asarray(post_ids, dtype=np.int64).astype(np.uint64)
    if photo_hashes is not None:
        ph = np.asarray(photo_hashes, dtype=object)
        has = np.array([h is not None for h in ph], dtype=bool)
        if has.any():
            values = np.array([int(h, 16) for h in ph[has]], dtype=np.uint64)
            keys[has] = mix64(values ^ np.uint64(_PHOTO_SALT))
    return keys


def caption_key(caption: str | None) -> int | None:
    """64-bit hash of a caption normalised for duplicate detection (NFKC, case-folded, letters
    and digits only, so "Sunset!! #sunset" == "sunset sunset"); None when nothing is left."""
    if not caption:
        return None
    words = _WORDS.findall(unicodedata.normalize("NFKC", caption).casefold())
    if not words:
        return None
    digest = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def assign_splits(keys, max_eval_rows: int | None = None) -> np.ndarray:
    """Split name ("train", "val", "test") of each group key (a post id for a post of its own),
    from fixed bucket ranges; with `max_eval_rows`, evaluation posts past that many per set
    become "reserve" (`cap_evaluation`). See the module docstring."""
    b = hash_buckets(keys)
    out = np.full(b.shape, "train", dtype=object)
    out[(b >= TEST_BUCKETS[0]) & (b < TEST_BUCKETS[1])] = "test"
    out[(b >= VAL_BUCKETS[0]) & (b < VAL_BUCKETS[1])] = "val"
    return out if max_eval_rows is None else cap_evaluation(keys, out, max_eval_rows)


def cap_evaluation(keys, split: np.ndarray, max_eval_rows: int = MAX_EVAL_ROWS) -> np.ndarray:
    """Keep at most about `max_eval_rows` posts per evaluation set: those ranked first by a
    second hash of the key, independent of its bucket (whole groups: a group straddling the cut
    stays in); the others become "reserve", never trained on. Only evaluation posts change, and
    only to "reserve" (a post may come back as the window slides: never trained on either way)."""
    out = split.copy()
    rank = hash_buckets(keys, _RANK_SALT, 1 << 62)
    for name in EVAL_SPLITS:
        sel = np.flatnonzero(out == name)
        if len(sel) > max_eval_rows:
            cut = np.partition(rank[sel], max_eval_rows - 1)[max_eval_rows - 1]
            out[sel[rank[sel] > cut]] = "reserve"
    return out


def split_of(post_id: int, photo_hash: str | None = None) -> str:
    """Split of one post (without the evaluation cap)."""
    return str(assign_splits(group_keys([post_id], [photo_hash]))[0])


# -- label age ----------------------------------------------------------------------------------


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
    from ml.lake import Lake

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
