"""Hostile input through the real extract + clean path (real MariaDB, moto S3): what the app's
users and the app's schema can put in `posts` never reads outside the image roots, never
exhausts memory or hangs, never leaks file bytes into the lake, and never crashes the day."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml.config import Settings
from ml.ingest.etl import ValidationFailed, Window, clean, extract, run_etl
from ml.ingest.source import MySQLTarget, SourceError
from ml.lake.partitions import Lake
from tests import scan
from tests.conftest import REPO, free_port, jpeg
from tests.integration.test_etl_stages import DAY, WINDOW, ids_of, insert, naive, row

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NOW = DAY + timedelta(days=2)
T = DAY + timedelta(hours=3)


@pytest.fixture
def settings(stage_settings) -> Settings:
    return stage_settings()


def outcome(settings: Settings) -> dict[int, tuple[str, str]]:
    """post id -> (reason, message) of the quarantine; clean posts map to ("clean", caption)."""
    lake = Lake.from_settings(settings)
    out = {
        r["id"]: (r["reason"], r["message"])
        for r in lake.read_partition("quarantine", DAY).to_pylist()
    }
    for r in lake.read_partition("posts_clean", DAY).to_pylist():
        out[r["id"]] = ("clean", r["caption"])
    return out


# -- image_uri ----------------------------------------------------------------------------------

# Python's own files (imports, data of installed packages) and the repository's code
CODE_TREES = sorted({Path(p).resolve() for p in (sys.prefix, sys.base_prefix, REPO)})
_watch: dict = {"thread": None, "opened": None}


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _watch["opened"] is not None:
        if threading.get_ident() == _watch["thread"] and isinstance(args[0], str | bytes):
            path = os.fsdecode(args[0])
            _watch["opened"].append(os.path.realpath(path) if os.path.isabs(path) else path)


sys.addaudithook(_audit)  # hooks cannot be removed: it records only inside watch_opens()


@contextmanager
def watch_opens() -> Iterator[list[str]]:
    """Every file this thread opens inside the block (Python's `open` audit event: open(),
    os.open(), io.open; C libraries' own opens are not seen), as real paths, in order."""
    opened: list[str] = []
    _watch.update(thread=threading.get_ident(), opened=opened)
    try:
        yield opened
    finally:
        _watch.update(thread=None, opened=None)


def _allowed(path: str, roots: list[Path]) -> bool:
    """Opening `path` is expected of the validating process: under `roots` (photo roots, the
    lake), Python's or the repository's files, time zone data, or a temporary folder of its
    own (Great Expectations makes one, tempfile.mkdtemp: /tmp/tmpXXXXXXXX, removed again)."""
    if any(_within(path, r) for r in [*roots, *CODE_TREES, "/usr/share/zoneinfo"]):
        return True
    tmp = Path(path)
    return (
        tmp.parent == Path(tempfile.gettempdir()).resolve()
        and tmp.name.startswith("tmp")
        and (tmp.is_dir() or not tmp.exists())
    )


def _within(path: str | Path, root: str | Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == str(
        os.path.realpath(root)
    )


@pytest.mark.timeout(300)
def test_image_uris_outside_the_roots_special_or_huge_files_are_quarantined(
    settings, fresh_mysql_db, images, tmp_path, s3_server
):
    sparse = images / "sparse.jpg"
    with open(sparse, "wb") as fh:  # 3 GB that take no disk: reading it would take 3 GB of RAM
        os.truncate(fh.fileno(), 3 * 1024**3)
    os.mkfifo(images / "fifo.jpg")  # opening it for reading blocks until a writer comes
    (images / "passwd.jpg").symlink_to("/etc/passwd")
    (images / "environ.jpg").symlink_to("/proc/self/environ")
    (tmp_path / "secret.jpg").write_bytes(jpeg())  # a real photo, but outside the root
    extra = tmp_path / "cdn"  # an extra root the operator allows
    extra.mkdir()
    (extra / "x.jpg").write_bytes(jpeg())
    other, allowed = s3_server.bucket(), s3_server.bucket()
    s3 = s3_server.client()
    s3.put_object(Bucket=other, Key="a.jpg", Body=jpeg())
    s3.put_object(Bucket=allowed, Key="a.jpg", Body=jpeg())
    uris = {
        1: "ok.jpg",
        2: "file:///dev/zero",
        3: "sparse.jpg",
        4: "fifo.jpg",
        5: "file:///proc/self/environ",
        6: "file:///etc/passwd",
        7: "passwd.jpg",
        8: "environ.jpg",
        9: "../secret.jpg",
        10: f"file://{tmp_path}/images/../secret.jpg",
        11: f"file://{tmp_path}/secret.jpg",
        12: f"s3://{other}/a.jpg",
        13: f"file://{extra}/x.jpg",
        14: f"s3://{allowed}/a.jpg",
        15: "file:///dev/stdin",
    }
    insert(fresh_mysql_db, [row(i, T, image_uri=u) for i, u in uris.items()])
    settings = settings.replace(
        s3_endpoint=s3_server.endpoint, image_allowed_roots=f"{extra},s3://{allowed}"
    )
    assert settings.workers == 1  # photos are checked in this process, where opens are watched
    with watch_opens() as opened:
        run_etl(settings, WINDOW, now=NOW)
    # what the validating process opened: photos only from the allowed roots, nothing else
    # outside Python's own files, the repository and the lake
    roots = [images, extra, Path(settings.lake)]
    outside = [p for p in opened if not _allowed(p, roots)]
    assert outside == [], f"opened outside the allowed roots: {outside}"
    photos = {p for p in opened if any(_within(p, r) for r in (images, extra))}
    assert photos == {str(images / "ok.jpg"), str(extra / "x.jpg")}, photos
    got = outcome(settings)
    assert {i: r for i, (r, _) in got.items()} == {
        1: "clean",
        2: "image_uri_invalid",
        3: "image_too_large",
        4: "image_uri_invalid",
        5: "image_uri_invalid",
        6: "image_uri_invalid",
        7: "image_uri_invalid",
        8: "image_uri_invalid",
        9: "image_uri_invalid",
        10: "image_uri_invalid",
        11: "image_uri_invalid",
        12: "image_uri_invalid",
        13: "clean",
        14: "clean",
        15: "image_uri_invalid",
    }
    # the lake read as values (Parquet decoded, whatever its codec), not as compressed bytes
    lake = {str(p): p.read_bytes() for p in Path(settings.lake).rglob("*") if p.is_file()}
    assert any(k.endswith(".parquet") for k in lake)
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")[0]
    leaked = scan.leaks({"/etc/passwd": b"root:x:0:0", "environ": environ[:12]}, lake)
    assert leaked == [], f"file bytes leaked into the lake: {leaked}"


# -- the app's index on updated_at ---------------------------------------------------------------


def _window_rows(db) -> list[int]:
    rows = [row(i, DAY + timedelta(hours=i % 24)) for i in range(1, 41)]
    rows += [row(100 + i, DAY - timedelta(days=1, hours=i)) for i in range(1, 21)]  # before
    rows += [row(200 + i, DAY + timedelta(days=1, hours=i)) for i in range(0, 20)]  # after
    insert(db, rows)
    return list(range(1, 41))


@pytest.mark.parametrize("plan", ["auto", "ranges", "scan"])
def test_extract_uses_the_apps_index_under_any_name(settings, fresh_mysql_db, plan):
    fresh_mysql_db.execute("ALTER TABLE posts DROP INDEX idx_posts_updated_at")
    fresh_mysql_db.execute("CREATE INDEX `ix app-upd` ON posts (updated_at)")
    expected = _window_rows(fresh_mysql_db)
    summary = extract(settings.replace(extract_plan=plan), WINDOW)
    assert summary["rows"] == len(expected)
    assert ids_of(Lake.from_settings(settings), "posts_raw") == expected


def test_extract_without_an_index_on_updated_at_warns_once_and_reads_the_window(
    settings, fresh_mysql_db, caplog
):
    fresh_mysql_db.execute("ALTER TABLE posts DROP INDEX idx_posts_updated_at")
    expected = _window_rows(fresh_mysql_db)
    with caplog.at_level(logging.WARNING, logger="ml.ingest.source"):
        first = extract(settings, WINDOW)
        second = extract(settings, WINDOW)
    assert first["rows"] == second["rows"] == len(expected) and first["plan"] == "scan"
    assert ids_of(Lake.from_settings(settings), "posts_raw") == expected
    warnings = [
        r for r in caplog.records if "no index whose first column is updated_at" in r.message
    ]
    assert len(warnings) == 1


def test_an_unreachable_server_still_asks_whether_it_is_running(settings):
    nobody = MySQLTarget("127.0.0.1", free_port(), "root", "", "postflow")
    with pytest.raises(SourceError, match="Is the server running"):
        extract(settings, WINDOW, target=nobody)


# -- reasons that say what is wrong -------------------------------------------------------------


def test_a_post_updated_before_it_was_created_has_inconsistent_timestamps(settings, fresh_mysql_db):
    insert(
        fresh_mysql_db,
        [
            row(1, T, created=T + timedelta(hours=2)),  # both in the past, in the wrong order
            row(2, T, created=datetime(2099, 1, 1, tzinfo=UTC)),  # a clock from the future
            row(3, T, created=T),  # created and updated at once: fine
        ],
    )
    run_etl(settings, WINDOW, now=NOW)
    got = outcome(settings)
    assert got[1][0] == "timestamps_inconsistent" and "created_at" in got[1][1]
    assert got[2][0] == "timestamp_in_future"
    assert got[3][0] == "clean"


# -- values at the limits of their column types ---------------------------------------------------


def test_captions_and_counts_at_the_limits_of_their_types(settings, fresh_mysql_db):
    fresh_mysql_db.execute(
        "ALTER TABLE posts MODIFY hearts BIGINT NULL, MODIFY comment_count BIGINT NULL"
    )
    longest = "é" * 32767 + "a"  # 65,535 bytes of UTF-8: the most a TEXT column holds
    assert len(longest.encode()) == 65535
    emoji = "🌅" * 2200  # 8,800 bytes, 2,200 characters: exactly the limit
    big, small = 2**63 - 1, -(2**63)
    insert(
        fresh_mysql_db,
        [
            row(1, T, caption=longest),
            row(2, T, caption=emoji),
            row(3, T, hearts=big, comment_count=big),
            row(4, T, comment_count=small),
            row(5, T, hearts=-1),
        ],
    )
    run_etl(settings, WINDOW, now=NOW)
    got = outcome(settings)
    assert got[1][0] == "caption_too_long" and "32768 characters" in got[1][1]
    assert got[2] == ("clean", emoji)
    assert got[3][0] == "clean"
    clean = Lake.from_settings(settings).read_partition("posts_clean", DAY).to_pylist()
    assert [(r["hearts"], r["comment_count"]) for r in clean if r["id"] == 3] == [(big, big)]
    assert got[4][0] == got[5][0] == "count_negative"


def test_unsigned_counts_beyond_int64_are_quarantined_not_a_crash(settings, fresh_mysql_db):
    fresh_mysql_db.execute("ALTER TABLE posts MODIFY hearts BIGINT UNSIGNED NULL")
    insert(fresh_mysql_db, [row(1, T, hearts=2**64 - 1), row(2, T, hearts=2**63 - 1)])
    run_etl(settings, WINDOW, now=NOW)
    got = outcome(settings)
    assert got[1][0] == "count_null" and got[2][0] == "clean"


def test_captions_that_are_not_utf8_are_quarantined_not_a_crash(settings, fresh_mysql_db):
    """The app declared its caption column binary and wrote latin1 bytes through a latin1
    connection: the source returns bytes that are not UTF-8."""
    import MySQLdb

    fresh_mysql_db.execute("ALTER TABLE posts MODIFY caption BLOB NULL")
    admin = fresh_mysql_db.admin
    conn = MySQLdb.connect(
        host=admin.host,
        port=admin.port,
        user=admin.user,
        passwd=admin.password,
        database=admin.database,
        charset="latin1",
    )
    try:
        conn.cursor().executemany(
            "INSERT INTO posts (id, caption, image_uri, hearts, comment_count, created_at, "
            "updated_at) VALUES (%s, %s, 'ok.jpg', 1, 1, %s, %s)",
            [
                (1, "café au lait".encode("latin1"), naive(T), naive(T)),
                (2, "café au lait".encode(), naive(T), naive(T)),
            ],
        )
        conn.commit()
    finally:
        conn.close()
    run_etl(settings, WINDOW, now=NOW)
    got = outcome(settings)
    assert got[1][0] == "caption_not_utf8"
    assert got[2] == ("clean", "café au lait")


# -- posts without a caption ---------------------------------------------------------------------


def test_posts_without_a_caption_are_kept_unless_one_is_required(settings, fresh_mysql_db):
    insert(
        fresh_mysql_db,
        [
            row(1, T, caption=None),
            row(2, T, caption=""),
            row(3, T, caption=" \t\x00 "),
            row(4, T, caption="sunset"),
        ],
    )
    run_etl(settings, WINDOW, now=NOW)
    assert outcome(settings) == {
        1: ("clean", ""),
        2: ("clean", ""),
        3: ("clean", ""),
        4: ("clean", "sunset"),
    }
    strict = settings.replace(require_caption=True)
    run_etl(strict, WINDOW, now=NOW)
    assert {i: r for i, (r, _) in outcome(strict).items()} == {
        1: "caption_null",
        2: "caption_empty",
        3: "caption_empty",
        4: "clean",
    }


# -- a day that fails batch validation -----------------------------------------------------------


def test_a_day_failing_batch_validation_commits_nothing(settings, fresh_mysql_db):
    lake = Lake.from_settings(settings)
    insert(fresh_mysql_db, [row(i, T + timedelta(minutes=i)) for i in range(1, 5)])
    run_etl(settings, WINDOW, now=NOW)
    before = lake.read_manifest("posts_clean", DAY)
    # The app then writes a flood of broken rows into the same day: 8 of 12 are bad.
    insert(fresh_mysql_db, [row(i, T, hearts=-1) for i in range(10, 18)])
    strict = settings.replace(max_quarantine_fraction_error=0.5)
    extract(strict, WINDOW)
    with pytest.raises(ValidationFailed, match="66.7% of rows quarantined"):
        clean(strict, WINDOW, now=NOW)
    after = lake.read_manifest("posts_clean", DAY)
    assert after["run_id"] == before["run_id"], "the previous posts_clean is still the one read"
    assert ids_of(lake, "posts_clean") == [1, 2, 3, 4]
    files = sorted(
        p.name for p in (Path(settings.lake) / "posts_clean" / f"ds={DAY.date()}").iterdir()
    )
    assert files == sorted(["_manifest.json", *before["files"], *before["artifacts"]])

    other = Window(DAY + timedelta(days=1), DAY + timedelta(days=2))  # a day never validated
    insert(
        fresh_mysql_db, [row(i, other.start + timedelta(hours=1), hearts=-1) for i in range(30, 33)]
    )
    extract(strict, other)
    with pytest.raises(ValidationFailed):
        clean(strict, other, now=NOW)
    assert lake.read_manifest("posts_clean", other.ds) is None
    assert lake.read_manifest("quarantine", other.ds) is None
