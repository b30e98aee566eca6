"""The two verbs a new engineer runs first, run as they run them: `make up` (tools.up's main:
start, one REST call, SIGTERM, a clean exit with nothing left running) and `make demo`
(tools.demo at a small size: posts_etl, retrain, weekly report), each in a state directory
of its own (POSTFLOW_STATE_DIR) on a fresh MySQL database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, free_port
from tools import up

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _environ(state: Path, mysql_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "POSTFLOW_"))}
    return env | {
        "POSTFLOW_STATE_DIR": str(state),
        "POSTFLOW_MYSQL_URI": mysql_uri,
        "POSTFLOW_CONFIG": "",
        "PYTHONPATH": str(REPO),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def _processes_with(key: str, value: str) -> list[int]:
    """Pids of live processes whose environment has `key`=`value` (root reads every /proc)."""
    needle = f"{key}={value}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                if (entry / "stat").read_text().split(") ")[1][0] != "Z":
                    pids.append(int(entry.name))
        except OSError:
            pass
    return pids


class _Lines:
    """A subprocess's stdout+stderr read by a thread: every line, and a wait for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._thread.join(5)
                raise AssertionError(f"no {text!r} (rc {self.proc.poll()}):\n{self.text[-6000:]}")
            time.sleep(0.5)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.timeout(600)
def test_make_up_starts_answers_and_stops_cleanly_on_sigterm(fresh_mysql_db, tmp_path):
    state = tmp_path / "state"
    port, mlflow_port = free_port(), free_port()
    env = _environ(state, fresh_mysql_db.admin.uri())
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "tools.up", "--port", str(port),
         "--mlflow-port", str(mlflow_port), "--posts", "40", "--days", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = _Lines(proc)
    try:
        out.wait_for("Ctrl-C stops Airflow and MLflow.", timeout=420)
        pw_file = state / "airflow" / "simple_auth_manager_passwords.json"
        passwords = json.loads(pw_file.read_text())
        assert f"login        admin / {passwords['admin']}" in out.text  # printed once, on start
        assert "(SELECT only, 40 posts)" in out.text
        base = f"http://127.0.0.1:{port}"
        token = up.get_token(base, "admin", passwords["admin"])
        status, body = up.api(base, token, "GET", "/api/v2/monitor/health")
        assert status == 200 and body["metadatabase"]["status"] == "healthy", body
        up.wait_http(f"http://127.0.0.1:{mlflow_port}/health", timeout=5)
        airflow_home = str(state / "airflow")
        assert _processes_with("AIRFLOW_HOME", airflow_home), "no Airflow process found"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, out.text[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping ..." in out.text
    for p in (port, mlflow_port):  # (bind could fail on the REST calls' TIME_WAIT sockets)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", p)) != 0, f"a server still listens on {p}"
    assert _processes_with("AIRFLOW_HOME", airflow_home) == [], "Airflow processes left behind"


@pytest.mark.timeout(1800)
def test_make_demo_at_a_small_size(fresh_mysql_db, tmp_path):
    """posts_etl for four days, retrain, the weekly report mailed: exit 0, and the figures it
    prints are the lake's (every extracted post in posts_clean or quarantine, none twice)."""
    from ml.config import Settings
    from ml.lake.partitions import Lake

    state = tmp_path / "state"
    end = datetime.now(UTC).date()
    env = _environ(state, fresh_mysql_db.admin.uri())
    proc = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "tools.demo", "--posts", "240", "--days", "4",
         "--end", str(end), "--seed", "5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1740,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summary = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith('{"days"')))
    days = [str(end - timedelta(days=n)) for n in (4, 3, 2, 1)]
    assert summary["days"] == days and summary["failed_days"] == []
    assert summary["rows_in"] > 0 and summary["quarantined"] > 0  # demo data plants bad rows

    lake = Lake.from_settings(Settings.load({"lake": str(state / "lake")}, environ={}))
    clean = quarantined = raw = 0
    for d in days:
        raw_ids = lake.read_partition("posts_raw", d, columns=["id"]).column("id").to_pylist()
        ids = lake.read_partition("posts_clean", d, columns=["id"]).column("id").to_pylist()
        qids = lake.read_partition("quarantine", d, columns=["id"]).column("id").to_pylist()
        assert len(set(ids)) == len(ids) and not set(ids) & set(qids)
        assert set(ids) | set(qids) == set(raw_ids), d
        raw, clean, quarantined = raw + len(raw_ids), clean + len(ids), quarantined + len(qids)
        assert lake.read_manifest("features", d)["rows"] == len(ids), d
    assert (summary["rows_in"], summary["clean"], summary["quarantined"]) == (
        raw,
        clean,
        quarantined,
    )
    assert "model:       post-engagement" in output
    # a newcomer's first screen: no third-party warnings, no MLflow download bars
    noise = ("Warning", "[py.warnings]", "Downloading artifacts")
    assert [ln for ln in output.splitlines() if any(n in ln for n in noise)] == []
    mails = list((state / "outbox").glob("*.eml"))
    assert len(mails) == 1 and b"Subject:" in mails[0].read_bytes()
