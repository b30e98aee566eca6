"""Stable buckets of integer keys (splitmix64): the same post lands in the same bucket on every
machine, process and day. The embed shards and the train/val/test split both hash post keys;
each uses its own salt so the two assignments are independent."""

from __future__ import annotations

import numpy as np


def mix64(x) -> np.ndarray:
    """splitmix64 finaliser of uint64 values (vectorised, stable across platforms)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_buckets(post_ids, salt: int, n_buckets: int) -> np.ndarray:
    """Bucket of each id (or uint64 key) by splitmix64 (stable across platforms and processes)."""
    x = np.asarray(post_ids)
    x = (x if x.dtype == np.uint64 else x.astype(np.int64).astype(np.uint64)) ^ np.uint64(salt)
    return (mix64(x) % np.uint64(n_buckets)).astype(np.int64)
