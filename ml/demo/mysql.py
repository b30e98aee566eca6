"""The demo posts' rows in MySQL: the table made ready, and its state at the end of a window day
upserted (`ml.demo.posts` draws the posts; a post that grows has two snapshots, and a day's
extract must see the snapshot of that day, so the demo moves the table forward day by day)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ml.demo.photos import DemoDataError
from ml.ingest.source import MySQLTarget, SourceError, create_schema, with_retries
from ml.lake.schema import POSTS_COLUMNS
from ml.progress import Progress

INSERT_BATCH = 5_000
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000


def _to_dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


# -- the table -------------------------------------------------------------------------------------


def prepare_table(target: MySQLTarget, n: int, replace: bool, first_id: int | None) -> int:
    """Create the table; truncate it with `replace`; return the first id to use."""
    create_schema(target)
    conn = target.connect()
    try:
        cur = conn.cursor()
        if replace:
            cur.execute("TRUNCATE TABLE posts")
            conn.commit()
        if first_id is None:
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM posts")
            first_id = int(cur.fetchone()[0]) + 1
        cur.execute(
            "SELECT COUNT(*) FROM posts WHERE id >= %s AND id < %s", (first_id, first_id + n)
        )
        taken = int(cur.fetchone()[0])
    finally:
        conn.close()
    if taken:
        raise DemoDataError(
            f"{taken} posts with ids in [{first_id}, {first_id + n}) already exist in "
            f"{target.describe()}: pass --replace to start over, or another --first-id"
        )
    return first_id


def state_as_of(posts: Any, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows the table holds at the end of window day `day` (0-based): their indexes, and
    the updated_at and comment_count of each one's latest snapshot by then."""
    final = (posts.updated_us - posts.start_us) // _DAY_US <= day
    seen = final | ((posts.first_us - posts.start_us) // _DAY_US <= day)
    rows = np.flatnonzero(seen)
    updated = np.where(final, posts.updated_us, posts.first_us)[rows]
    return rows, updated, np.where(final, posts.comments, posts.first_comments)[rows]


def insert_posts(target: MySQLTarget, posts: Any, day: int, batch: int = INSERT_BATCH) -> None:
    """Upsert the table's state at the end of window day `day` (`state_as_of`): executemany in
    batches (mysqlclient sends one multi-row INSERT per batch), one commit."""
    cols, marks = ", ".join(POSTS_COLUMNS), ", ".join(["%s"] * len(POSTS_COLUMNS))
    sql = (
        f"INSERT INTO posts ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE "
        "comment_count = VALUES(comment_count), updated_at = VALUES(updated_at)"
    )
    idx, updated, counts = state_as_of(posts, day)
    n = len(idx)
    progress = Progress("rows", n)
    conn = target.connect()
    try:
        cur = conn.cursor()
        for lo in range(0, n, batch):
            rows = [
                (int(posts.ids[i]), int(posts.author[i]), posts.captions[i], posts.uris[i],
                 int(posts.hearts[i]), int(counts[k]), _to_dt(posts.created_us[i]),
                 _to_dt(updated[k]))
                for k, i in enumerate(idx[lo : lo + batch])
            ]  # fmt: skip
            with_retries(lambda rows=rows: cur.executemany(sql, rows), what="insert demo posts")
            progress.add(len(rows))
        conn.commit()
        progress.add(0, force=n >= 5_000)
    finally:
        conn.close()


def insert_state(target: MySQLTarget, p: Any, day: int) -> None:
    """`insert_posts`, its MySQL errors as SourceError (one line, no traceback)."""
    try:
        insert_posts(target, p, day)
    except SourceError:
        raise
    except Exception as exc:
        import MySQLdb

        if isinstance(exc, MySQLdb.Error):
            raise SourceError(f"cannot insert demo posts into {target.describe()}: {exc}") from exc
        raise
