"""Shared fixtures: real servers on loopback, started and stopped by the tests.

Airflow reads its configuration when first imported, so the isolated AIRFLOW_HOME (sqlite
metadata DB, our dags/ and plugins/, no examples) is set here, before any test imports it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="postflow-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
)
# Tests never read a developer's postflow.toml or POSTFLOW_* environment by accident.
for _key in [k for k in os.environ if k.startswith("POSTFLOW_")]:
    del os.environ[_key]
os.environ["POSTFLOW_CONFIG"] = ""  # empty: read no settings file

MYSQL_HOST = os.environ.get("POSTFLOW_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("POSTFLOW_TEST_MYSQL_PORT", "3306"))
MYSQL_ADMIN = os.environ.get("POSTFLOW_TEST_MYSQL_USER", "root")
MYSQL_ADMIN_PASSWORD = os.environ.get("POSTFLOW_TEST_MYSQL_PASSWORD", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _admin_connect(database: str | None = None):
    import MySQLdb

    kwargs = dict(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_ADMIN, passwd=MYSQL_ADMIN_PASSWORD)
    if database:
        kwargs["database"] = database
    try:
        return MySQLdb.connect(**kwargs)
    except MySQLdb.OperationalError as exc:
        pytest.fail(
            f"MariaDB/MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT} as {MYSQL_ADMIN}: {exc}. "
            "The integration tests need a real server (set POSTFLOW_TEST_MYSQL_HOST/PORT/USER)."
        )


class MySQLDatabase:
    """A fresh database plus a SELECT-only account on its posts table."""

    def __init__(self) -> None:
        from ml.source import MySQLTarget, create_schema

        self.name = f"pf_test_{uuid.uuid4().hex[:10]}"
        self.admin = MySQLTarget(
            MYSQL_HOST, MYSQL_PORT, MYSQL_ADMIN, MYSQL_ADMIN_PASSWORD, self.name
        )
        create_schema(self.admin)
        self.reader_user = f"pf_ro_{uuid.uuid4().hex[:8]}"
        reader_password = uuid.uuid4().hex
        conn = _admin_connect()
        cur = conn.cursor()
        for host in ("127.0.0.1", "localhost"):
            cur.execute(
                f"CREATE USER '{self.reader_user}'@'{host}' IDENTIFIED BY %s", (reader_password,)
            )
            cur.execute(f"GRANT SELECT ON `{self.name}`.`posts` TO '{self.reader_user}'@'{host}'")
        conn.commit()
        conn.close()
        self.reader = MySQLTarget(
            MYSQL_HOST, MYSQL_PORT, self.reader_user, reader_password, self.name
        )

    def execute(self, sql: str, params=None, many: bool = False) -> None:
        conn = _admin_connect(self.name)
        cur = conn.cursor()
        (cur.executemany if many else cur.execute)(sql, params)
        conn.commit()
        conn.close()

    def drop(self) -> None:
        conn = _admin_connect()
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"DROP USER IF EXISTS '{self.reader_user}'@'{host}'")
        conn.commit()
        conn.close()


@pytest.fixture(scope="session")
def mysql_db() -> Iterator[MySQLDatabase]:
    _admin_connect().close()
    db = MySQLDatabase()
    yield db
    db.drop()


@pytest.fixture
def fresh_mysql_db() -> Iterator[MySQLDatabase]:
    """A database of its own, for tests that need a known, small set of rows."""
    _admin_connect().close()
    db = MySQLDatabase()
    yield db
    db.drop()


class S3Server:
    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port, self.proc = port, proc
        self.endpoint = f"http://127.0.0.1:{port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bucket(self, name: str | None = None) -> str:
        name = name or f"pf-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint (moto_server) on a free loopback port."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    log = open(_AIRFLOW_HOME / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
        yield S3Server(port, proc)
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB (sqlite) in the isolated AIRFLOW_HOME."""
    subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)
