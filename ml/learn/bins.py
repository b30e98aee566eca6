"""Engagement classes: a post's comment count cut into bins by edges (a setting; `tune-bins`
proposes edges that follow the data), their names, and histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_EDGES: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 600)
N_CLASSES = len(DEFAULT_EDGES)


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
