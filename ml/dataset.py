"""A window's labelled posts, their train/validation/test split, and their features.

`build_split` is the one place a window's split is made: training (`ml.train`), the promotion
gate (`ml.promote`) and the weekly report (`ml.report_data`) all call it, so promotion and the
report score exactly the posts training held out. The rule itself (a function of the post id and
`n`, the number of labelled posts with features) is `ml.labels.assign_splits`.

A post's label is its latest snapshot in the window (`posts_clean` partitions start..end), kept
only when old enough (label age) and with hearts >= 1; its features are the row of `features/ds`
for the partition of that snapshot, i.e. the image and caption the label belongs to. Labelled
posts without features (skipped at embed, or not embedded yet) are counted and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.features import have_features, read_features
from ml.labels import (
    DEFAULT_EDGES,
    DEFAULT_LABEL_AGE_DAYS,
    MIN_HEARTS,
    assign_splits,
    bin_labels,
    histogram,
    load_labels,
)
from ml.schema import N_FEATURES

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class WindowSplit:
    """The labelled posts of a window, sorted by id, with the split each belongs to."""

    window: tuple[str, str]
    edges: tuple[int, ...]
    ids: np.ndarray  # int64, sorted
    ds: np.ndarray  # object: the posts_clean partition of each post's label
    comment_count: np.ndarray
    y: np.ndarray  # int64 class
    split: np.ndarray  # object: "train" | "val" | "test"
    labelled: int  # labelled posts in the window, with features or not
    with_features: bool = True  # False: no post had features, so all labelled posts are here

    @property
    def missing_features(self) -> int:
        """Labelled posts left out for lack of features."""
        return self.labelled - len(self.ids) if self.with_features else 0

    def size(self, name: str) -> int:
        return int((self.split == name).sum())

    def histogram(self, name: str) -> list[int]:
        return histogram(self.y[self.split == name], len(self.edges))


def build_split(
    lake: Any,
    start: str,
    end: str,
    edges: Sequence[int] = DEFAULT_EDGES,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
    *,
    labels_only_fallback: bool = False,
) -> WindowSplit:
    """The labelled posts of start..end that have features, split by `assign_splits` with
    `n` = their number. With `labels_only_fallback` (the report's label histograms), a window
    without any features keeps every labelled post instead, and says so (`with_features`).
    Raises FileNotFoundError when the window has no posts_clean partition."""
    t = load_labels(lake, start, end, label_age_days, min_hearts)
    ids = t["id"].to_numpy()
    ds = np.asarray(t["ds"].to_pylist(), dtype=object)
    cc = t["comment_count"].to_numpy()
    has = have_features(lake, ids, ds)
    for d in sorted(set(ds[~has].tolist()) - set(ds[has].tolist())):
        n = int((ds == d).sum())
        log.warning("no features for %s: its %d labelled posts are left out", d, n)
    with_features = bool(has.any()) or not labels_only_fallback
    if with_features:
        ids, ds, cc = ids[has], ds[has], cc[has]
    return WindowSplit(
        window=(start, end),
        edges=tuple(edges),
        ids=ids,
        ds=ds,
        comment_count=cc,
        y=np.asarray(bin_labels(cc, edges), dtype=np.int64).reshape(-1),
        split=assign_splits(ids, len(ids)),
        labelled=int(t.num_rows),
        with_features=with_features,
    )


@dataclass
class TrainingData:
    """Features and labels of some splits of a window, rows sorted by post id."""

    X: np.ndarray  # float32 (n, 2432): img ++ txt
    y: np.ndarray  # int64 class
    post_ids: np.ndarray
    comment_count: np.ndarray
    split: np.ndarray  # object: the split of each row
    edges: tuple[int, ...]
    image_models: list[str]
    text_models: list[str]
    missing_features: int
    window: tuple[str, str]

    def part(self, name: str) -> np.ndarray:
        """Boolean mask of the rows of split `name`."""
        return self.split == name


def split_features(lake: Any, split: WindowSplit, names: Sequence[str] = SPLITS) -> TrainingData:
    """Read the features of the posts of `split` in the splits `names`."""
    want = np.isin(split.split, list(names))
    ids, ds = split.ids[want], split.ds[want]
    xs, ids_out, im_models, tm_models = [], [], set(), set()
    for d in sorted(set(ds.tolist())):
        sel = ids[ds == d]
        found = read_features(lake, d, sel)
        if found is None:
            log.warning("no features partition for %s: %d labelled posts left out", d, len(sel))
            continue
        pid, X_d, models = found
        if len(pid) == 0:
            continue
        xs.append(X_d)
        ids_out.append(pid)
        im_models |= models[0]
        tm_models |= models[1]
    if ids_out:
        found_ids = np.concatenate(ids_out)
        order = np.argsort(found_ids, kind="stable")
        X, found_ids = np.concatenate(xs)[order], found_ids[order]
    else:
        X, found_ids = np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64)
    rows = np.searchsorted(split.ids, found_ids)  # split.ids is sorted
    return TrainingData(
        X=X,
        y=split.y[rows],
        post_ids=found_ids,
        comment_count=split.comment_count[rows],
        split=split.split[rows],
        edges=split.edges,
        image_models=sorted(im_models),
        text_models=sorted(tm_models),
        missing_features=int(split.labelled - len(split.ids) + len(ids) - len(found_ids)),
        window=split.window,
    )


def load_dataset(
    lake: Any,
    start: str,
    end: str,
    edges: Sequence[int] = DEFAULT_EDGES,
    label_age_days: int = DEFAULT_LABEL_AGE_DAYS,
    min_hearts: int = MIN_HEARTS,
    splits: Sequence[str] = SPLITS,
) -> TrainingData:
    """Features joined with labels over the window, for the splits `splits` (see the module
    docstring)."""
    split = build_split(lake, start, end, edges, label_age_days, min_hearts)
    return split_features(lake, split, splits)
