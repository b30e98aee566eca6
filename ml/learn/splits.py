"""Splits that are a pure function of a post's group, so evaluation sets stay clean across
retrains.

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
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from ml.hashing import hash_buckets, mix64

_WORDS = re.compile(r"[^\W_]+")

N_BUCKETS = 100_000
TEST_BUCKETS = (0, N_BUCKETS // 5)  # [0, 20 %)
VAL_BUCKETS = (N_BUCKETS // 2, N_BUCKETS // 2 + N_BUCKETS // 5)  # [50 %, 70 %)
MAX_EVAL_ROWS = 20_000  # per evaluation set; the rest of a larger one is `reserve`
EVAL_SPLITS = ("val", "test")

_SPLIT_SALT = 0x5F3759DF
_RANK_SALT = 0x2545F491
_PHOTO_SALT = 0x632BE5AB


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
    b = hash_buckets(keys, _SPLIT_SALT, N_BUCKETS)
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
