"""`validate` sharded over id ranges (ml.ingest.shards): a sharded day is the unsharded day, row
for row; a failed shard retries alone; a merge never mixes extracts. A real local lake, real
photos, a hand-made posts_raw (duplicate ids included, which MySQL cannot produce)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from ml.config import Settings
from ml.ingest import etl, shards
from ml.ingest.etl import ValidationFailed, Window, clean, reconcile
from ml.ingest.shards import (
    STAGING,
    ShardsMissing,
    StaleExtract,
    merge,
    shard_bounds,
    validate_shard,
)
from ml.lake.partitions import Lake, LakeError
from ml.lake.schema import DATASET_RAW, DISTINCT_COLUMNS, RAW_SCHEMA

DAY = datetime(2026, 11, 20, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))
NOW = DAY + timedelta(days=2)


@pytest.fixture
def settings(tmp_path: Path, images: Path) -> Settings:
    (images / "text.jpg").write_bytes(b"not a photo at all")
    return Settings.load(
        {
            "lake": str(tmp_path / "lake"),
            "image_root": str(images),
            "image_workers": 1,
            "extract_chunk_rows": 5,  # several chunks per shard
        },
        environ={},
    )


def raw_rows(n: int, extra: int = 0) -> list[dict]:
    """`n` posts in id order with every kind of bad row, plus superseded versions of ids."""
    rows = []
    for i in range(1, n + 1 + extra):
        updated = DAY + timedelta(minutes=7 * i)
        r = dict(
            id=i * 3,
            author_id=i % 5,
            caption=f"sunset\tat  the beach #{i}",
            image_uri=f"{i % 7 + 1}.jpg",
            hearts=i,
            comment_count=i % 13,
            created_at=updated - timedelta(minutes=5),
            updated_at=updated,
        )
        if i % 11 == 0:
            r["image_uri"] = "missing.jpg"
        if i % 13 == 0:
            r["image_uri"] = "text.jpg"
        if i % 17 == 0:
            r["hearts"] = -1
        if i % 19 == 0:
            r["created_at"] = NOW + timedelta(days=3)
        if i % 23 == 0:
            r["caption"] = None
        rows.append(r)
        if i % 9 == 0:  # an older version of the same post in the same window
            rows.append({**r, "updated_at": updated - timedelta(minutes=1), "hearts": 0})
    return rows


def write_raw(settings: Settings, rows: list[dict]) -> str:
    """posts_raw/ds=DAY as the extract would commit it; its run id."""
    lake = Lake.from_settings(settings)
    table = pa.Table.from_pylist(
        [
            {**r, **{k: r[k].replace(tzinfo=None) for k in ("created_at", "updated_at")}}
            for r in rows
        ],
        RAW_SCHEMA,
    )
    with lake.writer(DATASET_RAW, WINDOW.ds, RAW_SCHEMA, DISTINCT_COLUMNS) as w:
        w.write(table)
        w.meta.update(window_start=WINDOW.start.isoformat(), window_end=WINDOW.end.isoformat())
    return w.run_id


def day_of(settings: Settings) -> tuple[list[dict], list[tuple]]:
    """(posts_clean rows, quarantine (id, updated_at, reason, message)) as committed, in order."""
    lake = Lake.from_settings(settings)
    clean_rows = lake.read_partition("posts_clean", WINDOW.ds).to_pylist()
    quarantine = [
        (r["id"], r["updated_at"], r["reason"], r["message"])
        for r in lake.read_partition("quarantine", WINDOW.ds).to_pylist()
    ]
    return clean_rows, quarantine


def run_sharded(settings: Settings, n: int) -> dict:
    for i in range(n):
        validate_shard(settings, WINDOW, i, n, now=NOW)
    return merge(settings, WINDOW, n)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_a_sharded_day_is_the_unsharded_day_row_for_row(settings, n):
    write_raw(settings, raw_rows(60))
    whole = clean(settings, WINDOW, now=NOW)
    expected = day_of(settings)
    reasons = {r for *_, r, _m in expected[1]}
    assert {"duplicate_superseded", "image_missing", "count_negative"} <= reasons, reasons
    assert {"image_not_an_image", "timestamp_in_future"} <= reasons, reasons

    merged = run_sharded(settings, n)
    assert day_of(settings) == expected
    for key in ("rows_in", "clean", "quarantined", "reasons"):
        assert merged[key] == whole[key], key
    assert reconcile(settings, WINDOW)["rows_in"] == whole["rows_in"]
    lake = Lake.from_settings(settings)
    manifest = lake.read_manifest("posts_clean", WINDOW.ds)
    assert manifest["shards"] == n and manifest["rows"] == whole["clean"]
    assert manifest["raw_run_id"] == lake.read_manifest(DATASET_RAW, WINDOW.ds)["run_id"]
    assert not list(Path(settings.lake, STAGING).rglob("*.parquet")), "staging left behind"


def test_shard_bounds_split_rows_evenly_and_never_split_an_id():
    ids = pa.array([5, 1, 1, 1, 1, 2, 9, 9, 7, None, 3, 4], pa.int64())
    bounds = shard_bounds(ids, 3)
    assert bounds[0] is None and bounds[-1] is None and bounds[1:-1] == sorted(bounds[1:-1])
    members = [
        [
            v
            for v in ids.to_pylist()
            if shards.in_range(pa.array([v], pa.int64()), lo, hi)[0].as_py()
        ]
        for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]
    assert sorted(map(str, sum(members, []))) == sorted(map(str, ids.to_pylist())), "each once"
    assert all(len(set(a) & set(b)) == 0 for a in members for b in members if a is not b)
    assert len(shard_bounds(pa.array([1, 2], pa.int64()), 5)) == 6  # more shards than rows


def test_a_failed_shard_retries_alone(settings, monkeypatch):
    write_raw(settings, raw_rows(60))
    clean(settings, WINDOW, now=NOW)
    expected = day_of(settings)
    lake = Lake.from_settings(settings)
    original = shards.clean_into
    calls = []

    def failing_once(batches, *args):
        calls.append(1)
        if len(calls) == 2:  # shard 1's first try dies midway (a worker lost, say)
            next(iter(batches))
            raise OSError("worker lost")
        return original(batches, *args)

    monkeypatch.setattr(shards, "clean_into", failing_once)
    validate_shard(settings, WINDOW, 0, 3, now=NOW)
    with pytest.raises(LakeError, match="not committed.*worker lost"):
        validate_shard(settings, WINDOW, 1, 3, now=NOW)
    validate_shard(settings, WINDOW, 2, 3, now=NOW)
    with pytest.raises(ShardsMissing, match=r"shards \[1\] of 3 are not staged"):
        merge(settings, WINDOW, 3)
    run = lake.read_manifest(DATASET_RAW, WINDOW.ds)["run_id"]
    staged = {
        i: lake.read_manifest(
            shards.staging_dataset(WINDOW.ds, run, 3, i, "posts_clean"), WINDOW.ds
        )
        for i in (0, 2)
    }
    validate_shard(settings, WINDOW, 1, 3, now=NOW)  # the retry: shard 1 only
    for i, m in staged.items():  # the others were not redone
        name = shards.staging_dataset(WINDOW.ds, run, 3, i, "posts_clean")
        assert lake.read_manifest(name, WINDOW.ds)["run_id"] == m["run_id"]
    merge(settings, WINDOW, 3)
    assert day_of(settings) == expected
    assert len(calls) == 4
    committed = lake.read_manifest("posts_clean", WINDOW.ds)["run_id"]
    assert merge(settings, WINDOW, 3)["clean"] == len(expected[0]), "a merge retry: a no-op"
    assert lake.read_manifest("posts_clean", WINDOW.ds)["run_id"] == committed


def test_a_merge_refuses_shards_of_another_extract(settings):
    """Run A stages its shards; run B re-extracts (the app wrote meanwhile); A's merge must not
    commit A's rows as the day of B's posts_raw. B's shards then merge cleanly."""
    write_raw(settings, raw_rows(40))
    for i in range(2):
        validate_shard(settings, WINDOW, i, 2, now=NOW)
    write_raw(settings, raw_rows(40, extra=10))  # B's extract
    with pytest.raises(StaleExtract, match="staged shards belong to extract"):
        merge(settings, WINDOW, 2)
    lake = Lake.from_settings(settings)
    assert lake.read_manifest("posts_clean", WINDOW.ds) is None, "nothing committed"
    merged = run_sharded(settings, 2)
    assert merged["rows_in"] == len(raw_rows(40, extra=10))
    assert reconcile(settings, WINDOW)["rows_in"] == merged["rows_in"]


def test_staged_parts_of_another_extract_under_its_key_are_refused(settings):
    """Defence in depth: parts whose manifests name another extract are refused even when
    found under the current extract's key (a copied or mislabelled staging folder)."""
    lake = Lake.from_settings(settings)
    write_raw(settings, raw_rows(30))
    run_a = lake.read_manifest(DATASET_RAW, WINDOW.ds)["run_id"]
    validate_shard(settings, WINDOW, 0, 1, now=NOW)
    run_b = write_raw(settings, raw_rows(30))
    a_dir = Path(settings.lake, STAGING, f"ds={WINDOW.ds}", f"raw={run_a}")
    a_dir.rename(a_dir.with_name(f"raw={run_b}"))
    with pytest.raises(StaleExtract, match=f"of extract {run_a}"):
        merge(settings, WINDOW, 1)
    assert lake.read_manifest("posts_clean", WINDOW.ds) is None


def test_a_shard_reading_an_extract_replaced_meanwhile_stages_nothing(settings, monkeypatch):
    write_raw(settings, raw_rows(30))
    original = shards.clean_into

    def re_extract_midway(*args):
        out = original(*args)
        write_raw(settings, raw_rows(30, extra=5))  # B extracts while A's shard runs
        return out

    monkeypatch.setattr(shards, "clean_into", re_extract_midway)
    with pytest.raises(StaleExtract, match="re-extracted"):
        validate_shard(settings, WINDOW, 0, 1, now=NOW)
    assert not list(Path(settings.lake, STAGING).rglob("_manifest.json"))


def test_the_day_level_checks_hold_across_shards(settings):
    """The quarantined fraction is the day's, not a shard's: over the limit, nothing lands."""
    write_raw(settings, raw_rows(60))
    strict = settings.replace(max_quarantine_fraction_error=0.05)
    for i in range(3):
        validate_shard(strict, WINDOW, i, 3, now=NOW)
    with pytest.raises(ValidationFailed, match="of rows quarantined"):
        merge(strict, WINDOW, 3)
    assert Lake.from_settings(settings).read_manifest("posts_clean", WINDOW.ds) is None


def test_shard_count_follows_the_setting_or_the_rows(settings):
    assert shards.shard_count(settings.replace(validate_shards=4), 10) == 4
    auto = settings.replace(validate_shards=0, validate_shard_rows=100, validate_max_shards=8)
    assert [shards.shard_count(auto, r) for r in (0, 1, 100, 101, 799, 10**6)] == [
        1,
        1,
        1,
        2,
        8,
        8,
    ]


def test_the_unsharded_step_still_runs_alone(settings):
    write_raw(settings, raw_rows(20))
    assert etl.clean(settings, WINDOW, now=NOW)["rows_in"] == len(raw_rows(20))


def test_an_empty_day_shards_and_merges(settings):
    write_raw(settings, [])
    merged = run_sharded(settings, 2)
    assert (merged["rows_in"], merged["clean"], merged["quarantined"]) == (0, 0, 0)
    assert reconcile(settings, WINDOW)["rows_in"] == 0


def test_a_range_read_returns_its_rows_in_bounded_batches(settings):
    write_raw(settings, raw_rows(40))
    lake = Lake.from_settings(settings)
    files = lake.partition_files(DATASET_RAW, WINDOW.ds)
    batches = list(shards.iter_range(lake, files, 30, 90, 4, columns=["updated_at"]))
    ids = [r["id"] for r in raw_rows(40) if 30 <= r["id"] < 90]
    assert sum(b.num_rows for b in batches) == len(ids)
    assert all(b.num_rows <= 4 for b in batches) and batches[0].column_names == ["updated_at"]
