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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tools.airflow_env import airflow_env

VENV_BIN = Path(sys.executable).parent

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="postflow-airflow-"))
os.environ.update(
    airflow_env(
        _AIRFLOW_HOME,
        logging_level="WARNING",
        extra={"AIRFLOW__CORE__UNIT_TEST_MODE": "False"},
    )
)
# Tests never read a developer's postflow.toml or POSTFLOW_* environment by accident.
# (POSTFLOW_TEST_* name the test servers themselves and stay.)
for _key in [
    k for k in os.environ if k.startswith("POSTFLOW_") and not k.startswith("POSTFLOW_TEST_")
]:
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
    """A fresh database plus a SELECT-only account on its posts table (on the loopback hosts)."""

    READER_HOSTS = ("127.0.0.1", "localhost")

    def __init__(self) -> None:
        from ml.ingest.source import MySQLTarget, create_reader_account, create_schema

        self.name = f"pf_test_{uuid.uuid4().hex[:10]}"
        self.admin = MySQLTarget(
            MYSQL_HOST, MYSQL_PORT, MYSQL_ADMIN, MYSQL_ADMIN_PASSWORD, self.name
        )
        create_schema(self.admin)
        self.reader_user = f"pf_ro_{uuid.uuid4().hex[:8]}"
        self.reader = create_reader_account(
            self.admin, self.reader_user, uuid.uuid4().hex, hosts=self.READER_HOSTS
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
        for host in self.READER_HOSTS:
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


# -- demo posts through posts_etl ---------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def load_dag(dag_id: str, *, all_dags: bool = False, check_import_errors: bool = True):
    """The DAG `dag_id`: parsed from `dags/<dag_id>.py` alone, or (`all_dags`) from the whole
    `dags/` folder; with `check_import_errors`, the parse must have none."""
    from airflow.dag_processing.dagbag import DagBag

    folder = REPO / "dags" if all_dags else REPO / "dags" / f"{dag_id}.py"
    bag = DagBag(dag_folder=str(folder))
    if check_import_errors:
        assert bag.import_errors == {}
    return bag.dags[dag_id]


def demo_days(settings, days: list[date], posts: int, seed: int) -> dict:
    """`posts` demo posts (ml.demo.seed.generate, replacing the table) updated over `days`,
    consecutive days ending with days[-1]; returns generate's truth."""
    from ml.demo.seed import generate

    end = days[-1] + timedelta(days=1)
    return generate(settings, posts=posts, days=len(days), end=end, seed=seed, replace=True)


def demo_lake(mysql_db, root: Path, days: list[date], posts: int, seed: int):
    """Settings of a lake and an image root under `root`, read from `mysql_db` (admin), with
    `posts` demo posts over `days` in its posts table (`demo_days`): what the retrain tests put
    through posts_etl."""
    from ml.config import Settings

    settings = Settings.load(
        {
            "mysql_uri": mysql_db.admin.uri(),
            "lake": str(root / "lake"),
            "image_root": str(root / "images"),
            "image_workers": 2,
        },
        environ={},
    )
    demo_days(settings, days, posts=posts, seed=seed)
    return settings


def retrain_environment(settings, mysql_db, mlflow_server, monkeypatch, **extra: str):
    """Settings (and the process environment) for running the `retrain` DAG on a demo lake
    (`demo_lake`): the local runner, random weights on CPU, a fresh experiment and registered
    model on `mlflow_server`; `extra` adds or overrides POSTFLOW_* variables."""
    import uuid

    from ml.config import Settings

    name = f"post-engagement-{uuid.uuid4().hex[:6]}"
    env = {
        "AIRFLOW_CONN_POSTS_MYSQL": mysql_db.reader.uri(),
        "POSTFLOW_LAKE": settings.lake,
        "POSTFLOW_IMAGE_ROOT": settings.image_root,
        "POSTFLOW_IMAGE_WORKERS": "2",
        "POSTFLOW_MLFLOW_URI": mlflow_server.uri,
        "POSTFLOW_MLFLOW_EXPERIMENT": name,
        "POSTFLOW_REGISTERED_MODEL": name,
        "POSTFLOW_IMAGE_WEIGHTS": "none",
        "POSTFLOW_DEVICE": "cpu",
        # demo posts over a few days: all but the last day's reach a 1-day horizon within them
        "POSTFLOW_LABEL_HORIZON_DAYS": "1",
        "MLFLOW_S3_ENDPOINT_URL": mlflow_server.s3.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **extra,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings.load(environ=env | {"POSTFLOW_CONFIG": ""})


def run_posts_etl(day: date, dag=None):
    """A manual `posts_etl` run that reads the complete day `day` (logical date D+1, 00:00 UTC);
    `dag`: None parses dags/posts_etl.py. Returns the DagRun."""
    dag = dag if dag is not None else load_dag("posts_etl")
    logical = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    return dag.test(logical_date=logical)


def etl_days(days: list[date], dag=None) -> None:
    """`run_posts_etl` for each of `days`, each run a success."""
    dag = dag if dag is not None else load_dag("posts_etl")
    for day in days:
        assert str(run_posts_etl(day, dag).state) == "success", day


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


def jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    """A small valid JPEG of one colour."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An image root for ETL tests: 1.jpg .. 7.jpg (seven colours) and ok.jpg."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(1, 8):
        (root / f"{i}.jpg").write_bytes(jpeg((30 * i, 90, 200 - 20 * i)))
    (root / "ok.jpg").write_bytes(jpeg())
    return root


@pytest.fixture
def stage_settings(tmp_path: Path, fresh_mysql_db, images: Path):
    """Settings of the ETL stage tests, read through the SELECT-only reader account into a lake
    under tmp_path; `stage_settings(extract_chunk_rows=3)` overrides any of them."""
    from ml.config import Settings

    def make(**overrides):
        values = {
            "mysql_uri": fresh_mysql_db.reader.uri(),
            "lake": str(tmp_path / "lake"),
            "image_root": str(images),
            "image_workers": 1,
        }
        return Settings.load(values | overrides)

    return make


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


class MlflowServer:
    """A started `mlflow server`. Reading `uri` waits until it answers /health, so a test can
    do other work (imports, data) while the server starts."""

    def __init__(
        self, port: int, proc: subprocess.Popen, log: Path, bucket: str, prefix: str, s3: S3Server
    ) -> None:
        self.port, self.proc, self.log = port, proc, log
        self.bucket, self.prefix, self.s3 = bucket, prefix, s3
        self._ready = False

    @property
    def uri(self) -> str:
        self.wait()
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while not self._ready:
            try:
                url = f"http://127.0.0.1:{self.port}/health"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    self._ready = resp.status == 200
            except OSError:
                pass
            if not self._ready:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mlflow server not healthy: {tail}")
                time.sleep(0.2)

    def artifact_keys(self) -> list[str]:
        """Keys of every object the server stored in its S3 artifact destination."""
        pages = self.s3.client().get_paginator("list_objects_v2")
        return [
            o["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
            for o in page.get("Contents", [])
        ]


@contextmanager
def start_mlflow_server(
    s3: S3Server, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[MlflowServer]:
    """A real `mlflow server` (sqlite backend, one worker) on a free loopback port, proxying
    artifacts to a moto S3 bucket; `args`/`env` add to its command line and environment (e.g.
    `--app-name basic-auth`). The default host/CORS checks already allow 127.0.0.1. Its job
    runner (huey consumers, for GenAI jobs) is switched off: four more Python processes. The
    server runs in a process group of its own, stopped as a whole (uvicorn is a child).
    Yields as soon as it is started: `MlflowServer.uri` waits for /health."""
    import signal

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from tests
    home = Path(tempfile.mkdtemp(prefix="postflow-mlflow-"))
    bucket, prefix = s3.bucket(), "mlflow"
    port = free_port()
    environ = os.environ.copy() | {
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(env or {}),
    }
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--artifacts-destination",
            f"s3://{bucket}/{prefix}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            *args,
        ],
        cwd=home,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield MlflowServer(port, proc, home / "server.log", bucket, prefix, s3)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server) -> Iterator[MlflowServer]:
    """`start_mlflow_server` for the session, without authentication."""
    with start_mlflow_server(s3_server) as server:
        yield server


class SmtpServer:
    """What a real SMTP server on loopback received: one dict per message, in arrival order,
    with the envelope (`mail_from`, `rcpt_tos`) and the raw bytes (`data`)."""

    def __init__(self, port: int, messages: list[dict]) -> None:
        self.host, self.port, self.messages = "127.0.0.1", port, messages

    def connection_json(self) -> str:
        """An Airflow `smtp` connection (AIRFLOW_CONN_SMTP_DEFAULT): no TLS, no login."""
        import json

        extra = {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 0}
        return json.dumps(
            {"conn_type": "smtp", "host": self.host, "port": self.port, "extra": extra}
        )

    def wait_for(self, n: int = 1, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """An aiosmtpd server on a free loopback port, collecting every message it accepts."""
    from aiosmtpd.controller import Controller

    messages: list[dict] = []

    class Collect:
        async def handle_DATA(self, server, session, envelope):
            messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "data": envelope.original_content or envelope.content,
                }
            )
            return "250 Message accepted for delivery"

    port = free_port()
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(port, messages)
    finally:
        controller.stop()
