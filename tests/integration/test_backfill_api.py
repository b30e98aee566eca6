"""Backfills of `posts_etl` through Airflow's REST API, on Airflow started the way `make up`
starts it (`tools.up`: `airflow standalone`, LocalExecutor, SimpleAuthManager with
authentication on), reading demo posts in MySQL through a SELECT-only account.

Airflow's metadata DB is a fresh PostgreSQL database (`pf_airflow_<random>`, dropped at the
end) on the server at POSTFLOW_TEST_PG_HOST/PORT/USER/PASSWORD (default postgres@127.0.0.1:5432,
no password), as in production. In CI (CI=true) an unreachable server fails the tests that
need it, naming the variables to set; elsewhere they fall back to sqlite (with a warning),
where Airflow may refuse a backfill with 503 "Database is locked" while the scheduler writes:
that path alone keeps the workarounds (see `_backfill_on_sqlite`).

One Airflow for the module (it takes a minute to start on 2 cores): two backfills, the second
over an overlapping range with `reprocess_behavior=completed`, then access control, log
masking and a screenshot of the DAG's grid in headless Chromium, logged in with a JWT cookie.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from ml.config import Settings
from ml.lake.partitions import Lake
from tests.conftest import MySQLDatabase, free_port, stop
from tools import up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TODAY = datetime.now(UTC).date()
# Demo posts are updated on D1..D4; backfill 1 covers D1..D3, backfill 2 covers D2..D4.
D1, D2, D3, D4 = (TODAY - timedelta(days=n) for n in (5, 4, 3, 2))
FIRST, SECOND = [D1, D2, D3], [D2, D3, D4]
TASKS = ["extract_posts", "plan_shards", "validate_posts", "merge_posts", "reconcile_posts"]
# In the page: every link's href; and the button that folds the details panel (grid full width).
LINKS_JS = 'Array.from(document.querySelectorAll("a[href]"), a => a.getAttribute("href"))'
FOLD_DETAILS_JS = "document.querySelector(\"button[aria-label='Collapse Details Panel']\")?.click()"

PG_HOST = os.environ.get("POSTFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("POSTFLOW_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("POSTFLOW_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("POSTFLOW_TEST_PG_PASSWORD", "")


class Stack:
    def __init__(
        self, base: str, tokens: dict[str, str], passwords: dict[str, str], pg_db: str | None
    ) -> None:
        self.base, self.tokens, self.passwords = base, tokens, passwords
        self.pg_db = pg_db  # the PostgreSQL metadata database; None: sqlite (fallback)

    def call(self, method: str, path: str, body=None, user: str | None = "admin"):
        return up.api(self.base, self.tokens.get(user) if user else None, method, path, body)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Its own MySQL database (demo posts on D1..D4) and a SELECT-only reader."""
    from ml.demo.seed import generate

    db = MySQLDatabase()
    root = tmp_path_factory.mktemp("backfill")
    settings = Settings.load(
        {
            "mysql_uri": db.admin.uri(),
            "lake": str(root / "lake"),
            "image_root": str(root / "images"),
            "image_workers": 1,
        }
    )
    generate(settings, posts=160, days=4, end=D4 + timedelta(days=1), seed=3, image_size=64)
    yield db, settings
    db.drop()


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=PG_PASSWORD or None,
        dbname=dbname,
        connect_timeout=5,
    )
    conn.autocommit = True
    return conn


def _pg_drop(name: str) -> None:
    """Terminate the database's sessions (Airflow's, if any outlived it), then drop it."""
    from psycopg2 import errors, sql

    conn = _pg_connect()
    try:
        with conn.cursor() as cur:
            for attempt in range(5):
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                try:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                    return
                except errors.ObjectInUse:  # a session came back in between
                    if attempt == 4:
                        raise
                    time.sleep(1)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def metadata_db():
    """(URL, PostgreSQL database name): a fresh database on the test PostgreSQL server, dropped
    afterwards; (None, None) when the server is unreachable: `up`'s sqlite default."""
    import psycopg2
    from psycopg2 import sql

    try:
        conn = _pg_connect()
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        message = (
            f"PostgreSQL unreachable at {PG_USER}@{PG_HOST}:{PG_PORT} ({reason}): set "
            "POSTFLOW_TEST_PG_HOST/PORT/USER/PASSWORD to a server the tests may create "
            "databases on"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " (CI: no sqlite fallback)", pytrace=False)
        warnings.warn(message + "; Airflow's metadata DB falls back to sqlite", stacklevel=1)
        yield None, None
        return
    name = f"pf_airflow_{uuid.uuid4().hex[:10]}"
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    login = urllib.parse.quote(PG_USER, safe="")
    if PG_PASSWORD:
        login += ":" + urllib.parse.quote(PG_PASSWORD, safe="")
    try:
        yield f"postgresql+psycopg2://{login}@{PG_HOST}:{PG_PORT}/{name}", name
    finally:
        _pg_drop(name)


@contextmanager
def start_stack(source, metadata_db, extra_env: dict[str, str]):
    """`make up`'s stack (tools.up: `airflow standalone`) on the test posts and lake:
    (Stack, its environment, the standalone process, its home); its log is printed when
    starting fails."""
    db, settings = source
    metadata_url, pg_db = metadata_db
    home = Path(tempfile.mkdtemp(prefix="postflow-up-"))
    creds = up.ensure_credentials(home)
    port = free_port()
    env = up.airflow_environment(
        home,
        port,
        creds,
        {
            "AIRFLOW_CONN_POSTS_MYSQL": db.reader.uri(),
            "POSTFLOW_LAKE": settings.lake,
            "POSTFLOW_IMAGE_ROOT": settings.image_root,
            "POSTFLOW_IMAGE_WORKERS": "1",
            "POSTFLOW_CONFIG": "",
            # only backfill runs here: no scheduled run of yesterday competing for 2 cores
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            **extra_env,
        },
        parallelism=3,
        metadata_db=metadata_url,  # None: sqlite in `home`
    )
    up.prepare_metadata_db(env)
    log = open(home / "standalone.log", "wb")
    proc = up.start_airflow(env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        up.wait_http(f"{base}/api/v2/monitor/health", proc, timeout=300)
        tokens = {u: up.get_token(base, u, creds.passwords[u]) for u in up.USERS}
        stack = Stack(base, tokens, creds.passwords, pg_db)
        _wait_dag_parsed(stack)
        yield stack, env, proc, home
    except Exception:
        log.flush()
        print((home / "standalone.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        up.stop(proc)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(source, metadata_db):
    wrong = {"POSTFLOW_MYSQL_URI": "mysql://wrong@127.0.0.1:1/unused"}  # the connection wins
    with start_stack(source, metadata_db, wrong) as (started, *_):
        yield started


def _wait_dag_parsed(stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = stack.call("GET", "/api/v2/dags/posts_etl")
        if status == 200:
            return
        time.sleep(2)
    raise TimeoutError("posts_etl never showed up in the API (DAG processor)")


def _day(d: date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


def _set_paused(stack: Stack, paused: bool) -> None:
    status, body = stack.call("PATCH", "/api/v2/dags/posts_etl", {"is_paused": paused})
    assert status == 200 and body["is_paused"] is paused, (status, body)


def _backfill(stack: Stack, days: list[date], reprocess: str) -> dict:
    """`POST /api/v2/backfills` once, on the unpaused DAG, as a user would: on PostgreSQL it
    must be accepted the first time."""
    body = {
        "dag_id": "posts_etl",
        "from_date": _day(days[0]),
        "to_date": _day(days[-1]),
        "reprocess_behavior": reprocess,
        "max_active_runs": 3,
    }
    if stack.pg_db is None:
        return _backfill_on_sqlite(stack, body)
    status, created = stack.call("POST", "/api/v2/backfills", body)
    assert status == 200, (status, created)
    return created


def _backfill_on_sqlite(stack: Stack, body: dict) -> dict:
    """Workarounds for the sqlite fallback only (PostgreSQL unreachable), not Airflow's real
    behaviour on a production metadata DB: creating a backfill while the scheduler writes can
    fail there with 503 "Database is locked" (Airflow then deletes the partial backfill and
    its runs), so the DAG is paused while the backfill is created (the scheduler leaves its
    runs alone) and a 503 is retried; up.prepare_metadata_db also turns on WAL for sqlite."""
    _set_paused(stack, True)
    for _ in range(5):
        status, created = stack.call("POST", "/api/v2/backfills", body)
        if status != 503:
            break
        time.sleep(2)
    assert status == 200, (status, created)
    _set_paused(stack, False)
    return created


def _runs(stack: Stack) -> dict[str, dict]:
    status, body = stack.call("GET", "/api/v2/dags/posts_etl/dagRuns?limit=100")
    assert status == 200, body
    return {r["logical_date"][:10]: r for r in body["dag_runs"]}


def _wait_backfill(stack: Stack, backfill_id: int, days: list[date], timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, bf = stack.call("GET", f"/api/v2/backfills/{backfill_id}")
        assert status == 200, bf
        runs = _runs(stack)
        states = {str(d): runs.get(str(d), {}).get("state") for d in days}
        if bf["completed_at"] and all(s in {"success", "failed"} for s in states.values()):
            assert set(states.values()) == {"success"}, states
            return runs
        time.sleep(5)
    raise TimeoutError(f"backfill {backfill_id} not done after {timeout}s: {states}")


def _source_counts(db: MySQLDatabase, days: list[date]) -> dict[str, int]:
    conn = db.admin.connect()
    try:
        cur = conn.cursor()
        out = {}
        for d in days:
            cur.execute(
                "SELECT COUNT(*) FROM posts WHERE updated_at >= %s AND updated_at < %s",
                (d, d + timedelta(days=1)),
            )
            out[str(d)] = int(cur.fetchone()[0])
        return out
    finally:
        conn.close()


def _check_partitions(lake: Lake, days: list[date], expected: dict[str, int]) -> dict:
    """Every post of the day is in exactly one of posts_clean and quarantine, once."""
    manifests = {}
    for d in days:
        clean, quar = lake.read_manifest("posts_clean", d), lake.read_manifest("quarantine", d)
        assert clean is not None and quar is not None, f"no partitions for {d}"
        ids = lake.read_partition("posts_clean", d, columns=["id"]).column("id").to_pylist()
        qids = lake.read_partition("quarantine", d, columns=["id"]).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == clean["rows"], f"duplicate posts in {d}"
        assert len(qids) == len(set(qids)) == quar["rows"]
        assert not set(ids) & set(qids)
        assert len(ids) + len(qids) == expected[str(d)], (d, len(ids), len(qids))
        parquet = {
            Path(p).name
            for p in os.listdir(Path(lake.partition_path("posts_clean", d)))
            if p.endswith(".parquet")
        }
        assert parquet == {Path(f).name for f in clean["files"]}, "stale files in the partition"
        manifests[str(d)] = clean
    return manifests


@pytest.fixture(scope="module")
def backfilled(stack, source):
    """Backfill D1..D3, then D2..D4 re-running completed days; lake checked after each."""
    db, settings = source
    lake = Lake.from_settings(settings)
    expected = _source_counts(db, [D1, D2, D3, D4])
    assert all(expected.values()), expected
    # Airflow creates the DAG paused (dags_are_paused_at_creation) and runs no run of a paused
    # DAG, backfills included: unpause it once, as in the UI (no schedule: use_job_schedule off)
    _set_paused(stack, False)

    t0 = time.monotonic()
    first = _backfill(stack, FIRST, "none")
    _wait_backfill(stack, first["id"], FIRST)
    first_s = time.monotonic() - t0
    before = _check_partitions(lake, FIRST, expected)

    t0 = time.monotonic()
    second = _backfill(stack, SECOND, "completed")
    assert second["reprocess_behavior"] == "completed"
    runs = _wait_backfill(stack, second["id"], SECOND)
    second_s = time.monotonic() - t0
    after = _check_partitions(lake, [D1, D2, D3, D4], expected)
    print(f"backfill D1..D3 {first_s:.0f}s, D2..D4 (reprocess completed) {second_s:.0f}s")
    return {"before": before, "after": after, "runs": runs, "expected": expected}


def test_backfills_write_each_day_once(backfilled, stack):
    before, after, runs = backfilled["before"], backfilled["after"], backfilled["runs"]
    for d in (D2, D3):  # re-run by the second backfill: rewritten whole, same rows
        assert after[str(d)]["run_id"] != before[str(d)]["run_id"], f"{d} was not re-run"
        assert after[str(d)]["rows"] == before[str(d)]["rows"]
    assert after[str(D1)]["run_id"] == before[str(D1)]["run_id"], "D1 is outside backfill 2"
    for d in (D1, D2, D3, D4):
        assert runs[str(d)]["run_type"] == "backfill" and runs[str(d)]["state"] == "success"
    run_id = urllib.parse.quote(runs[str(D2)]["dag_run_id"], safe="")
    status, tis = stack.call("GET", f"/api/v2/dags/posts_etl/dagRuns/{run_id}/taskInstances")
    assert status == 200, tis
    tries = {ti["task_id"]: ti["try_number"] for ti in tis["task_instances"]}
    assert set(tries) == set(TASKS) and min(tries.values()) >= 2, tries
    if stack.pg_db:  # the runs are in the PostgreSQL metadata DB, not in some sqlite file
        conn = _pg_connect(stack.pg_db)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM dag_run WHERE dag_id = 'posts_etl'"
                    " AND run_type = 'backfill' AND state = 'success'"
                )
                assert cur.fetchone()[0] == 4
        finally:
            conn.close()


def test_api_refuses_requests_without_valid_login(stack):
    assert stack.call("GET", "/api/v2/dags", user=None)[0] in {401, 403}
    status, _ = up.api(stack.base, "not.a.jwt", "GET", "/api/v2/dags")
    assert status in {401, 403}
    status, _ = up.api(
        stack.base, None, "POST", "/auth/token", {"username": "admin", "password": "wrong"}
    )
    assert status == 401
    # the viewer reads but cannot start work
    assert stack.call("GET", "/api/v2/dags", user="viewer")[0] == 200
    body = {"dag_id": "posts_etl", "from_date": _day(D1), "to_date": _day(D1)}
    assert stack.call("POST", "/api/v2/backfills", body, user="viewer")[0] == 403
    assert stack.call("PATCH", "/api/v2/dags/posts_etl", {"is_paused": True}, "viewer")[0] == 403


def test_task_log_never_shows_the_reader_password(backfilled, stack, source):
    db, _ = source
    run_id = urllib.parse.quote(backfilled["runs"][str(D1)]["dag_run_id"], safe="")
    path = f"/api/v2/dags/posts_etl/dagRuns/{run_id}/taskInstances/extract_posts/logs/1"
    status, body = stack.call("GET", path)
    assert status == 200, body
    text = json.dumps(body)
    assert f"source from Airflow connection 'posts_mysql': {db.reader_user}@" in text
    assert db.reader.password not in text
    assert stack.passwords["admin"] not in text


def test_grid_view_screenshot(backfilled, stack, tmp_path):
    """The DAG's grid (runs × tasks) in headless Chromium, logged in by a `_token` cookie set
    over the DevTools protocol: authentication stays on, no all-admins instance."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed (make test installs Debian's chromium)"
    run_ids = [backfilled["runs"][str(d)]["dag_run_id"] for d in (D1, D2, D3, D4)]
    cells = {f"/dags/posts_etl/runs/{r}/tasks/{t}" for r in run_ids for t in TASKS}
    png = tmp_path / "posts_etl_grid.png"
    text, links = _screenshot(chromium, stack.base, stack.tokens["admin"], "/dags/posts_etl", png)
    assert "posts_etl" in text and all(t in text for t in TASKS), text[:500]
    # a mapped task's cell (validate_posts, one instance per shard) links below its task path
    missing = {
        c for c in cells if not any(ln == c or ln.startswith((c + "/", c + "?")) for ln in links)
    }
    assert not missing, f"grid cells missing: {sorted(missing)[:3]}"
    assert png.stat().st_size > 20_000
    with Image.open(png) as img:
        assert img.size == (1400, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "a blank page"
    print(f"grid screenshot: {png}")


def _screenshot(chromium: str, base: str, token: str, path: str, out: Path) -> tuple[str, set[str]]:
    """Screenshot of `path` with the grid at full width; returns the page text and its links."""
    import websocket

    profile = Path(tempfile.mkdtemp(prefix="postflow-chromium-"))
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile / "DevToolsActivePort", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        counter = iter(range(1, 1_000_000))

        def cdp(method: str, **params):
            msg_id = next(counter)
            ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == msg_id:
                    assert "error" not in msg, msg
                    return msg["result"]

        try:
            cdp("Network.enable")
            cdp("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                deviceScaleFactor=1, mobile=False)  # fmt: skip
            host = urllib.parse.urlsplit(base).hostname
            ok = cdp("Network.setCookie", name="_token", value=token, domain=host, path="/")
            assert ok.get("success", True), ok
            cdp("Page.enable")
            cdp("Page.navigate", url=base + path)
            text, links, deadline = "", set(), time.monotonic() + 60
            while time.monotonic() < deadline:  # the SPA renders after its API calls
                text = cdp("Runtime.evaluate", expression="document.body.innerText")["result"]
                text = text.get("value", "")
                res = cdp("Runtime.evaluate", expression=LINKS_JS, returnByValue=True)
                links = set(res["result"].get("value") or [])
                if "reconcile_posts" in text and sum("/tasks/" in h for h in links) >= 12:
                    break
                time.sleep(1)
            # the grid at full width: fold the details panel away
            cdp("Runtime.evaluate", expression=FOLD_DETAILS_JS)
            time.sleep(2)  # layout and the bars' transition
            shot = cdp("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
            return text, links
        finally:
            ws.close()
    finally:
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(port_file: Path, proc: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text().split()[0])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return port
        time.sleep(0.1)
    raise TimeoutError("chromium opened no DevTools port")
