"""`posts_etl` through real Airflow (`dag.test()`) on demo data, with a read-only MySQL account."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from ml.config import Settings
from ml.lake.partitions import Lake
from tests.conftest import demo_days, load_dag, run_posts_etl

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 20)

# demo_data's planted bad kinds → the reason the ETL must record for them
EXPECTED_REASON = {
    "image_corrupt": "image_corrupt",
    "image_truncated": "image_corrupt",
    "image_empty": "image_empty",
    "image_missing": "image_missing",
    "image_not_an_image": "image_not_an_image",
    "image_uri_unsupported": "image_uri_invalid",
    "hearts_negative": "count_negative",
    "comment_count_negative": "count_negative",
    "created_at_future": "timestamp_in_future",
}


@pytest.fixture(scope="module")
def demo(mysql_db, tmp_path_factory):
    from ml.demo.posts import BAD_KINDS

    assert set(BAD_KINDS) == set(EXPECTED_REASON), "every planted kind has an expected reason"
    root = tmp_path_factory.mktemp("demo")
    settings = Settings.load(
        {
            "mysql_uri": mysql_db.admin.uri(),
            "lake": str(root / "lake"),
            "image_root": str(root / "images"),
            "image_workers": 2,
        }
    )
    truth = demo_days(settings, [DAY], posts=400, seed=11)
    return settings, truth


@pytest.fixture
def airflow_env(airflow_db, demo, mysql_db, monkeypatch):
    settings, _ = demo
    monkeypatch.setenv("AIRFLOW_CONN_POSTS_MYSQL", mysql_db.reader.uri())
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", "mysql://wrong@127.0.0.1:1/unused")  # conn wins
    monkeypatch.setenv("POSTFLOW_LAKE", settings.lake)
    monkeypatch.setenv("POSTFLOW_IMAGE_ROOT", settings.image_root)
    monkeypatch.setenv("POSTFLOW_IMAGE_WORKERS", "2")
    return settings


def run_day(day: date):
    # A manual run with logical date D+1 reads the complete day D.
    return run_posts_etl(day, load_dag("posts_etl", all_dags=True, check_import_errors=False))


def _source_ids(db, day: date) -> list[int]:
    """Ids of the posts MySQL holds for `day` (updated_at in the day, UTC), read as admin."""
    conn = db.admin.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT id FROM posts WHERE updated_at >= %s AND updated_at < %s",
            (day, day + timedelta(days=1)),
        )
        return [int(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()


def test_posts_etl_day_of_demo_data(airflow_env, demo, mysql_db):
    settings, truth = demo
    run = run_day(DAY)
    assert str(run.state) == "success"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    tasks = ["extract_posts", "plan_shards", "validate_posts", "merge_posts", "reconcile_posts"]
    assert states == dict.fromkeys(tasks, "success")

    lake = Lake.from_settings(settings)
    clean = lake.read_partition("posts_clean", DAY).to_pylist()
    quarantine = lake.read_partition("quarantine", DAY).to_pylist()
    clean_ids = {r["id"] for r in clean}
    reasons = {r["id"]: r["reason"] for r in quarantine}
    # every post of the day in MySQL (read from the source, not from the lake) is in exactly
    # one of posts_clean and quarantine, once
    source_ids = _source_ids(mysql_db, DAY)
    assert len(source_ids) > 300, len(source_ids)
    assert sorted([*clean_ids, *reasons]) == sorted(source_ids), "posts lost or added"
    assert len(clean_ids) == len(clean) and len(reasons) == len(quarantine), "a post twice"
    raw_ids = lake.read_partition("posts_raw", DAY, columns=["id"]).column("id").to_pylist()
    assert sorted(raw_ids) == sorted(source_ids)

    bad_today = {int(i): k for i, k in truth["bad"].items() if int(i) in source_ids}
    assert set(bad_today.values()) == set(EXPECTED_REASON), "every bad kind occurs on this day"
    for post_id, kind in bad_today.items():
        assert reasons.get(post_id) == EXPECTED_REASON[kind], (post_id, kind, reasons.get(post_id))
    assert set(reasons) == set(bad_today), "only planted bad rows are quarantined"

    unusual_today = {int(i): k for i, k in truth["unusual_valid"].items() if int(i) in source_ids}
    assert unusual_today, "unusual but valid photos are in the day"
    assert set(unusual_today) <= clean_ids, {k: reasons.get(i) for i, k in unusual_today.items()}
    for r in clean:
        assert r["caption"] == r["caption"].strip() and "\t" not in r["caption"]
        assert "  " not in r["caption"]


def test_posts_etl_emits_posts_clean_asset_event(airflow_env, demo):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    run = run_day(DAY - timedelta(days=1))
    assert str(run.state) == "success"
    with create_session() as session:
        events = [
            e
            for e in session.query(AssetEvent).all()
            if e.source_dag_id == "posts_etl" and e.source_run_id == run.run_id
        ]
        assert [e.source_task_id for e in events] == ["reconcile_posts"]
        assert events[0].asset.name == "posts_clean"


def test_a_day_sharded_through_airflow_is_the_unsharded_day(airflow_env, demo, monkeypatch):
    """posts_etl with 3 validate shards (mapped tasks), then the unsharded step on the same
    extract: the same posts_clean rows and the same quarantine reasons, post for post."""
    from ml.ingest.etl import Window, clean

    settings, _ = demo
    monkeypatch.setenv("POSTFLOW_VALIDATE_SHARDS", "3")
    run = run_day(DAY)
    assert str(run.state) == "success"
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "validate_posts"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1, 2]
    assert {str(ti.state) for ti in mapped} == {"success"}

    lake = Lake.from_settings(settings)

    def day() -> tuple[list, list]:
        clean_rows = sorted(lake.read_partition("posts_clean", DAY).to_pylist(), key=str)
        quarantine = lake.read_partition("quarantine", DAY).to_pylist()
        # a future timestamp's message quotes the run's clock: compared without it
        return clean_rows, sorted(
            (r["id"], r["reason"], "" if "future" in r["reason"] else r["message"])
            for r in quarantine
        )

    sharded = day()
    manifest = lake.read_manifest("posts_clean", DAY)
    assert manifest["shards"] == 3 and len(manifest["files"]) >= 2
    start = datetime.combine(DAY, datetime.min.time(), UTC)
    clean(settings, Window(start, start + timedelta(days=1)))  # unsharded, same extract
    assert "shards" not in lake.read_manifest("posts_clean", DAY)
    unsharded = day()
    assert sharded == unsharded
    assert len(sharded[0]) > 100 and {r for _, r, _ in sharded[1]} >= {"image_corrupt"}


def test_a_failed_shard_retries_alone_through_airflow(airflow_env, demo, monkeypatch):
    """Shard 1 of 3 dies on its first try (a lost worker): Airflow retries that map index
    alone, the merge waits for it, and the day is whole."""
    from ml.ingest import shards

    original, tries = shards.clean_into, []

    def dies_once(batches, superseded, window, now, settings, clean_w, *rest):
        tries.append(clean_w.dataset)
        if "/shard=1/" in clean_w.dataset and sum("/shard=1/" in t for t in tries) == 1:
            raise RuntimeError("worker lost")
        return original(batches, superseded, window, now, settings, clean_w, *rest)

    monkeypatch.setattr(shards, "clean_into", dies_once)
    monkeypatch.setenv("POSTFLOW_VALIDATE_SHARDS", "3")
    dag = load_dag("posts_etl", all_dags=True, check_import_errors=False)
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
        task.retry_exponential_backoff = False
    run = run_posts_etl(DAY, dag)
    assert str(run.state) == "success"
    tries_of = {
        (ti.task_id, ti.map_index): ti.try_number
        for ti in run.get_task_instances()
        if ti.task_id == "validate_posts"
    }
    assert tries_of == {
        ("validate_posts", 0): 1,
        ("validate_posts", 1): 2,
        ("validate_posts", 2): 1,
    }
    assert sum("/shard=0/" in t for t in tries) == 1, "shard 0 was not redone"
    settings, _ = demo
    result = reconcile_of(settings)
    assert result["rows_in"] == result["clean"] + result["quarantined"] > 0


def reconcile_of(settings):
    from ml.ingest.etl import Window, reconcile

    start = datetime.combine(DAY, datetime.min.time(), UTC)
    return reconcile(settings, Window(start, start + timedelta(days=1)))
