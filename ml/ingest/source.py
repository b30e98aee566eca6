"""The MySQL source: connection URIs, retries of transient errors, the `posts` DDL (the app's
table as the demo models it) and the SELECT-only reader account. The windowed read is
`ml.ingest.extract`. ConnectorX takes no bind parameters, so values are bound client-side by
MySQLdb's own escaping (`bind`: what `cursor.execute(sql, args)` does with mysqlclient) and only
datetimes and integers are accepted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger(__name__)


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
            if code not in TRANSIENT_MYSQL_CODES:  # the server answered: it is running
                raise SourceError(f"cannot {what}: {exc.args[-1]} (MySQL error {code})") from exc
            if attempt == retries:
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
    return resources.files("ml.ingest").joinpath("sql/posts.sql").read_text()


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


def create_reader_account(
    admin: MySQLTarget,
    user: str,
    password: str,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> MySQLTarget:
    """The pipeline's account: SELECT on `posts` of `admin.database`, nothing else.

    For each of `hosts` (account hosts: "127.0.0.1", "localhost", "%" for any host) the account
    `user`@host is created when missing and its password set to `password` either way, so a
    second call only changes the password. `admin` may create users and grant. User, host and
    password go into the SQL as literals escaped by the connection (no parameters: MySQLdb
    %-formats a parametrised query and chokes on a '%' host). Returns the reader's target.
    """
    conn = admin.connect()
    try:

        def literal(value: str) -> str:
            return conn.literal(value).decode(conn.encoding)

        table = "`" + admin.database.replace("`", "``") + "`.`posts`"
        cur = conn.cursor()
        for host in hosts:
            account, pw = f"{literal(user)}@{literal(host)}", literal(password)
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {pw}")
            cur.execute(f"ALTER USER {account} IDENTIFIED BY {pw}")
            cur.execute(f"GRANT SELECT ON {table} TO {account}")
        conn.commit()
    finally:
        conn.close()
    return MySQLTarget(admin.host, admin.port, user, password, admin.database)
