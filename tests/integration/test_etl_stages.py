"""The ETL stages against real MariaDB and a real S3 endpoint, with small hand-made rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from ml.config import ConfigError, Settings
from ml.ingest.etl import ReconciliationError, Window, clean, extract, reconcile, run_etl
from ml.ingest.extract import choose_plan, extract_window
from ml.lake.partitions import Lake
from ml.lake.schema import RAW_SCHEMA
from tests.conftest import jpeg

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAY = datetime(2026, 11, 20, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))
COLS = "id, author_id, caption, image_uri, hearts, comment_count, created_at, updated_at"


def naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def settings(stage_settings) -> Settings:
    return stage_settings(extract_chunk_rows=3)  # several chunks on tiny data


def insert(db, rows: list[tuple]) -> None:
    db.execute(f"INSERT INTO posts ({COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", rows, many=True)


def row(i: int, updated: datetime, **kw) -> tuple:
    d = dict(
        id=i,
        author_id=7,
        caption=f"sunset\tat  the beach #{i}",
        image_uri=f"{(i - 1) % 7 + 1}.jpg",
        hearts=5,
        comment_count=12,
        created=updated - timedelta(minutes=5),
        updated=updated,
    )
    d.update(kw)
    return (
        d["id"],
        d["author_id"],
        d["caption"],
        d["image_uri"],
        d["hearts"],
        d["comment_count"],
        naive(d["created"]),
        naive(d["updated"]),
    )


def ids_of(lake: Lake, dataset: str, ds=DAY) -> list[int]:
    return sorted(lake.read_partition(dataset, ds, columns=["id"]).column("id").to_pylist())


def test_window_boundaries_start_in_end_out(settings, fresh_mysql_db):
    us = timedelta(microseconds=1)
    insert(
        fresh_mysql_db,
        [
            row(1, WINDOW.start),  # exactly at start: in
            row(2, WINDOW.start + timedelta(hours=12)),
            row(3, WINDOW.end - us),  # last microsecond: in
            row(4, WINDOW.end),  # exactly at end: out (next day's)
            row(5, WINDOW.start - us),  # just before: out
        ],
    )
    summary = run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    lake = Lake.from_settings(settings)
    assert ids_of(lake, "posts_raw") == [1, 2, 3]
    assert summary["rows_in"] == 3 and summary["clean"] == 3 and summary["quarantined"] == 0
    assert ids_of(lake, "posts_clean") == [1, 2, 3]


@pytest.mark.parametrize("plan", ["scan", "ranges"])
def test_both_read_plans_yield_each_window_row_once_in_bounded_chunks(fresh_mysql_db, plan):
    us = timedelta(microseconds=1)
    rows, expected = [], []
    for i in range(1, 301):  # ids with gaps; every third row falls outside the window
        pid = i * 7 + (i % 5)
        if i % 3 == 0:
            updated = WINDOW.end + timedelta(minutes=i) if i % 2 else WINDOW.start - us
        else:
            updated = WINDOW.start + timedelta(seconds=i * 97) if i > 2 else WINDOW.start
            expected.append(pid)
        rows.append(row(pid, updated))
    rows.append(row(5000, WINDOW.end - us))  # the last microsecond, alone at the far end
    expected.append(5000)
    insert(fresh_mysql_db, rows)
    chunks = list(
        extract_window(
            fresh_mysql_db.reader, WINDOW.start, WINDOW.end, plan, chunk_rows=12, parallel=3
        )
    )
    ids = [i for c in chunks for i in c.column("id").to_pylist()]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert len(chunks) >= len(expected) // 12
    if plan == "scan":  # pages: at most chunk_rows // parallel rows per stripe
        assert max(c.num_rows for c in chunks) <= 12
    assert all(c.schema == RAW_SCHEMA for c in chunks)


def test_the_plan_follows_how_much_of_the_table_lies_outside_the_window(settings, fresh_mysql_db):
    month = [  # one post an hour for 30 days
        row(i, DAY - timedelta(days=15) + timedelta(hours=i)) for i in range(1, 30 * 24 + 1)
    ]
    insert(fresh_mysql_db, month)
    fresh_mysql_db.execute("ANALYZE TABLE posts")
    reader = fresh_mysql_db.reader
    assert choose_plan(reader, WINDOW.start, WINDOW.start + timedelta(hours=2)) == "ranges"
    assert choose_plan(reader, DAY - timedelta(days=30), DAY + timedelta(days=30)) == "scan"
    assert choose_plan(reader, DAY - timedelta(days=15), DAY) == "ranges"  # half outside
    summary = extract(settings, WINDOW)
    assert summary["rows"] == 24 and summary["plan"] in {"scan", "ranges"}
    forced = extract(settings.replace(extract_plan="ranges"), WINDOW)
    assert (forced["rows"], forced["plan"]) == (24, "ranges")
    with pytest.raises(ConfigError, match="POSTFLOW_EXTRACT_PLAN='fastest'"):
        extract(settings.replace(extract_plan="fastest"), WINDOW)


def test_clean_partition_is_sanitised_and_typed(settings, fresh_mysql_db):
    insert(
        fresh_mysql_db, [row(1, DAY + timedelta(hours=1), caption="  golden\t\thour \x07 ☀️ 夕日  ")]
    )
    run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    t = Lake.from_settings(settings).read_partition("posts_clean", DAY).to_pylist()
    assert t[0]["caption"] == "golden hour ☀️ 夕日"
    assert (t[0]["image_width"], t[0]["image_height"], t[0]["image_format"]) == (64, 48, "JPEG")
    assert t[0]["exif_orientation"] == 1


def test_every_row_lands_once_with_a_reason(settings, fresh_mysql_db, images):
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_bytes(b"<html>not a photo</html>")
    good = jpeg()
    (images / "trunc.jpg").write_bytes(good[: len(good) // 2])
    t = DAY + timedelta(hours=3)
    insert(
        fresh_mysql_db,
        [
            row(1, t),
            row(2, t, hearts=-1),
            row(3, t, caption=None),
            row(4, t, caption=" \t\x00 "),
            row(5, t, image_uri="missing.jpg"),
            row(6, t, image_uri="empty.jpg"),
            row(7, t, image_uri="text.jpg"),
            row(8, t, image_uri="trunc.jpg"),
            row(9, t, image_uri="http://example.com/a.jpg"),
            row(10, t, created=datetime(2099, 1, 1, tzinfo=UTC)),
            row(11, t, hearts=-5, image_uri="missing.jpg"),  # two problems: the count wins
            row(12, t, hearts=0),  # no hearts is fine for data quality (training filters it)
        ],
    )
    summary = run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    lake = Lake.from_settings(settings)
    q = {r["id"]: r for r in lake.read_partition("quarantine", DAY).to_pylist()}
    assert {i: r["reason"] for i, r in q.items()} == {
        2: "count_negative",
        5: "image_missing",
        6: "image_empty",
        7: "image_not_an_image",
        8: "image_corrupt",
        9: "image_uri_invalid",
        10: "timestamp_in_future",
        11: "count_negative",
    }
    assert all(r["message"] for r in q.values())
    assert q[2]["caption"] == "sunset\tat  the beach #2", "quarantine keeps the original row"
    assert ids_of(lake, "posts_clean") == [1, 3, 4, 12]  # no caption is a valid post
    assert summary["rows_in"] == 12 and summary["clean"] + summary["quarantined"] == 12
    report = json.loads(
        lake.read_artifact(
            "posts_clean",
            DAY,
            Lake.from_settings(settings).read_manifest("posts_clean", DAY)["artifacts"][0],
        )
    )
    assert report["status"] == "ok" and report["chunks"], "the GX result is kept with the partition"


def test_rerun_and_overlapping_backfill_are_idempotent(settings, fresh_mysql_db):
    days = [DAY + timedelta(days=k) for k in range(3)]
    insert(
        fresh_mysql_db,
        [row(10 * k + j, d + timedelta(hours=j)) for k, d in enumerate(days) for j in range(1, 4)],
    )
    lake = Lake.from_settings(settings)
    now = DAY + timedelta(days=10)
    for d in days[:2]:
        run_etl(settings, Window(d, d + timedelta(days=1)), now=now)
    first = lake.read_partition("posts_clean", days[1]).sort_by("id")
    for d in days[1:]:  # overlapping backfill: day 2 again, then day 3
        run_etl(settings, Window(d, d + timedelta(days=1)), now=now)
    run_etl(settings, Window(days[1], days[1] + timedelta(days=1)), now=now)
    again = lake.read_partition("posts_clean", days[1]).sort_by("id")
    assert again.equals(first)
    assert ids_of(lake, "posts_clean", days[1]) == [11, 12, 13]
    part = Path(settings.lake) / "posts_clean" / f"ds={days[1].date()}"
    assert len(list(part.glob("*.parquet"))) == 1, "old versions are removed after commit"
    assert lake.partitions("posts_clean") == [str(d.date()) for d in days]


def test_reconcile_fails_loudly_when_a_row_is_lost(settings, fresh_mysql_db):
    insert(fresh_mysql_db, [row(i, DAY + timedelta(hours=i)) for i in range(1, 5)])
    extract(settings, WINDOW)
    clean(settings, WINDOW, now=DAY + timedelta(days=2))
    lake = Lake.from_settings(settings)
    table = lake.read_partition("posts_clean", DAY)
    with lake.writer("posts_clean", DAY, table.schema) as w:  # a buggy writer drops one row
        w.write(table.slice(1))
        w.meta["raw_run_id"] = lake.read_manifest("posts_raw", DAY)["run_id"]
    with pytest.raises(ReconciliationError, match="ids lost"):
        reconcile(settings, WINDOW)


def test_reconcile_refuses_partitions_of_an_older_extract(settings, fresh_mysql_db):
    insert(fresh_mysql_db, [row(1, DAY + timedelta(hours=1))])
    run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    extract(settings, WINDOW)  # re-extracted, not re-validated
    with pytest.raises(ReconciliationError, match="re-run the validate step"):
        reconcile(settings, WINDOW)


def test_reader_account_cannot_write(fresh_mysql_db):
    import MySQLdb

    conn = fresh_mysql_db.reader.connect()
    with pytest.raises(MySQLdb.OperationalError, match="command denied"):
        conn.cursor().execute("DELETE FROM posts")
    conn.close()


def assert_select_only(reader, rows: int) -> None:
    """`reader` (a MySQLTarget) logs in, reads posts, and may change nothing."""
    import MySQLdb

    conn = reader.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM posts")
        assert cur.fetchone()[0] == rows
        for sql in (
            f"INSERT INTO posts ({COLS}) SELECT {COLS} FROM posts",
            "UPDATE posts SET hearts = hearts + 1",
            "DELETE FROM posts",
            "CREATE TABLE sneaky (id INT)",
        ):
            with pytest.raises(MySQLdb.OperationalError, match="command denied"):
                cur.execute(sql)
    finally:
        conn.close()


def drop_users(db, user: str, hosts: tuple[str, ...]) -> None:
    conn = db.admin.connect()
    try:
        for host in hosts:
            conn.cursor().execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
    finally:
        conn.close()


@pytest.mark.parametrize("hosts", [("%",), ("127.0.0.1", "localhost")], ids=["any", "loopback"])
def test_create_reader_account_is_select_only(fresh_mysql_db, hosts):
    """The one reader-account SQL (demo, `make up`, compose seed, tests): a '%' host included,
    with quotes and percent signs in the password; a second call only changes the password."""
    from ml.ingest.source import SourceError, create_reader_account

    insert(fresh_mysql_db, [row(1, DAY + timedelta(hours=1))])
    user = f"pf_rd_{uuid.uuid4().hex[:8]}"
    try:
        first = create_reader_account(fresh_mysql_db.admin, user, "o'ld%s%", hosts=hosts)
        assert_select_only(first, rows=1)
        again = create_reader_account(fresh_mysql_db.admin, user, 'n"ew%%\\', hosts=hosts)
        assert (again.user, again.database) == (user, fresh_mysql_db.name)
        assert_select_only(again, rows=1)
        with pytest.raises(SourceError, match="Access denied"):
            first.connect(retries=0)
    finally:
        drop_users(fresh_mysql_db, user, hosts)


def test_compose_seed_grants_select_from_any_host(fresh_mysql_db, monkeypatch):
    """deploy/compose/seed_mysql.py on a table that has posts: seeds nothing, and creates the
    reader as '<user>'@'%' (MySQLdb once refused that host in a parametrised query)."""
    import runpy
    from dataclasses import replace

    insert(fresh_mysql_db, [row(1, DAY + timedelta(hours=1))])
    user, password = f"pf_rd_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", fresh_mysql_db.admin.uri())
    monkeypatch.setenv("POSTFLOW_READER_USER", user)
    monkeypatch.setenv("POSTFLOW_READER_PASSWORD", password)
    seed = runpy.run_path(str(REPO / "deploy" / "compose" / "seed_mysql.py"), run_name="seed")
    try:
        assert seed["main"]() == 0
        assert_select_only(replace(fresh_mysql_db.admin, user=user, password=password), rows=1)
    finally:
        drop_users(fresh_mysql_db, user, ("%",))


def test_lake_and_images_on_s3(tmp_path, fresh_mysql_db, s3_server):
    bucket = s3_server.bucket()
    client = s3_server.client()
    for i in range(1, 4):
        client.put_object(Bucket=bucket, Key=f"photos/{i}.jpg", Body=jpeg((60 * i, 60, 60)))
    t = DAY + timedelta(hours=2)
    insert(
        fresh_mysql_db,
        [
            row(1, t, image_uri="1.jpg"),  # relative to the s3 image root
            row(2, t, image_uri=f"s3://{bucket}/photos/2.jpg"),  # absolute s3 URI
            row(3, t, image_uri=f"s3://{bucket}/photos/nope.jpg"),
        ],
    )
    settings = Settings.load(
        {
            "mysql_uri": fresh_mysql_db.reader.uri(),
            "lake": f"s3://{bucket}/lake",
            "image_root": f"s3://{bucket}/photos",
            "s3_endpoint": s3_server.endpoint,
            "image_workers": 1,
        }
    )
    summary = run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    assert (summary["clean"], summary["quarantined"]) == (2, 1)
    assert summary["clean_uri"] == f"s3://{bucket}/lake/posts_clean/ds=2026-11-20"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/")["Contents"]}
    assert "lake/posts_clean/ds=2026-11-20/_manifest.json" in keys
    assert any(k.startswith("lake/quarantine/ds=2026-11-20/part-") for k in keys)
    lake = Lake.from_settings(settings)
    assert lake.read_partition("quarantine", DAY).column("reason").to_pylist() == ["image_missing"]
    # a rerun replaces, leaving exactly one data file per partition
    run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/posts_clean/")["Contents"]
    ]
    assert len([k for k in keys if k.endswith(".parquet")]) == 1


def run_etl_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml", "etl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_prints_json_summary(settings, fresh_mysql_db):
    insert(fresh_mysql_db, [row(1, DAY + timedelta(hours=1)), row(2, DAY + timedelta(hours=2))])
    env = {
        **os.environ,
        "POSTFLOW_MYSQL_URI": settings.mysql_uri,
        "POSTFLOW_LAKE": settings.lake,
        "POSTFLOW_IMAGE_ROOT": settings.image_root,
    }
    out = run_etl_cli(env, "--start", "2026-11-20", "--end", "2026-11-21")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["ds"], summary["rows_in"], summary["clean"]) == ("2026-11-20", 2, 2)


def test_cli_sharded_day_on_s3(fresh_mysql_db, s3_server):
    """`--step validate --shard i/N` and `--step merge` on an S3 lake (moto): the merge copies
    the staged parts server-side into one manifest per partition and removes the staging."""
    client = s3_server.client()
    bucket = s3_server.bucket()
    client.put_object(Bucket=bucket, Key="photos/1.jpg", Body=jpeg())
    t = DAY + timedelta(hours=3)
    insert(
        fresh_mysql_db,
        [row(i, t, image_uri="1.jpg" if i % 4 else "nope.jpg") for i in range(1, 13)],
    )
    env = {
        **os.environ,
        "POSTFLOW_CONFIG": "",
        "POSTFLOW_MYSQL_URI": fresh_mysql_db.reader.uri(),
        "POSTFLOW_LAKE": f"s3://{bucket}/lake",
        "POSTFLOW_IMAGE_ROOT": f"s3://{bucket}/photos",
        "POSTFLOW_S3_ENDPOINT": s3_server.endpoint,
        "POSTFLOW_IMAGE_WORKERS": "1",
        "POSTFLOW_EXTRACT_CHUNK_ROWS": "2",
    }
    day = ["--start", "2026-11-20"]
    steps = [
        ["--step", "extract"],
        ["--step", "plan"],
        ["--step", "validate", "--shard", "0/3"],
        ["--step", "validate", "--shard", "2/3"],
        ["--step", "validate", "--shard", "1/3"],
        ["--step", "merge", "--shards", "3"],
        ["--step", "reconcile"],
    ]
    outs = []
    for step in steps:
        out = run_etl_cli(env, *day, *step)
        assert out.returncode == 0, (step, out.stderr)
        outs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert outs[1]["shards"] == 1, "12 rows: one shard by default"
    assert sum(o["rows_in"] for o in outs[2:5]) == 12
    assert (outs[-1]["rows_in"], outs[-1]["clean"], outs[-1]["quarantined"]) == (12, 9, 3)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lake/")["Contents"]}
    staged = [k for k in keys if k.startswith("lake/_staging/") and not k.endswith("/")]
    assert staged == [], "staging removed (folder markers aside)"
    clean_parts = [k for k in keys if k.startswith("lake/posts_clean/") and k.endswith(".parquet")]
    assert len(clean_parts) == 3
    bad = run_etl_cli(env, *day, "--step", "validate", "--shard", "3/3")
    assert bad.returncode == 2 and "0 <= i < N" in bad.stderr


def test_cli_misconfigured_database_is_one_clear_line(tmp_path):
    env = {
        **os.environ,
        "POSTFLOW_MYSQL_URI": "mysql://nobody:wrong@127.0.0.1:1/none",
        "POSTFLOW_LAKE": str(tmp_path / "lake"),
    }
    out = run_etl_cli(env, "--start", "2026-11-20")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "POSTFLOW_MYSQL_URI" in out.stderr and "wrong" not in out.stderr


def test_cli_unsupported_lake_is_one_clear_line(fresh_mysql_db):
    env = {
        **os.environ,
        "POSTFLOW_MYSQL_URI": fresh_mysql_db.reader.uri(),
        "POSTFLOW_LAKE": "ftp://somewhere/lake",
    }
    out = run_etl_cli(env, "--start", "2026-11-20")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unsupported lake root" in out.stderr


def test_raw_schema_roundtrip_of_empty_day(settings):
    summary = run_etl(settings, WINDOW, now=DAY + timedelta(days=2))
    assert (summary["rows_in"], summary["clean"], summary["quarantined"]) == (0, 0, 0)
    empty = Lake.from_settings(settings).read_partition("posts_clean", DAY)
    assert empty.num_rows == 0 and isinstance(empty, pa.Table)
