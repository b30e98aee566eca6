"""A window's labelled posts, their train/validation/test split, and their features.

`build_split` is the one place a window's split is made: training (`ml.train`), the promotion
gate (`ml.promote`) and the weekly report (`ml.report_data`) all call it, so promotion and the
report score exactly the posts training held out. The rule itself (a pure function of a post's
group key: its photo's perceptual hash, else its id) is `ml.labels.assign_splits`; each window's
evaluation sets are then capped (`ml.labels.cap_evaluation`: the overflow is `reserve`, never
trained on). `WindowSplit.groups` and `TrainingData.group` name each post's group, for the
record; `WindowSplit.caption_overlap` counts evaluation posts whose caption also occurs in train.

A post's label is its latest snapshot in the window (`posts_clean` partitions start..end), kept
only when the post was old enough when that snapshot was extracted (label age, `ml.labels`) and
with hearts >= 1; its features are the row of `features/ds`
for the partition of that snapshot, i.e. the image and caption the label belongs to. Labelled
posts without features (skipped at embed, or not embedded yet) are counted and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.features import feature_index, read_features
from ml.labels import (
    DEFAULT_EDGES,
    DEFAULT_LABEL_AGE_DAYS,
    EVAL_SPLITS,
    MAX_EVAL_ROWS,
    MIN_HEARTS,
    assign_splits,
    bin_labels,
    group_keys,
    histogram,
    load_labels,
)
from ml.schema import N_FEATURES

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # "reserve" posts (past the evaluation cap) are in none


def group_names(ids: np.ndarray, photo_hash: np.ndarray) -> np.ndarray:
    """Readable group of each post: "photo:<dHash>" (reposts share it) or "post:<id>"."""
    return np.array(
        [
            f"photo:{h}" if h is not None else f"post:{i}"
            for i, h in zip(ids, photo_hash, strict=True)
        ],
        dtype=object,
    )


@dataclass
class WindowSplit:
    """The labelled posts of a window, sorted by id, with the split each belongs to."""

    window: tuple[str, str]
    edges: tuple[int, ...]
    ids: np.ndarray  # int64, sorted
    ds: np.ndarray  # object: the posts_clean partition of each post's label
    comment_count: np.ndarray
    y: np.ndarray  # int64 class
    split: np.ndarray  # object: "train" | "val" | "test" | "reserve"
    labelled: int  # labelled posts in the window, with features or not
    with_features: bool = True  # False: no post had features, so all labelled posts are here
    photo_hash: np.ndarray | None = None  # object: hex dHash of the photo, None where unknown
    caption_key: np.ndarray | None = None  # object: `ml.labels.caption_key`, None: no words

    @property
    def groups(self) -> np.ndarray:
        """Group of each post (`group_names`): posts of one group always share a split."""
        ph = self.photo_hash if self.photo_hash is not None else [None] * len(self.ids)
        return group_names(self.ids, np.asarray(ph, dtype=object))

    def group_summary(self) -> dict[str, int]:
        """Posts, groups, and groups of several posts (reposts) of this window, for the record."""
        _, counts = np.unique(self.groups.astype(str), return_counts=True)
        return {
            "posts": int(len(self.ids)),
            "groups": int(len(counts)),
            "multi_post_groups": int((counts > 1).sum()),
            "posts_in_multi_post_groups": int(counts[counts > 1].sum()),
        }

    def caption_overlap(self) -> dict[str, int]:
        """Posts of each evaluation set whose normalised caption also occurs in train: the leak
        the photo-keyed split does not close (`ml.labels` says why), measured."""
        if self.caption_key is None:
            return {name: 0 for name in EVAL_SPLITS}
        ck = np.asarray(self.caption_key, dtype=object)
        train = {k for k in ck[self.split == "train"].tolist() if k is not None}
        return {
            name: sum(1 for k in ck[self.split == name].tolist() if k is not None and k in train)
            for name in EVAL_SPLITS
        }

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
    max_eval_rows: int = MAX_EVAL_ROWS,
) -> WindowSplit:
    """The labelled posts of start..end that have features, split by `assign_splits` on their
    group keys, evaluation sets capped at `max_eval_rows`. With `labels_only_fallback` (the
    report's label histograms), a window without any features keeps every labelled post
    instead, and says so (`with_features`). Raises FileNotFoundError when the window has no
    posts_clean partition."""
    t = load_labels(lake, start, end, label_age_days, min_hearts)
    ids = t["id"].to_numpy()
    ds = np.asarray(t["ds"].to_pylist(), dtype=object)
    cc = t["comment_count"].to_numpy()
    ck = np.asarray(t["caption_key"].to_pylist(), dtype=object)
    has, photo = feature_index(lake, ids, ds)
    for d in sorted(set(ds[~has].tolist()) - set(ds[has].tolist())):
        n = int((ds == d).sum())
        log.warning("no features for %s: its %d labelled posts are left out", d, n)
    with_features = bool(has.any()) or not labels_only_fallback
    if with_features:
        ids, ds, cc, ck, photo = ids[has], ds[has], cc[has], ck[has], photo[has]
    return WindowSplit(
        window=(start, end),
        edges=tuple(edges),
        ids=ids,
        ds=ds,
        comment_count=cc,
        y=np.asarray(bin_labels(cc, edges), dtype=np.int64).reshape(-1),
        split=assign_splits(group_keys(ids, photo), max_eval_rows),
        labelled=int(t.num_rows),
        with_features=with_features,
        photo_hash=photo,
        caption_key=ck,
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
    group: np.ndarray | None = None  # object: each row's group (`group_names`)

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
        group=split.groups[rows],
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
