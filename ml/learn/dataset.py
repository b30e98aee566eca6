"""A window's labelled posts, their train/validation/test split, and their features.

`build_split` is the one place a window's split is made: training (`ml.learn.train`), the promotion
gate (`ml.learn.promote`) and the weekly report (`ml.report.data`) all call it, so promotion and the
report score exactly the posts training held out. The rule itself (a pure function of a post's
group key: its photo's perceptual hash, else its id) is `ml.learn.splits.assign_splits`; each
window's evaluation sets are then capped (`ml.learn.splits.cap_evaluation`: the overflow is
`reserve`, never trained on). `WindowSplit.groups` and `TrainingData.group` name each post's group,
for the record; `WindowSplit.caption_overlap` counts evaluation posts whose caption also occurs in
train.

A post's label is its comment count `label_horizon_days` after posting, for the posts created in
the window whose horizon has passed (`ml.learn.labels.load_labels`, with hearts >= 1); its
features are the row of `features/ds` for the partition of its *first* snapshot
(`feature_ds`): the image and caption as posted, not as later edited. Labelled posts without
features (skipped at embed, or not embedded yet) are counted and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.features.store import feature_index, iter_features
from ml.lake.schema import IMG_DIM, N_FEATURES
from ml.learn.bins import DEFAULT_EDGES, bin_labels, histogram
from ml.learn.labels import DEFAULT_LABEL_HORIZON_DAYS, MIN_HEARTS, load_labels
from ml.learn.splits import EVAL_SPLITS, MAX_EVAL_ROWS, assign_splits, group_keys

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
    ds: np.ndarray  # object: partition of each post's first snapshot (its features)
    comment_count: np.ndarray
    y: np.ndarray  # int64 class
    split: np.ndarray  # object: "train" | "val" | "test" | "reserve"
    labelled: int  # labelled posts in the window, with features or not
    with_features: bool = True  # False: no post had features, so all labelled posts are here
    photo_hash: np.ndarray | None = None  # object: hex dHash of the photo, None where unknown
    caption_key: np.ndarray | None = None  # object: `ml.learn.splits.caption_key`, None: no words
    horizon_days: int = DEFAULT_LABEL_HORIZON_DAYS  # the label: comments this long after posting

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
        the photo-keyed split does not close (`ml.learn.splits` says why), measured."""
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

    def stats(self) -> dict[str, int]:
        """What a training run records about its split: reserve size, groups, caption leaks."""
        overlap = {f"caption_overlap_{k}": v for k, v in self.caption_overlap().items()}
        return {"reserve_rows": self.size("reserve"), **self.group_summary(), **overlap}

    def repost_groups(self) -> dict[str, list[int]]:
        """Groups of several posts (reposts of one photo) and their post ids: the record of
        which posts were kept together."""
        groups = self.groups.astype(str)
        names, counts = np.unique(groups, return_counts=True)
        multi = set(names[counts > 1].tolist())
        out: dict[str, list[int]] = {}
        for g, i in zip(groups.tolist(), self.ids.tolist(), strict=True):
            if g in multi:
                out.setdefault(g, []).append(int(i))
        return out

    def histogram(self, name: str) -> list[int]:
        return histogram(self.y[self.split == name], len(self.edges))


def build_split(
    lake: Any,
    start: str,
    end: str,
    edges: Sequence[int] = DEFAULT_EDGES,
    horizon_days: int = DEFAULT_LABEL_HORIZON_DAYS,
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
    t = load_labels(lake, start, end, horizon_days, min_hearts)
    ids = t["id"].to_numpy()
    ds = np.asarray(t["feature_ds"].to_pylist(), dtype=object)  # features of the post as posted
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
        horizon_days=horizon_days,
    )


@dataclass
class TrainingData:
    """Features and labels of some splits of a window. `split_features` orders the rows by split
    (train, val, test), then post id, so that `rows(name)` is a slice and each split's X a view:
    1M x 2432 float32 is 9.7 GB, and training never copies it."""

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
    split_stats: dict[str, int] = field(default_factory=dict)  # `WindowSplit.stats()`
    horizon_days: int = DEFAULT_LABEL_HORIZON_DAYS

    def encoder_pair(self) -> tuple[str, str]:
        """The (image model, text model) every row was embedded with. Raises ValueError when
        the rows come from more than one: a model is made of one pair of encoders, and features
        of two image weights are not one feature space (re-embed the window's older days)."""
        if len(self.image_models) > 1 or len(self.text_models) > 1:
            raise ValueError(
                f"features of window {self.window[0]}..{self.window[1]} come from more than one "
                f"encoder pair (image {self.image_models}, text {self.text_models}): re-embed "
                "the older days with the current encoders, or train on a window of one pair"
            )
        return (
            self.image_models[0] if self.image_models else "unknown",
            self.text_models[0] if self.text_models else "unknown",
        )

    def part(self, name: str) -> np.ndarray:
        """Boolean mask of the rows of split `name`."""
        return self.split == name

    def rows(self, name: str) -> slice | np.ndarray:
        """The rows of split `name`: a slice when they are contiguous (as `split_features` lays
        them out; indexing X with it makes a view, not a copy), else the boolean mask."""
        idx = np.flatnonzero(self.split == name)
        if len(idx) == 0:
            return slice(0, 0)
        if idx[-1] - idx[0] + 1 == len(idx):
            return slice(int(idx[0]), int(idx[-1]) + 1)
        return self.split == name


def _compact_rows(X: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """X[keep] without a second copy of X: rows moved down in place, block by block (a row only
    ever moves to a lower index, so blocks never overwrite rows still to be moved)."""
    idx = np.flatnonzero(keep)
    if len(idx) == len(X):
        return X
    if len(idx) == 0:
        return X[:0]
    starts = np.flatnonzero(np.diff(idx, prepend=-2) != 1)  # runs of consecutive kept rows
    ends = np.append(starts[1:], len(idx))
    step = 8192  # rows per copy: numpy buffers an overlapping copy, so keep each one small
    for a, b in zip(starts, ends, strict=True):
        src = int(idx[a])
        for i in range(a, b, step):
            j = min(b, i + step)
            X[i:j] = X[src + (i - a) : src + (j - a)]
    return X[: len(idx)]


def split_features(lake: Any, split: WindowSplit, names: Sequence[str] = SPLITS) -> TrainingData:
    """Read the features of the posts of `split` in the splits `names`, into one float32 array
    allocated once, rows ordered by split (in the order of `names`) then post id. Posts without a
    features row are dropped (counted in `missing_features`)."""
    rank = {name: i for i, name in enumerate(names)}
    want = np.flatnonzero(np.isin(split.split, list(names)))
    order = np.lexsort((split.ids[want], [rank[s] for s in split.split[want]]))
    rows = want[order]  # positions in `split`, in the output order
    ids, ds = split.ids[rows], split.ds[rows]
    by_id = np.argsort(ids, kind="stable")  # to find a post's output row from its id
    X = np.empty((len(rows), N_FEATURES), np.float32)
    filled = np.zeros(len(rows), bool)
    im_models: set[str] = set()
    tm_models: set[str] = set()
    for d in sorted(set(ds.tolist())):
        batches = iter_features(lake, d, ids[ds == d])
        if batches is None:
            n = int((ds == d).sum())
            log.warning("no features partition for %s: %d labelled posts left out", d, n)
            continue
        for pid, img, txt, im, tm in batches:
            at = by_id[np.searchsorted(ids, pid, sorter=by_id)]
            X[at, :IMG_DIM] = img  # float16 -> float32 in place: no float32 copy of a batch
            X[at, IMG_DIM:] = txt
            filled[at] = True
            im_models |= im
            tm_models |= tm
    X = _compact_rows(X, filled)
    rows = rows[filled]
    return TrainingData(
        X=X,
        y=split.y[rows],
        post_ids=split.ids[rows],
        comment_count=split.comment_count[rows],
        split=split.split[rows],
        edges=split.edges,
        image_models=sorted(im_models),
        text_models=sorted(tm_models),
        missing_features=int(split.labelled - len(split.ids) + len(filled) - int(filled.sum())),
        window=split.window,
        group=split.groups[rows],
        split_stats=split.stats(),
        horizon_days=split.horizon_days,
    )


def load_dataset(
    lake: Any,
    start: str,
    end: str,
    edges: Sequence[int] = DEFAULT_EDGES,
    horizon_days: int = DEFAULT_LABEL_HORIZON_DAYS,
    min_hearts: int = MIN_HEARTS,
    splits: Sequence[str] = SPLITS,
) -> TrainingData:
    """Features joined with labels over the window, for the splits `splits` (see the module
    docstring)."""
    split = build_split(lake, start, end, edges, horizon_days, min_hearts)
    return split_features(lake, split, splits)
