"""The MySQL source: connection URIs, the `posts` DDL, and the windowed extract.

The extract reads `[start, end)` on `updated_at` in id ranges of bounded size through ConnectorX
(Arrow, no Python rows): a large day streams through memory chunk by chunk. ConnectorX takes
no bind parameters, so values are bound client-side by MySQLdb's own escaping (what
`cursor.execute(sql, args)` does with mysqlclient) and only datetimes and integers are accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa

log = logging.getLogger(__name__)

POSTS_COLUMNS = (
    "id",
    "author_id",
    "caption",
    "image_uri",
    "hearts",
    "comment_count",
    "created_at",
    "updated_at",
)

RAW_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("author_id", pa.int64()),
        ("caption", pa.large_string()),
        ("image_uri", pa.large_string()),
        ("hearts", pa.int64()),
        ("comment_count", pa.int64()),
        ("created_at", pa.timestamp("us")),
        ("updated_at", pa.timestamp("us")),
    ]
)


class SourceError(RuntimeError):
    """The source database is unreachable or misconfigured; the message says how to fix it."""


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, uri: str) -> MySQLTarget:
        parts = urlsplit(uri)
        if parts.scheme not in {"mysql", "mariadb", "mysql+mysqldb", "mysql+pymysql"}:
            raise SourceError(
                f"POSTFLOW_MYSQL_URI must look like mysql://user:pass@host:3306/db, got scheme "
                f"{parts.scheme!r}"
            )
        database = parts.path.lstrip("/")
        if not database:
            raise SourceError("POSTFLOW_MYSQL_URI names no database (mysql://user@host:3306/DB)")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    @classmethod
    def from_airflow_connection(cls, conn: Any) -> MySQLTarget:
        """From an Airflow Connection (duck-typed: host, port, login, password, schema)."""
        return cls(
            host=conn.host or "127.0.0.1",
            port=int(conn.port or 3306),
            user=conn.login or "root",
            password=conn.password or "",
            database=conn.schema or "postflow",
        )

    def uri(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database}"

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    def connect(self, database: bool = True, retries: int = 3):
        """A MySQLdb connection, retrying transient failures with backoff."""
        import MySQLdb

        kwargs = dict(
            host=self.host,
            port=self.port,
            user=self.user,
            passwd=self.password,
            charset="utf8mb4",
            connect_timeout=10,
        )
        if database:
            kwargs["database"] = self.database
        return with_retries(
            lambda: MySQLdb.connect(**kwargs),
            retries=retries,
            what=f"connect to MySQL {self.describe()}",
        )


TRANSIENT_MYSQL_CODES = {1040, 1205, 1213, 2002, 2003, 2006, 2013, 2055}


def with_retries(fn, retries: int = 3, what: str = "operation", base_delay: float = 0.5):
    """Call `fn`, retrying transient MySQL errors with backoff; a clear error at the end."""
    import MySQLdb

    for attempt in range(retries + 1):
        try:
            return fn()
        except MySQLdb.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            if code in {1044, 1045, 1049}:  # access denied, unknown database: not transient
                raise SourceError(f"cannot {what}: {exc.args[-1]}") from exc
            if code not in TRANSIENT_MYSQL_CODES or attempt == retries:
                raise SourceError(
                    f"cannot {what}: {exc.args[-1]} (MySQL error {code}). Is the server "
                    "running? Point postflow at it with POSTFLOW_MYSQL_URI="
                    "mysql://user:pass@host:3306/db or the Airflow connection `posts_mysql`."
                ) from exc
            delay = base_delay * 2**attempt
            log.warning(
                "%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, retries, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def posts_ddl() -> str:
    return resources.files("ml").joinpath("sql/posts.sql").read_text()


def create_schema(target: MySQLTarget) -> None:
    """Create the database (if allowed) and the posts table."""
    conn = target.connect(database=False)
    try:
        cur = conn.cursor()
        cur.execute(
            f"CREATE DATABASE IF NOT EXISTS `{target.database}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        cur.execute(f"USE `{target.database}`")
        cur.execute(posts_ddl())
        conn.commit()
    finally:
        conn.close()


def bind(sql: str, params: tuple[Any, ...]) -> str:
    """Bind datetimes and integers into `sql` with MySQLdb's escaping (`%s` placeholders)."""
    import MySQLdb.converters
    from MySQLdb._mysql import escape

    conv = MySQLdb.converters.conversions
    literals = []
    for p in params:
        if isinstance(p, bool) or not isinstance(p, (int, datetime)):
            raise TypeError(f"only int and datetime parameters are bound here, got {type(p)}")
        lit = escape(p, conv)
        literals.append(lit.decode() if isinstance(lit, bytes) else lit)
    return sql % tuple(literals)


def naive_utc(ts: datetime) -> datetime:
    """MySQL DATETIME holds naive UTC in this table; accept aware datetimes too."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def count_posts(target: MySQLTarget) -> int:
    """Rows in `posts` (seeding decides on it: only an empty table gets demo posts)."""
    conn = target.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM posts")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


@dataclass
class WindowStats:
    rows: int
    min_id: int | None
    max_id: int | None


def window_stats(target: MySQLTarget, start: datetime, end: datetime) -> WindowStats:
    conn = target.connect()
    try:
        cur = conn.cursor()
        with_retries(
            lambda: cur.execute(
                "SELECT COUNT(*), MIN(id), MAX(id) FROM posts "
                "WHERE updated_at >= %s AND updated_at < %s",
                (naive_utc(start), naive_utc(end)),
            ),
            what="count the posts of the window",
        )
        rows, lo, hi = cur.fetchone()
    finally:
        conn.close()
    return WindowStats(int(rows), lo, hi)


def extract_window(
    target: MySQLTarget,
    start: datetime,
    end: datetime,
    chunk_rows: int = 250_000,
    parallel: int = 2,
) -> Iterator[pa.Table]:
    """Yield the posts with `start <= updated_at < end` as Arrow tables of bounded size.

    Chunks are id ranges sized from the window's id density, so memory stays near `chunk_rows`
    rows whatever the day's volume; each chunk is read over `parallel` connections. Each row is
    yielded exactly once.
    """
    import connectorx as cx

    start, end = naive_utc(start), naive_utc(end)
    stats = window_stats(target, start, end)
    if stats.rows == 0:
        return
    span = stats.max_id - stats.min_id + 1
    n_chunks = max(1, -(-stats.rows // chunk_rows))
    step = max(1, -(-span // n_chunks))
    cols = ", ".join(POSTS_COLUMNS)
    uri = target.uri()
    lo = stats.min_id
    while lo <= stats.max_id:
        hi = lo + step
        # ConnectorX reads a list of queries on parallel connections: split each chunk.
        sub = max(1, -(-step // max(1, parallel)))
        queries = [
            bind(
                f"SELECT {cols} FROM posts WHERE updated_at >= %s AND updated_at < %s "
                "AND id >= %s AND id < %s",
                (start, end, a, min(a + sub, hi)),
            )
            for a in range(lo, hi, sub)
        ]
        table = with_retries(
            lambda queries=queries: _read_arrow(cx, uri, queries),
            what=f"extract ids [{lo}, {hi})",
        )
        yield conform(table)
        lo = hi


def _read_arrow(cx, uri: str, sql: str | list[str]) -> pa.Table:
    try:
        return cx.read_sql(uri, sql, return_type="arrow")
    except RuntimeError as exc:  # ConnectorX wraps driver errors in RuntimeError
        import MySQLdb

        raise MySQLdb.OperationalError(2013, str(exc)) from exc


def conform(table: pa.Table) -> pa.Table:
    """Cast whatever the driver returned to the raw schema (types differ by driver/version)."""
    cols = []
    for f in RAW_SCHEMA:
        col = table.column(f.name)
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC")).cast(pa.timestamp("us"))
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=RAW_SCHEMA)
