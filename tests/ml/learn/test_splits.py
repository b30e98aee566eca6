"""Splits and labels that a team can trust (issue 12 §2): a post never changes split, reposts of
one photo share a split, and a label is the count at a fixed horizon after posting, read only
when the extracts cover that horizon (issue 20). Small, seeded, on a tmp lake."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from ml.lake.schema import CLEAN_SCHEMA, DATASET_CLEAN
from ml.learn import bins as B
from ml.learn import dataset as DS
from ml.learn import labels as L
from ml.learn import splits as SP
from tools.synthetic import write_features

DAY0 = datetime(2024, 3, 1)


def _day(i: int) -> str:
    return (DAY0 + timedelta(days=i)).date().isoformat()


# -- a post never changes split -----------------------------------------------------------------


def test_split_is_a_pure_function_of_the_key_sized_60_20_20():
    keys = np.arange(1, 50_001, dtype=np.int64) * 7919
    a = SP.assign_splits(keys)
    frac = {s: (a == s).mean() for s in ("train", "val", "test")}
    assert abs(frac["test"] - 0.2) < 0.01 and abs(frac["val"] - 0.2) < 0.01
    # any subset, in any order, gets the same answer for each key
    rng = np.random.default_rng(0)
    sub = rng.permutation(len(keys))[:777]
    assert (SP.assign_splits(keys[sub]) == a[sub]).all()
    assert SP.split_of(int(keys[3])) == a[3]


def test_a_post_keeps_its_split_as_the_window_slides_and_grows(tmp_path):
    """40 days of 400 labelled posts; training windows that grow, slide (28 days) and shrink
    across what used to be steps of the size ladder (n from 4,000 to 16,000): every post keeps
    the split it had in the first window it appeared in, as `build_split` makes it for
    training, the gate and the report."""
    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    per_day, days = 400, 40
    for d in range(days):
        ids = np.arange(d * per_day, (d + 1) * per_day, dtype=np.int64) * 104_729 + 11
        created = [DAY0 + timedelta(days=d, hours=12)] * per_day  # as updated: horizon 0
        _clean(lake, _day(d), ids, created, ids % 700)
        write_features(lake, _day(d), ids, np.zeros((per_day, 2432), np.float32))
    seen: dict[int, str] = {}
    for lo, hi in [(0, 9), (0, 27), (4, 31), (12, 39), (0, 39), (12, 39), (20, 39)]:
        split = DS.build_split(lake, _day(lo), _day(hi), horizon_days=0)
        assert len(split.ids) == (hi - lo + 1) * per_day
        for pid, s in zip(split.ids.tolist(), split.split.tolist(), strict=True):
            assert seen.setdefault(pid, s) == s, (pid, lo, hi)
    assert {s: sum(v == s for v in seen.values()) for s in ("train", "val", "test")} == {
        "train": pytest.approx(9_600, rel=0.05),
        "val": pytest.approx(3_200, rel=0.1),
        "test": pytest.approx(3_200, rel=0.1),
    }


def test_the_evaluation_cap_only_moves_evaluation_posts_to_reserve():
    keys = SP.group_keys(np.arange(5_000, dtype=np.int64) * 13 + 5)
    free, capped = SP.assign_splits(keys), SP.assign_splits(keys, 300)
    assert (capped == "reserve").sum() > 0
    moved = free != capped
    assert set(free[moved]) <= {"val", "test"} and set(capped[moved]) == {"reserve"}
    assert 300 <= (capped == "test").sum() <= 310 and 300 <= (capped == "val").sum() <= 310
    # a larger window keeps a subset of the same evaluation posts or sends them to reserve only
    more = SP.group_keys(np.arange(8_000, dtype=np.int64) * 13 + 5)
    capped_more = SP.assign_splits(more, 300)[:5_000]
    assert ((capped_more == "train") == (capped == "train")).all()


# -- reposts share a split ----------------------------------------------------------------------


def test_a_reposted_photo_keeps_its_perceptual_hash():
    """Re-encoded at another quality and resized, a photo with some structure keeps its dHash;
    another photo does not share it. (Low-contrast, noisy photos such as the demo's flip bits
    under heavy re-encoding: exact-match hashing catches copies and light re-encodes only.)"""
    import torch
    from PIL import Image

    from ml.features.encoders import pillow_pixels
    from ml.features.store import photo_hashes

    def photo(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ys, xs = np.mgrid[0:240, 0:320]
        img = np.zeros((240, 320, 3), np.float32)
        for _ in range(6):  # a few large shapes on a gradient
            cy, cx, r = rng.uniform(0, 240), rng.uniform(0, 320), rng.uniform(20, 90)
            img[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += (xs / 320 * 60)[..., None]
        return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)

    def jpeg(arr: np.ndarray, quality: int, scale: float = 1.0) -> bytes:
        im = Image.fromarray(arr)
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    a, b = photo(1), photo(2)
    datas = [jpeg(a, 90), jpeg(a, 70), jpeg(a, 85, 1.5), jpeg(a, 90, 0.6), jpeg(b, 90)]
    h = photo_hashes(torch.stack([pillow_pixels(d) for d in datas]))
    assert all(len(x) == 16 for x in h)
    assert h[0] == h[1] == h[2] == h[3] != h[4]


def _clean(lake, ds: str, ids, created, counts, captions=None, window_end=None) -> None:
    n = len(ids)
    cols = {f.name: [None] * n for f in CLEAN_SCHEMA}
    cols.update(
        id=list(ids),
        author_id=[1] * n,
        caption=captions or [f"caption of {i}" for i in ids],
        image_uri=["x"] * n,
        hearts=[5] * n,
        comment_count=list(counts),
        created_at=list(created),
        updated_at=[datetime.fromisoformat(ds) + timedelta(hours=12)] * n,
    )
    with lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))
        if window_end is not None:
            w.meta.update(window_start=ds + "T00:00:00", window_end=window_end)


def test_reposts_share_a_split_and_groups_are_recorded(tmp_path):
    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    n = 400
    ids = np.arange(1, n + 1, dtype=np.int64)
    # 40 photos posted 10 times each under new ids, with new captions
    photo = [f"{(i % 40) * 0x9E3779B97F4A7C1 % (1 << 64):016x}" for i in range(n)]
    _clean(lake, _day(0), ids, [DAY0 + timedelta(hours=12)] * n, ids % 50)
    write_features(lake, _day(0), ids, np.zeros((n, 2432)), photo_hashes=photo)
    split = DS.build_split(lake, _day(0), _day(0), horizon_days=0)
    by_photo: dict[str, set[str]] = {}
    for h, s in zip(photo, split.split.tolist(), strict=True):
        by_photo.setdefault(h, set()).add(s)
    assert all(len(v) == 1 for v in by_photo.values())
    assert {s for v in by_photo.values() for s in v} == {"train", "val", "test"}
    assert split.group_summary() == {
        "posts": n,
        "groups": 40,
        "multi_post_groups": 40,
        "posts_in_multi_post_groups": n,
    }
    data = DS.split_features(lake, split)
    first = int(np.flatnonzero(data.post_ids == ids[0])[0])
    assert data.group is not None and data.group[first] == f"photo:{photo[0]}"


def test_features_without_photo_hash_still_load_keyed_by_post_id(tmp_path):
    """A features partition written before `photo_hash` existed (its schema lacks the column)."""
    import pyarrow.parquet as pq

    from ml.lake.partitions import Lake
    from ml.lake.schema import DATASET_FEATURES, FEATURES_SCHEMA

    lake = Lake(str(tmp_path / "lake"))
    ids = np.arange(1, 301, dtype=np.int64)
    _clean(lake, _day(0), ids, [DAY0 + timedelta(hours=12)] * 300, ids % 50)
    write_features(lake, _day(0), ids, np.ones((300, 2432)))
    old_schema = pa.schema([f for f in FEATURES_SCHEMA if f.name != "photo_hash"])
    (f,) = lake.partition_files(DATASET_FEATURES, _day(0))
    old = pq.read_table(f, filesystem=lake.fs).select(old_schema.names)
    with lake.writer(DATASET_FEATURES, _day(0), old_schema) as w:
        w.write(old)
    split = DS.build_split(lake, _day(0), _day(0), horizon_days=0)
    assert split.split.tolist() == SP.assign_splits(ids).tolist()
    data = DS.split_features(lake, split)
    assert len(data.post_ids) == (split.split != "reserve").sum() and data.X[0, 0] == 1.0


def test_captions_shared_across_splits_are_counted():
    split = DS.WindowSplit(
        window=("a", "b"),
        edges=B.DEFAULT_EDGES,
        ids=np.arange(5),
        ds=np.array(["a"] * 5, dtype=object),
        comment_count=np.zeros(5, np.int64),
        y=np.zeros(5, np.int64),
        split=np.array(["train", "test", "test", "val", "train"], dtype=object),
        labelled=5,
        caption_key=np.array(
            [SP.caption_key(c) for c in ("Sunset!!", "sunset", "other", "#SUNSET ", None)],
            dtype=object,
        ),
    )
    assert SP.caption_key("Sunset!! #sunset") == SP.caption_key("sunset   SUNSET")
    assert SP.caption_key(" 🌅 ") is None and SP.caption_key("") is None
    assert split.caption_overlap() == {"val": 1, "test": 1}


# -- label maturity ------------------------------------------------------------------------------


def _clean_at(lake, ds: str, rows, window_end=None) -> None:
    """posts_clean/ds of rows (id, created_at, updated_at, comment_count, caption)."""
    n = len(rows)
    cols = {f.name: [None] * n for f in CLEAN_SCHEMA}
    cols.update(
        id=[r[0] for r in rows],
        author_id=[1] * n,
        caption=[r[4] for r in rows],
        image_uri=["x"] * n,
        hearts=[5] * n,
        comment_count=[r[3] for r in rows],
        created_at=[r[1] for r in rows],
        updated_at=[r[2] for r in rows],
    )
    with lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))
        if window_end is not None:
            w.meta.update(window_start=ds + "T00:00:00", window_end=window_end)


def _days(lake, first: int, last: int, rows_of=None) -> None:
    for d in range(first, last + 1):
        rows = (rows_of or {}).get(d, [(9000 + d, DAY0 - timedelta(days=40), DAY0, 0, "x")])
        _clean_at(lake, _day(d), rows, window_end=_day(d + 1) + "T00:00:00")


def test_the_label_is_the_count_at_the_horizon_of_posts_created_in_the_window(tmp_path):
    """Post 1 grows after its horizon: its label is the count at 7 days, not the later one.
    Post 2 was created the hour before the window and post 4 a month before it (gaining comments
    in it): not in the population, which is the posts created in the window (re-appearing in an
    extract selects old posts on their outcome). Post 3 was created on day 12: its horizon (day 19)
    lies past the last partition, so it waits. Features and caption: the first snapshot's."""
    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    t0 = DAY0 + timedelta(hours=9)
    old = DAY0 - timedelta(days=30)
    rows_of = {
        0: [
            (1, t0, t0 + timedelta(hours=1), 2, "as posted"),
            (2, DAY0 - timedelta(hours=1), DAY0 + timedelta(minutes=30), 5, "just before"),
        ],
        3: [(1, t0, DAY0 + timedelta(days=3, hours=8), 12, "edited")],  # before the horizon
        9: [
            (1, t0, DAY0 + timedelta(days=9, hours=8), 40, "edited"),  # after the horizon
            (4, old, DAY0 + timedelta(days=9, hours=3), 90, "old post"),
        ],
        12: [(3, DAY0 + timedelta(days=12, hours=1), DAY0 + timedelta(days=12, hours=2), 1, "y")],
    }
    _days(lake, 0, 14, rows_of)
    t = L.load_labels(lake, _day(0), _day(14), horizon_days=7)
    assert t["id"].to_pylist() == [1]
    assert t["comment_count"].to_pylist() == [12]  # day 3's count: the last before day 7
    assert t["ds"].to_pylist() == [_day(3)] and t["feature_ds"].to_pylist() == [_day(0)]
    assert t["caption_key"].to_pylist() == [SP.caption_key("as posted")]
    # another horizon, another label: at 10 days the count is day 9's
    t = L.load_labels(lake, _day(0), _day(14), horizon_days=10)
    assert t["comment_count"].to_pylist() == [40]
    # post 3 gets its label once the days up to its horizon are extracted
    _days(lake, 15, 20)
    t = L.load_labels(lake, _day(0), _day(20), horizon_days=7)
    assert t["id"].to_pylist() == [1, 3]


def test_a_label_needs_every_day_up_to_its_horizon_extracted(tmp_path):
    """A count read on the posting day, followed by a day that was never extracted, is not the
    count at the horizon: the post's label waits (here: forever) instead of passing for mature."""
    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    t0 = DAY0 + timedelta(hours=9)
    _days(lake, 0, 3, {0: [(1, t0, t0 + timedelta(hours=1), 2, "a")]})
    _days(lake, 5, 10)  # day 4 missing
    assert L.load_labels(lake, _day(0), _day(10), horizon_days=7).num_rows == 0
    _days(lake, 4, 4)  # backfilled: every day up to the horizon is now extracted
    t = L.load_labels(lake, _day(0), _day(10), horizon_days=7)
    assert t["id"].to_pylist() == [1] and t["comment_count"].to_pylist() == [2]
    assert t["observed_at"].to_pylist() == [DAY0 + timedelta(days=11)]


def test_the_target_in_one_sentence():
    assert L.target_sentence(7, B.DEFAULT_EDGES) == (
        "comments within 7 days of posting, 8 bins: 0, 1-2, 3-9, 10-29, 30-99, 100-299, "
        "300-599, 600+"
    )
    assert L.target_sentence(1, (0, 1)) == "comments within 1 day of posting, 2 bins: 0, 1+"


def test_observed_at_is_the_extraction_window_end_or_an_earlier_commit():
    m = {"window_end": "2024-03-02T00:00:00", "committed_at": "2024-03-05T01:00:00+00:00"}
    assert L.observed_at(m, "2024-03-01") == datetime(2024, 3, 2)
    m["committed_at"] = "2024-03-01T18:00:00+00:00"  # extracted before the day ended
    assert L.observed_at(m, "2024-03-01") == datetime(2024, 3, 1, 18)
    assert L.observed_at(None, "2024-03-01") == datetime(2024, 3, 2)
