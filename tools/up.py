"""`make up`: Airflow with postflow's DAGs and an MLflow UI on this machine, until Ctrl-C.

- Seeds demo posts into MySQL when the `posts` table is empty (the demo's data and its
  SELECT-only account, whose fresh password reaches Airflow only as `AIRFLOW_CONN_POSTS_MYSQL`).
- Runs `airflow standalone` (scheduler, DAG processor, triggerer, API server; LocalExecutor)
  with AIRFLOW_HOME under `.postflow/airflow`, the repo's `dags/` and `plugins/`, no example
  DAGs, and SimpleAuthManager users `admin` (role admin) and `viewer` (role viewer) whose
  passwords are generated once, printed once, and kept in a 0600 file. Authentication stays on
  (`simple_auth_manager_all_admins` is False).
- Metadata DB: `--metadata-db URL`, else AIRFLOW__DATABASE__SQL_ALCHEMY_CONN when set, else a
  sqlite file in AIRFLOW_HOME (no set-up; but Airflow may refuse a backfill there with 503
  "Database is locked" while the scheduler writes). PostgreSQL example:
  `make up UP_ARGS='--metadata-db postgresql+psycopg2://USER:PASS@127.0.0.1:5432/airflow'`
  (the database must exist; `airflow db migrate` creates the tables).
- Runs `mlflow server --workers 1` on the pipeline's own MLflow store (POSTFLOW_MLFLOW_URI).

The helpers (environment, start, wait, stop, token, REST calls) are what the integration test
`tests/integration/test_backfill_api.py` uses, so it starts Airflow the way `make up` does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tools.airflow_env import METADATA_DB_ENV, REPO, STATE, airflow_env, pipeline_env

VENV_BIN = Path(sys.executable).parent
# username -> SimpleAuthManager role (viewer, user, op, admin)
USERS: dict[str, str] = {"admin": "admin", "viewer": "viewer"}
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
ASYNC_DB_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"
# Airflow also opens an async engine on its metadata DB, with a driver it picks from the URL's
# scheme (airflow.settings._get_async_conn_uri_from_sync); only a few async endpoints use it.
ASYNC_DRIVERS = {"postgresql": "asyncpg", "mysql": "aiomysql"}
PG_EXAMPLE = "postgresql+psycopg2://USER:PASS@127.0.0.1:5432/airflow"


@dataclass(frozen=True)
class Credentials:
    passwords: dict[str, str]
    passwords_file: Path
    jwt_secret: str
    created: bool  # the passwords were generated just now (print them once)


def ensure_credentials(home: Path, users: Mapping[str, str] = USERS) -> Credentials:
    """Passwords for `users` and the JWT secret, generated once and kept in 0600 files in `home`.

    The passwords file is SimpleAuthManager's own format ({"user": "password"}), so Airflow
    reads it and generates nothing itself."""
    home.mkdir(parents=True, exist_ok=True)
    pw_file = home / "simple_auth_manager_passwords.json"
    passwords = json.loads(pw_file.read_text()) if pw_file.is_file() else {}
    missing = [u for u in users if u not in passwords]
    for user in missing:
        passwords[user] = secrets.token_urlsafe(12)
    if missing:
        _write_private(pw_file, json.dumps(passwords) + "\n")
    jwt_file = home / "jwt_secret"
    if not jwt_file.is_file():
        _write_private(jwt_file, secrets.token_urlsafe(32))
    return Credentials(passwords, pw_file, jwt_file.read_text().strip(), bool(missing))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def airflow_environment(
    home: Path,
    port: int,
    creds: Credentials,
    extra: Mapping[str, str] | None = None,
    users: Mapping[str, str] = USERS,
    parallelism: int = 4,
    metadata_db: str | None = None,
) -> dict[str, str]:
    """The environment of `airflow standalone` and of every component and task it starts.

    `metadata_db` is a SQLAlchemy URL (PostgreSQL, MySQL); None: `airflow.db` (sqlite) in
    `home`. An AIRFLOW__DATABASE__SQL_ALCHEMY_CONN in os.environ is not used here (main()
    passes it on explicitly), so a caller's own Airflow settings never leak in by accident."""
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        airflow_env(
            home,
            metadata_db=metadata_db,
            logging_level="INFO",
            extra={
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # standalone runs `airflow`
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{u}:{r}" for u, r in users.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(creds.passwords_file),
                "AIRFLOW__API_AUTH__JWT_SECRET": creds.jwt_secret,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": base,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            },
        )
    )
    env.update(extra or {})
    if ASYNC_DB_ENV not in env and missing_async_driver(env[METADATA_DB_ENV]):
        # Without its driver Airflow cannot even start; "" = no async engine: its few async-only
        # paths (a DAG run's `/wait` endpoint, the state store's async calls) then fail.
        env[ASYNC_DB_ENV] = ""
    return env


def is_sqlite(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] == "sqlite"


def missing_async_driver(url: str) -> str | None:
    """The async driver Airflow would use for `url` when it is not installed, else None."""
    driver = ASYNC_DRIVERS.get(url.split(":", 1)[0].split("+", 1)[0])
    return driver if driver and importlib.util.find_spec(driver) is None else None


def redact_url(url: str) -> str:
    """`url` with its password (if any) shown as ***."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def prepare_metadata_db(env: Mapping[str, str]) -> None:
    """`airflow db migrate`; on sqlite, then its WAL journal: readers stop blocking writers,
    which the scheduler, DAG processor and API server all are (fewer "database is locked")."""
    subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        env=dict(env),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    url = env[METADATA_DB_ENV]
    if is_sqlite(url):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def start_airflow(env: Mapping[str, str], log: BinaryIO | None = None) -> subprocess.Popen:
    """`airflow standalone` in a process group of its own (stopped as a whole by `stop`)."""
    return subprocess.Popen(
        [str(VENV_BIN / "airflow"), "standalone"],
        env=dict(env),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
    )


def start_mlflow(
    backend_uri: str, port: int, cwd: Path, log: BinaryIO | None = None
) -> subprocess.Popen:
    """`mlflow server` (one worker, no GenAI job runner) on the pipeline's MLflow store."""
    env = dict(os.environ) | {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
    )


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    """Until `url` answers 200, or fail when `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")
        time.sleep(1)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGINT to the process group (each component shuts down on it), then SIGTERM (the
    standalone parent can hang after its children exited), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # components that outlived the standalone parent
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def get_token(base_url: str, username: str, password: str) -> str:
    """A JWT from SimpleAuthManager (`POST /auth/token`)."""
    status, body = api(
        base_url, None, "POST", "/auth/token", {"username": username, "password": password}
    )
    if status != 201:
        raise RuntimeError(f"login as {username} refused: {status} {body}")
    return body["access_token"]


def api(
    base_url: str, token: str | None, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One REST call; returns (status, decoded JSON or text). Never raises on 4xx/5xx."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def seed_if_empty(settings, posts: int, days: int):
    """Demo posts when `posts` is empty or missing; then a fresh SELECT-only account.
    Returns (reader MySQLTarget, rows in posts, seeded?)."""
    from datetime import UTC, datetime

    from ml.demo.seed import generate
    from ml.ingest.source import MySQLTarget, count_posts, create_schema
    from tools.demo import reader_account

    admin = MySQLTarget.parse(settings.mysql_uri)
    create_schema(admin)
    rows = count_posts(admin)
    seeded = rows == 0
    if seeded:
        end = datetime.now(UTC).date()
        print(f"posts is empty: generating {posts} demo posts over the {days} days before {end}")
        generate(settings, posts=posts, days=days, end=end, replace=True)
        rows = count_posts(admin)
    return reader_account(admin), rows, seeded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make up", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8080, help="Airflow API server and UI")
    ap.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI (0 = none)")
    ap.add_argument("--posts", type=int, default=3000, help="demo posts when posts is empty")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument(
        "--metadata-db",
        metavar="URL",
        default=os.environ.get(METADATA_DB_ENV) or None,
        help=f"Airflow's metadata DB, e.g. {PG_EXAMPLE} (default: ${METADATA_DB_ENV} if set, "
        "else sqlite in AIRFLOW_HOME)",
    )
    args = ap.parse_args(argv)
    # Ctrl-C and `kill` both stop the stack (a shell may start us with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    home = STATE / "airflow"
    for port in (args.port, args.mlflow_port):
        if port and not port_free(port):
            print(f"make up: 127.0.0.1:{port} is in use (stop what listens there, or pass "
                  f"UP_ARGS='--port N --mlflow-port M')", file=sys.stderr)  # fmt: skip
            return 2
    for key, value in pipeline_env(STATE).items():  # values already set win
        os.environ.setdefault(key, value)

    from ml.config import Settings
    from ml.ingest.source import SourceError

    settings = Settings.load()
    try:
        reader, rows, _ = seed_if_empty(settings, args.posts, args.days)
    except SourceError as exc:
        print(
            f"make up: MySQL is not reachable: {exc}\nPoint it at a server you can create a "
            "database on: POSTFLOW_MYSQL_URI=mysql://root:PASS@host:3306/postflow make up",
            file=sys.stderr,
        )
        return 2

    creds = ensure_credentials(home)
    extra = {"AIRFLOW_CONN_POSTS_MYSQL": reader.uri()}
    if args.mlflow_port and not os.environ.get("POSTFLOW_MLFLOW_UI_URL"):
        extra["POSTFLOW_MLFLOW_UI_URL"] = f"http://127.0.0.1:{args.mlflow_port}"
    env = airflow_environment(home, args.port, creds, extra, metadata_db=args.metadata_db)
    metadata_db = env[METADATA_DB_ENV]
    print(
        f"Airflow home {home}: migrating the metadata DB {redact_url(metadata_db)} ...", flush=True
    )
    if is_sqlite(metadata_db):
        print("hint: backfills are more reliable on PostgreSQL: make up "
              f"UP_ARGS='--metadata-db {PG_EXAMPLE}'", flush=True)  # fmt: skip
    elif env.get(ASYNC_DB_ENV) == "" and (driver := missing_async_driver(metadata_db)):
        print(f"note: {driver} is not installed: Airflow runs without its async DB engine "
              "(a DAG run's /wait endpoint, async state-store calls fail)")  # fmt: skip
    try:
        prepare_metadata_db(env)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-5:]
        print(f"make up: `airflow db migrate` failed on {redact_url(metadata_db)}:", *tail,
              sep="\n", file=sys.stderr)  # fmt: skip
        return 2

    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    af_log = open(logs / "airflow-standalone.log", "ab")
    airflow = start_airflow(env, af_log)
    procs = {"airflow": airflow}
    mlflow_url = settings.mlflow_uri
    try:
        if args.mlflow_port and not settings.mlflow_uri.startswith(("http://", "https://")):
            ml_log = open(logs / "mlflow-server.log", "ab")
            procs["mlflow"] = start_mlflow(settings.mlflow_uri, args.mlflow_port, STATE, ml_log)
            mlflow_url = f"http://127.0.0.1:{args.mlflow_port}"
        base = f"http://127.0.0.1:{args.port}"
        print("starting Airflow (about a minute) ...", flush=True)
        wait_http(f"{base}/api/v2/monitor/health", airflow)
        if "mlflow" in procs:
            wait_http(f"{mlflow_url}/health", procs["mlflow"], timeout=120)
        _banner(base, mlflow_url, creds, rows, reader, logs, metadata_db)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        dead = [name for name, p in procs.items() if p.poll() is not None]
        print(f"make up: {', '.join(dead)} exited; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"make up: {exc}; see {logs}", file=sys.stderr)
        return 1
    finally:
        for proc in procs.values():
            stop(proc)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _banner(
    base: str, mlflow_url: str, creds: Credentials, rows: int, reader, logs, metadata_db: str
) -> None:
    print("=" * 78)
    print(f"Airflow UI   {base}/dags/posts_etl   (REST API {base}/api/v2, docs {base}/docs)")
    print(f"MLflow UI    {mlflow_url}")
    for user, role in USERS.items():
        shown = creds.passwords[user] if creds.created else "(see below)"
        print(f"login        {user} / {shown}   role {role}")
    if not creds.created:
        print(f"passwords    in {creds.passwords_file} (generated on the first `make up`)")
    print(f"source       MySQL {reader.describe()} (SELECT only, {rows} posts)")
    print(f"metadata DB  {redact_url(metadata_db)}")
    print(f"logs         {logs}/  and task logs under {STATE / 'airflow' / 'logs'}/")
    print("backfill     posts_etl → Trigger → Backfill, or POST /api/v2/backfills")
    if is_sqlite(metadata_db):  # Airflow answers 503 when sqlite is locked by the scheduler
        print("             (on sqlite it may be refused: 'Database is locked'; retry it)")
    print("Ctrl-C stops Airflow and MLflow.")
    print("=" * 78, flush=True)


if __name__ == "__main__":
    sys.exit(main())
