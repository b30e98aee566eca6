"""deploy/airflow/entrypoint.sh (the `airflow` and `ml-worker` images' /entrypoint), run here
with this venv's Airflow in the command forms the official Helm chart's templates use: component
args (`bash -c "exec airflow scheduler"`), the wait-for-migrations init container
(`airflow db check-migrations --migration-wait-timeout=N`) and the probes
(`sh -c "CONNECTION_CHECK_MAX_COUNT=0 ... exec /entrypoint airflow jobs check ..."`,
`/entrypoint python -Wignore -c ...`). `make stack-test` runs the same forms in the built images."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "deploy/airflow/entrypoint.sh"
VENV_BIN = Path(sys.executable).parent
AIRFLOW_VERSION = "3.3.2"


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 180):
    base = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    return subprocess.run(
        args, env=base | (env or {}), capture_output=True, text=True, timeout=timeout
    )


def test_bash_and_python_run_as_given():
    done = run([str(ENTRYPOINT), "bash", "-c", "exec airflow version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == AIRFLOW_VERSION
    code = "import sys; print(sys.argv[1:], sys.warnoptions)"
    done = run([str(ENTRYPOINT), "python", "-Wignore", "-c", code, "a b", "c"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a b', 'c'] ['ignore']"


@pytest.mark.parametrize("args", [["version"], ["airflow", "version"], []])
def test_anything_else_is_an_airflow_subcommand(args):
    done = run([str(ENTRYPOINT), *args])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == AIRFLOW_VERSION


def test_waits_for_the_metadata_db_and_runs_nothing_when_it_never_answers(tmp_path):
    marker = tmp_path / "ran"
    db = tmp_path / "missing-dir" / "airflow.db"  # sqlite cannot open it: the DB "is down"
    done = run(
        [str(ENTRYPOINT), "python", "-c", f"open({str(marker)!r}, 'w')"],
        env={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
            "CONNECTION_CHECK_MAX_COUNT": "2",
            "CONNECTION_CHECK_SLEEP_TIME": "0",
        },
    )
    assert done.returncode != 0
    assert "waiting for the metadata DB (1/2)" in done.stderr
    assert "did not answer after 2 tries" in done.stderr
    assert not marker.exists()


def test_waits_until_the_metadata_db_answers_then_runs_the_command(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "later"

    # the DB "comes up" once the first check has failed
    def bring_up() -> None:
        time.sleep(8)
        folder.mkdir()

    threading.Thread(target=bring_up, daemon=True).start()
    done = run(
        [str(ENTRYPOINT), "bash", "-c", f"touch {marker}"],
        env={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{folder / 'airflow.db'}",
            "CONNECTION_CHECK_MAX_COUNT": "60",
            "CONNECTION_CHECK_SLEEP_TIME": "1",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "waiting for the metadata DB" in done.stderr
    assert marker.exists()


def test_probe_forms_skip_the_wait(tmp_path):
    """CONNECTION_CHECK_MAX_COUNT=0 (every probe of the chart): no DB check first, so a probe
    answers for the process it checks."""
    db = tmp_path / "missing-dir" / "airflow.db"
    probe = f"CONNECTION_CHECK_MAX_COUNT=0 exec {ENTRYPOINT} python -Wignore -c 'print(42)'"
    done = run(["sh", "-c", probe], env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42" and "waiting" not in done.stderr


def test_chart_init_container_and_liveness_forms(airflow_db, tmp_path):
    """`airflow db check-migrations` passes on a migrated DB and fails on an empty one; the
    scheduler's liveness command reaches `airflow jobs check` (no scheduler runs here: 1)."""
    check = [str(ENTRYPOINT), "airflow", "db", "check-migrations"]
    done = run([*check, "--migration-wait-timeout=30"])
    assert done.returncode == 0, done.stderr
    empty = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'empty.db'}"}
    done = run([*check, "--migration-wait-timeout=1"], env=empty)
    assert done.returncode != 0
    liveness = (
        "CONNECTION_CHECK_MAX_COUNT=0 AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR exec "
        f"{ENTRYPOINT} \\\nairflow jobs check --job-type SchedulerJob --local\n"
    )
    done = run(["sh", "-c", liveness])
    assert done.returncode == 1
    assert "No alive jobs found" in done.stdout + done.stderr
