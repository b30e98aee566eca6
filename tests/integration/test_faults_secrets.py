"""Secrets (issue 13 §2, issue 21): a small pipeline run with a password in every credential it
uses (the MySQL reader in the `posts_mysql` connection, the S3 secret key, MLflow basic auth,
the SMTP login), then every byte it left behind is scanned for those passwords: Airflow's home
(task logs, the metadata DB with its XComs), the captured output of every process, the lake's
objects, the MLflow server's store, log and artifacts, and the email.

The scans decode what they read (tests/scan.py: Parquet values, compressed objects, mail parts,
base64, quoted-printable, URL encoding). The MLflow server runs with basic auth (`--app-name
basic-auth`) behind a recording TCP proxy: the password is shown to be sent (the decoded
`Authorization` headers of the recorded requests) and found nowhere else."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ml.config import Settings
from ml.lake.partitions import Lake
from ml.weeks import Week
from tests import scan
from tests.conftest import REPO, VENV_BIN, demo_days, load_dag, run_posts_etl, start_mlflow_server
from tests.integration.test_faults import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAY = date(2026, 11, 18)
WEEK = Week.of(datetime.combine(DAY, datetime.min.time(), UTC))


@pytest.fixture
def smtp_login():
    """An aiosmtpd server that requires AUTH (any password; it records the ones it saw)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from tests.conftest import free_port

    got: dict[str, list] = {"messages": [], "logins": []}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got["messages"].append(envelope.original_content or envelope.content)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        got["logins"].append((auth_data.login, auth_data.password))
        return AuthResult(success=True)

    port = free_port()
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=authenticator,
    )
    controller.start()
    try:
        yield port, got
    finally:
        controller.stop()


class RecordingProxy(TcpProxy):
    """A TcpProxy that keeps every byte its clients sent (the requests, headers included)."""

    def __init__(self, port: int) -> None:
        self.sent: list[bytes] = []
        super().__init__(port)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        if a.getsockname()[1] != self.port:  # server → client: pass on, keep nothing
            return super()._pipe(a, b)
        try:
            while data := a.recv(65536):
                self.sent.append(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def basic_credentials(self) -> set[bytes]:
        """The decoded `user:password` of every `Authorization: Basic` request header."""
        sent = b"".join(self.sent)
        found = set()
        for value in re.findall(rb"(?im)^authorization: *basic +([A-Za-z0-9+/=]+)\r?$", sent):
            found.add(base64.b64decode(value))
        return found


@pytest.fixture
def mlflow_auth(s3_server, tmp_path):
    """`mlflow server --app-name basic-auth` (its admin user `postflow`, password generated
    here, handed to the server in MLFLOW_AUTH_ADMIN_PASSWORD only) behind a RecordingProxy;
    yields (server, proxy, password, the auth store's folder)."""
    password = f"mlflowpw{uuid.uuid4().hex}"
    auth_dir = tmp_path / "mlflow-auth"
    auth_dir.mkdir()
    ini = auth_dir / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{auth_dir}/basic_auth.db\nadmin_username = postflow\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,  # CSRF of the auth app's forms
    }
    with start_mlflow_server(s3_server, ["--app-name", "basic-auth"], env) as server:
        server.wait()
        proxy = RecordingProxy(server.port)
        try:
            yield server, proxy, password, auth_dir
        finally:
            proxy.close()


def files_bytes(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.timeout(900)
def test_no_password_appears_in_logs_xcoms_mlflow_lake_or_email(
    airflow_db, fresh_mysql_db, s3_server, mlflow_auth, smtp_login, tmp_path, monkeypatch, capfd
):
    from tools.synthetic import class_features, write_features

    mlflow_server, mlflow_proxy, mlflow_password, mlflow_auth_dir = mlflow_auth
    mlflow_uri = f"http://127.0.0.1:{mlflow_proxy.port}"
    secrets = {
        "mysql": fresh_mysql_db.reader.password,
        "s3": f"s3secret{uuid.uuid4().hex}",
        "mlflow": mlflow_password,
        "smtp": f"smtppw{uuid.uuid4().hex}",
    }
    # the MLflow server refuses a request without the password, or with a wrong one (asked
    # directly, not through the proxy, whose recording holds the pipeline's requests only)
    experiments = f"{mlflow_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(experiments) == 401
    assert _status(experiments, ("postflow", "wrong")) == 401
    assert _status(experiments, ("postflow", mlflow_password)) == 200
    assert len(secrets["mysql"]) >= 16
    smtp_port, smtp = smtp_login
    bucket = s3_server.bucket()
    tag = uuid.uuid4().hex[:8]
    smtp_conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "login": "postflow",
        "password": secrets["smtp"],
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 0},
    }
    env = {
        "AIRFLOW_CONN_POSTS_MYSQL": fresh_mysql_db.reader.uri(),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_conn),
        "POSTFLOW_LAKE": f"s3://{bucket}/lake",
        "POSTFLOW_S3_ENDPOINT": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "postflow",
        "AWS_SECRET_ACCESS_KEY": secrets["s3"],
        "POSTFLOW_IMAGE_ROOT": str(tmp_path / "images"),
        "POSTFLOW_IMAGE_WORKERS": "1",
        "POSTFLOW_MLFLOW_URI": mlflow_uri,
        "MLFLOW_TRACKING_USERNAME": "postflow",  # the server's admin user
        "MLFLOW_TRACKING_PASSWORD": secrets["mlflow"],
        "POSTFLOW_MLFLOW_EXPERIMENT": f"secrets-{tag}",
        "POSTFLOW_REGISTERED_MODEL": f"secrets-{tag}",
        "POSTFLOW_LABEL_HORIZON_DAYS": "1",
        "POSTFLOW_TRAIN_WINDOW_DAYS": "7",
        "POSTFLOW_REPORT_RECIPIENTS": "ml-team@example.com",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.load()
    assert (
        fresh_mysql_db.reader.password
        in settings.replace(mysql_uri=fresh_mysql_db.reader.uri()).mysql_uri
    )  # the URI does carry the password: the scan below means something

    # posts_etl (Airflow, the reader's password in the connection)
    # two days: the first day's posts reach their 1-day horizon in the second day's extract
    days = [DAY - timedelta(days=1), DAY]
    demo_days(settings.replace(mysql_uri=fresh_mysql_db.admin.uri()), days, posts=300, seed=3)
    lake = Lake.from_settings(settings)
    for i, day in enumerate(days):
        assert str(run_posts_etl(day).state) == "success"
        # features for the clean posts (no embedding: not what is tested), then train + promote
        ids = lake.read_partition("posts_clean", day, columns=["id"]).column("id").to_numpy()
        ids = np.sort(ids)  # in id order: the partition's row order varies between runs
        X, _ = class_features(len(ids), seed=1 + i)
        write_features(lake, str(day), ids, np.asarray(X, np.float32))
    window = ["--start", str(days[0]), "--end", str(DAY)]
    outputs = []
    for argv in (
        ["train", *window, "--ds", str(DAY), "--max-epochs", "3"],
        ["promote", "--version", "challenger", *window],
    ):
        out = subprocess.run(
            [str(VENV_BIN / "python"), "-m", "ml", *argv],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "POSTFLOW_CONFIG": ""},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout + out.stderr)
    # the weekly report (Airflow; SMTP login)
    monday = datetime.combine(WEEK.start, datetime.min.time(), UTC)
    run = load_dag("weekly_report").test(logical_date=monday + timedelta(days=7, hours=6))
    assert str(run.state) == "success"
    assert smtp["messages"]  # the credential was used: the scan below is not vacuous
    assert set(smtp["logins"]) == {(b"postflow", secrets["smtp"].encode())}
    # MLflow's password was sent, in every request's Authorization header, and only it
    sent = mlflow_proxy.basic_credentials()
    assert sent == {f"postflow:{mlflow_password}".encode()}, sent
    recording = b"".join(mlflow_proxy.sent)
    assert recording.count(b"POST /api/2.0/mlflow/runs/create") >= 2  # train's runs, sent here
    assert mlflow_password.encode() not in recording  # base64-encoded on the wire ...
    assert scan.find(mlflow_password, recording)  # ... which the scan below decodes

    # everything left behind
    captured = capfd.readouterr()
    haystacks: dict[str, bytes] = {
        "captured output": (captured.out + captured.err).encode(),
        "step outputs": "\n".join(outputs).encode(),
        **{f"email {i}": m for i, m in enumerate(smtp["messages"])},
        **files_bytes(Path(airflow_db)),  # task logs, metadata DB (XComs, rendered fields)
        **files_bytes(mlflow_server.log.parent),  # MLflow's store (params, tags) and its log
        **files_bytes(mlflow_auth_dir),  # its user store (a salted hash of the password)
    }
    s3 = s3_server.client()
    for b in (bucket, mlflow_server.bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket=b, Key=o["Key"])["Body"].read()
                haystacks[f"s3://{b}/{o['Key']}"] = body
    assert any("reports/week=" in k for k in haystacks)  # the report was archived
    assert len(haystacks) > 20
    assert any(k.endswith("basic_auth.db") for k in haystacks)
    assert any(k.endswith(".parquet") for k in haystacks)  # read as values, not bytes
    assert scan.leaks(secrets, haystacks) == []


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of GET `url`, with HTTP basic auth `auth` when given."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
