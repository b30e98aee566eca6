"""The features of a window's split, read into one array laid out by split (train, val, test),
so training takes views, not copies: what lets 1M x 2432 fit the GPU pod's memory."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from ml.lake.partitions import Lake
from ml.learn import dataset as DS
from tools.synthetic import write_features, write_posts_clean


def _window(tmp_path, n: int = 300, skip: tuple[int, ...] = ()):
    """Two days of n/2 labelled posts each; every post's features carry its id in column 0;
    the posts in `skip` were never embedded."""
    lake = Lake(str(tmp_path / "lake"))
    ids = np.arange(1, n + 1, dtype=np.int64) * 7  # X stores id // 7 (float16-exact)
    for day, part in (("2024-03-01", ids[: n // 2]), ("2024-03-02", ids[n // 2 :])):
        write_posts_clean(
            lake,
            day,
            {
                "id": part,
                "author_id": [1] * len(part),
                "caption": ["c"] * len(part),
                "image_uri": ["x"] * len(part),
                "hearts": [1] * len(part),
                "comment_count": (part % 50).tolist(),
                "created_at": [datetime.fromisoformat(day)] * len(part),
                "updated_at": [datetime.fromisoformat(day)] * len(part),
            },
        )
        embedded = np.array([i for i in part if i not in skip], dtype=np.int64)
        X = np.zeros((len(embedded), 2432), np.float32)
        X[:, 0], X[:, -1] = embedded // 7, -(embedded // 7)  # whose row (exact in float16)
        write_features(lake, day, embedded, X)
    return lake, ids


def test_rows_are_laid_out_by_split_and_each_split_is_a_view(tmp_path):
    lake, ids = _window(tmp_path)
    data = DS.load_dataset(lake, "2024-03-01", "2024-03-02", horizon_days=0)
    assert sorted(data.post_ids.tolist()) == ids.tolist() and data.missing_features == 0
    np.testing.assert_array_equal(data.X[:, 0], data.post_ids // 7)  # each row is its post's
    np.testing.assert_array_equal(data.X[:, -1], -(data.post_ids // 7))
    seen = []
    for name in DS.SPLITS:
        rows = data.rows(name)
        assert isinstance(rows, slice), name
        assert np.shares_memory(data.X[rows], data.X)  # a view: no copy of the features
        assert (data.split[rows] == name).all()
        assert np.all(np.diff(data.post_ids[rows]) > 0)  # by id within a split
        seen.append(data.split[rows][0])
    assert seen == list(DS.SPLITS)


def test_posts_without_features_are_dropped_in_place(tmp_path):
    skip = (7, 14, 700, 1050, 2100)  # the first rows, some middle ones, the last
    lake, ids = _window(tmp_path, skip=skip)
    data = DS.load_dataset(lake, "2024-03-01", "2024-03-02", horizon_days=0)
    assert sorted(data.post_ids.tolist()) == [i for i in ids.tolist() if i not in skip]
    assert data.missing_features == len(skip)
    np.testing.assert_array_equal(data.X[:, 0], data.post_ids // 7)
    np.testing.assert_array_equal(data.X[:, -1], -(data.post_ids // 7))
    only_test = DS.load_dataset(lake, "2024-03-01", "2024-03-02", horizon_days=0, splits=("test",))
    assert set(only_test.split.tolist()) == {"test"}
    np.testing.assert_array_equal(only_test.X[:, 0], only_test.post_ids // 7)


def test_training_reads_the_post_as_posted_not_its_edited_caption(tmp_path):
    """Post 7 is posted on day 1 with caption "sunset" and edited on day 3 (its count grew and
    its caption became "SALE"): the features trained on are day 1's, the post as a model
    scoring it at posting time would see it."""
    from ml.learn import train as T

    lake = Lake(str(tmp_path / "lake"))
    ids = np.arange(1, 201, dtype=np.int64) * 7
    t1 = datetime(2024, 3, 1, 9)
    for d, caption, marker in (("2024-03-01", "sunset", 1.0), ("2024-03-03", "SALE", 2.0)):
        part = ids if d == "2024-03-01" else ids[:1]  # post 7 again, edited
        day = datetime.fromisoformat(d)
        write_posts_clean(
            lake,
            d,
            {
                "id": part,
                "author_id": [1] * len(part),
                "caption": [caption] * len(part),
                "image_uri": ["x"] * len(part),
                "hearts": [1] * len(part),
                "comment_count": (part % 50).tolist(),
                "created_at": [t1] * len(part),
                "updated_at": [max(t1, day + timedelta(hours=10))] * len(part),
            },
        )
        X = np.zeros((len(part), 2432), np.float32)
        X[:, 0] = marker  # which snapshot's features a row holds
        write_features(lake, d, part, X)
    for d in ("2024-03-02", "2024-03-04", "2024-03-05"):  # every day up to the horizon
        write_posts_clean(lake, d, {"id": [], "created_at": [], "updated_at": []})
    split = DS.build_split(lake, "2024-03-01", "2024-03-05", horizon_days=3)
    data = DS.split_features(lake, split)
    assert 7 in data.post_ids.tolist() and len(data.post_ids) == 200
    assert (data.X[:, 0] == 1.0).all()  # planted defect (latest snapshot's features): 2.0
    at = data.post_ids.tolist().index(7)
    assert data.comment_count[at] == 7 % 50
    assert split.ds[split.ids.tolist().index(7)] == "2024-03-01"
    result = T.run_training(data, T.TrainConfig(max_epochs=1, device="cpu"))
    assert result.summary()["target"].startswith("comments within 3 days of posting, 8 bins")


def test_training_refuses_features_of_two_image_encoders(tmp_path):
    """Day 1 embedded with one ResNet50 weights file, day 2 with another: not one feature
    space, so the window is refused (a model records one encoder pair)."""
    from ml.learn import train as T

    lake, _ = _window(tmp_path)
    ids = np.arange(151, 301, dtype=np.int64) * 7
    X = np.zeros((len(ids), 2432), np.float32)
    write_features(lake, "2024-03-02", ids, X, image_model="resnet50:file-b.pth-0123456789ab")
    data = DS.load_dataset(lake, "2024-03-01", "2024-03-02", horizon_days=0)
    assert len(data.image_models) == 2
    with pytest.raises(ValueError, match="more than one encoder pair"):
        T.run_training(data, T.TrainConfig(max_epochs=1, device="cpu"))


def test_compact_rows_moves_rows_down_without_losing_any():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 3)).astype(np.float32)
    keep = rng.random(20_000) < 0.7
    keep[:5] = False
    want = X[keep].copy()
    got = DS._compact_rows(X, keep)
    np.testing.assert_array_equal(got, want)
    assert np.shares_memory(got, X)
    assert DS._compact_rows(X, np.zeros(len(X), bool)).shape == (0, 3)  # none kept
