"""The windowed extract: `[start, end)` on `updated_at`, read in id ranges of bounded size through
ConnectorX (Arrow, no Python rows), so a large day streams through memory chunk by chunk. The
plan (`choose_plan`) picks a primary-key scan or id ranges from an index-only count; chunks are
conformed to `RAW_SCHEMA`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from ml.ingest.source import MySQLTarget, bind, naive_utc, with_retries
from ml.lake.schema import POSTS_COLUMNS, RAW_SCHEMA

log = logging.getLogger(__name__)


@dataclass
class WindowStats:
    rows: int
    min_id: int | None
    max_id: int | None

    def merge(self, other: WindowStats) -> WindowStats:
        ids = [i for i in (self.min_id, self.max_id, other.min_id, other.max_id) if i is not None]
        return WindowStats(
            self.rows + other.rows, min(ids) if ids else None, max(ids) if ids else None
        )


def time_slices(start: datetime, end: datetime, n: int) -> list[tuple[datetime, datetime]]:
    """`[start, end)` cut into `n` contiguous half-open slices (fewer when too short)."""
    n = max(1, min(n, int((end - start).total_seconds() * 1_000_000)))
    cuts = [start + (end - start) * i / n for i in range(n)] + [end]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if a < b]


def window_stats(
    target: MySQLTarget, start: datetime, end: datetime, parallel: int = 1
) -> WindowStats:
    """Rows and id bounds of the window: an index-only scan of the index on `updated_at`.

    On a busy day this scan is a fifth of the raw client's read time, so it is cut into
    `parallel` time slices scanned over as many connections at once (MySQLdb releases the GIL).
    """
    start, end = naive_utc(start), naive_utc(end)
    slices = time_slices(start, end, parallel)

    def scan(bounds: tuple[datetime, datetime]) -> WindowStats:
        conn = target.connect()
        try:
            cur = conn.cursor()
            with_retries(
                lambda: cur.execute(
                    "SELECT COUNT(*), MIN(id), MAX(id) FROM posts "
                    "WHERE updated_at >= %s AND updated_at < %s",
                    bounds,
                ),
                what="count the posts of the window",
            )
            rows, lo, hi = cur.fetchone()
        finally:
            conn.close()
        return WindowStats(int(rows), lo, hi)

    if len(slices) == 1:
        return scan(slices[0])
    with ThreadPoolExecutor(len(slices)) as pool:
        parts = list(pool.map(scan, slices))
    total = WindowStats(0, None, None)
    for part in parts:
        total = total.merge(part)
    return total


EXTRACT_PLANS = ("auto", "scan", "ranges")


# `scan` reads the whole table; it wins only when little of the table lies outside the window.
SCAN_MAX_OUTSIDE = 0.1


def updated_at_index(cur: Any) -> str | None:
    """The name of an index of `posts` whose first column is `updated_at`, from the catalog.

    The table is the app's: its index may have any name, or not exist. Prefers the name our DDL
    gives, then the one with the fewest columns (the cheapest to scan).
    """
    with_retries(
        lambda: cur.execute(
            "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = 'posts' AND INDEX_NAME IN (SELECT INDEX_NAME FROM "
            "information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = "
            "'posts' AND SEQ_IN_INDEX = 1 AND COLUMN_NAME = 'updated_at') GROUP BY INDEX_NAME "
            "ORDER BY INDEX_NAME <> 'idx_posts_updated_at', COUNT(*), INDEX_NAME LIMIT 1"
        ),
        what="find the index on posts.updated_at",
    )
    row = cur.fetchone()
    if row is None:
        return None
    name = row[0]
    return name.decode() if isinstance(name, bytes) else str(name)


_WARNED_NO_INDEX: set[str] = set()  # sources already warned about, once per process


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def choose_plan(target: MySQLTarget, start: datetime, end: datetime) -> str:
    """`scan` when at most ~10% of the table lies outside the window, else `ranges`.

    `scan` reads the whole table in primary-key order with no counting pass; `ranges` pays an
    index-only count of the window, then reads only the window's id span. With the window half
    the table and its ids together (new posts), `ranges` took 2.2 s and `scan` 3.2 s; with it
    all of the table, `scan` is the faster by that count. What lies *outside* the window is
    estimated by index dives on the index on `updated_at` (`EXPLAIN`; found in the catalog
    whatever its name), which are accurate for small ranges; an estimate of the window itself is
    not (InnoDB caps it at half the table). Without such an index: `scan`, with a warning once.
    Both plans read exactly the same rows.
    """
    start, end = naive_utc(start), naive_utc(end)
    conn = target.connect()
    try:
        cur = conn.cursor()
        index = updated_at_index(cur)
        if index is None:
            if target.describe() not in _WARNED_NO_INDEX:
                _WARNED_NO_INDEX.add(target.describe())
                log.warning(
                    "posts has no index whose first column is updated_at: every extract reads "
                    "the whole table (plan scan); an index on (updated_at, id) makes it cheap"
                )
            return "scan"

        def estimate(sql: str, params: tuple[Any, ...] = ()) -> int:
            with_retries(lambda: cur.execute("EXPLAIN " + sql, params), what="plan the extract")
            names = [d[0] for d in cur.description]
            return int(dict(zip(names, cur.fetchone(), strict=True))["rows"] or 0)

        table = estimate(f"SELECT id FROM posts IGNORE INDEX ({_quote(index)})")
        hint = f"SELECT id FROM posts FORCE INDEX ({_quote(index)}) WHERE updated_at"
        outside = estimate(f"{hint} < %s", (start,)) + estimate(f"{hint} >= %s", (end,))
    finally:
        conn.close()
    log.info("extract plan estimates: table %d rows, %d outside the window", table, outside)
    return "scan" if outside <= SCAN_MAX_OUTSIDE * table + 2 else "ranges"


def extract_window(
    target: MySQLTarget,
    start: datetime,
    end: datetime,
    plan: str,
    chunk_rows: int = 250_000,
    parallel: int = 2,
) -> Iterator[pa.Table]:
    """Yield the posts with `start <= updated_at < end` as Arrow tables of bounded size.

    Each chunk holds at most about `chunk_rows` rows whatever the day's volume, is read over
    `parallel` connections, and each row is yielded exactly once. `plan` is `scan` (keyset
    pages in primary-key order over `parallel` id stripes of the table: no counting pass) or
    `ranges` (id ranges sized from an index-only count of the window); `choose_plan` picks one.
    """
    start, end = naive_utc(start), naive_utc(end)
    log.info("extract plan %s for [%s, %s)", plan, start, end)
    if plan == "scan":
        yield from _scan_chunks(target, start, end, chunk_rows, parallel)
    elif plan == "ranges":
        yield from _range_chunks(target, start, end, chunk_rows, parallel)
    else:
        raise ValueError(f"unknown extract plan {plan!r}: scan or ranges")


def _scan_chunks(
    target: MySQLTarget, start: datetime, end: datetime, chunk_rows: int, parallel: int
) -> Iterator[pa.Table]:
    import connectorx as cx
    import pyarrow.compute as pc

    conn = target.connect()
    try:
        cur = conn.cursor()
        with_retries(lambda: cur.execute("SELECT MIN(id), MAX(id) FROM posts"), what="id bounds")
        lo, hi = cur.fetchone()  # both ends of the primary key: no scan
    finally:
        conn.close()
    if lo is None:
        return
    n = max(1, min(parallel, hi - lo + 1))
    width = -(-(hi - lo + 1) // n)
    # stripe i covers ids in (cursor[i], stripe_end[i]); a stripe ends on a short page
    cursor = [lo - 1 + i * width for i in range(n)]
    stripe_end = [min(lo + (i + 1) * width, hi + 1) for i in range(n)]
    page = max(1, chunk_rows // n)
    cols, uri = ", ".join(POSTS_COLUMNS), target.uri()
    active = list(range(n))
    while active:
        queries = [
            bind(
                f"SELECT {cols} FROM posts FORCE INDEX (PRIMARY) WHERE id > %s AND id < %s "
                f"AND updated_at >= %s AND updated_at < %s ORDER BY id LIMIT {page}",
                (cursor[i], stripe_end[i], start, end),
            )
            for i in active
        ]
        table = with_retries(
            lambda queries=queries: _read_arrow(cx, uri, queries),
            what=f"extract {len(queries)} pages after ids {[cursor[i] for i in active]}",
        )
        ids = table.column("id")
        still = []
        for i in active:
            mine = pc.and_(pc.greater(ids, cursor[i]), pc.less(ids, stripe_end[i]))
            got = pc.sum(mine).as_py() or 0
            if got == page:
                cursor[i] = pc.max(pc.filter(ids, mine)).as_py()
                still.append(i)
        active = still
        if table.num_rows:
            yield conform(table)


def _range_chunks(
    target: MySQLTarget, start: datetime, end: datetime, chunk_rows: int, parallel: int
) -> Iterator[pa.Table]:
    import connectorx as cx

    stats = window_stats(target, start, end, parallel)
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
    """Cast whatever the driver returned to the raw schema (types differ by driver/version).

    The table is the app's, so its types are too: a text column declared binary (BLOB,
    VARBINARY) may hold bytes that are not UTF-8: they become U+FFFD (the validator quarantines
    such captions); unsigned counts beyond the int64 range become null (a count_null row, with
    a warning) instead of failing the whole day.
    """
    cols = []
    for f in RAW_SCHEMA:
        col = table.column(f.name)
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC")).cast(pa.timestamp("us"))
        elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                col = _decode_utf8(f.name, col)
        elif pa.types.is_unsigned_integer(col.type) and pa.types.is_signed_integer(f.type):
            col = _fit_signed(f.name, col)
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=RAW_SCHEMA)


def _decode_utf8(name: str, col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    try:
        return col.cast(pa.large_string())  # valid UTF-8: no Python objects
    except pa.ArrowInvalid:
        pass
    values = col.to_pylist()
    bad = 0
    for i, v in enumerate(values):
        if v is not None:
            try:
                values[i] = v.decode("utf-8")
            except UnicodeDecodeError:
                values[i] = v.decode("utf-8", errors="replace")
                bad += 1
    if bad:
        log.warning("%d values of %s are not UTF-8: undecodable bytes became U+FFFD", bad, name)
    return pa.array(values, pa.large_string())


def _fit_signed(name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    too_big = pc.greater(col, pa.scalar(2**63 - 1, col.type))
    n = pc.sum(too_big).as_py() or 0
    if n:
        log.warning("%d values of %s exceed the int64 range: kept as null", n, name)
        col = pc.if_else(too_big, pa.scalar(None, col.type), col)
    return col
