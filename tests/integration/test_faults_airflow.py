"""Faults that Airflow itself sees (issue 13 §1): a step's subprocess killed by SIGKILL (as the
kernel's OOM killer would), two runs of one day at once through `posts_etl`, and the scheduler
of `make up`'s stack killed mid-backfill. Each breaks the real process at an observable moment
(an MLflow run appearing, a file written), never after a sleep, and checks: a clear error,
Airflow's retry completes the work, nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest

from ml.config import Settings
from ml.ingest.etl import ReconciliationError, StaleExtract, clean, extract, reconcile
from ml.lake.partitions import Lake, PartitionWriter
from tests.conftest import (
    REPO,
    VENV_BIN,
    demo_lake,
    etl_days,
    load_dag,
    retrain_environment,
)
from tests.integration import test_backfill_api as bf
from tests.integration.test_etl_stages import WINDOW, ids_of, insert, jpeg
from tests.integration.test_faults import NOW, day_rows
from tools import up

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAYS = [date(2026, 11, 18), date(2026, 11, 19)]


def no_retry_delay(dag, *task_ids: str) -> None:
    """Retry `task_ids` at once (the DAG waits minutes between tries)."""
    for task_id in task_ids:
        task = dag.task_dict[task_id]
        task.retry_delay = timedelta(0)
        task.retry_exponential_backoff = False


def step_children(step: str) -> list[psutil.Process]:
    """This process's descendants running `python -m ml <step>`."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd[1:4] == ["-m", "ml", step]:
            out.append(child)
    return out


# -- the real train step killed by SIGKILL ---------------------------------------------------------


@pytest.fixture(scope="module")
def lake_of_two_days(mysql_db, airflow_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_airflow")
    return demo_lake(mysql_db, root, DAYS, posts=360, seed=7)


@pytest.fixture
def retrain_env(lake_of_two_days, mysql_db, mlflow_server, monkeypatch) -> Settings:
    return retrain_environment(
        lake_of_two_days, mysql_db, mlflow_server, monkeypatch, POSTFLOW_EMBED_SHARDS="1"
    )


class KillWhenRunAppears(threading.Thread):
    """SIGKILLs the `python -m ml train` child as soon as its MLflow run exists: mid-logging,
    before any model version is registered. Records the run and the versions at that moment."""

    def __init__(self, settings: Settings, timeout: float = 900) -> None:
        super().__init__(daemon=True)
        self.settings, self.timeout = settings, timeout
        self.killed_run: str | None = None
        self.versions_then: list | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _watch(self) -> None:
        import mlflow

        uri = self.settings.mlflow_uri
        client = mlflow.MlflowClient(uri, uri)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            exp = client.get_experiment_by_name(self.settings.mlflow_experiment)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs:
                children = step_children("train")
                assert len(children) == 1, children
                children[0].send_signal(signal.SIGKILL)
                self.killed_run = runs[0].info.run_id
                name = self.settings.registered_model
                self.versions_then = client.search_model_versions(f"name='{name}'")
                return
            time.sleep(0.05)
        raise TimeoutError("no MLflow run appeared")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_train_killed_by_sigkill_fails_cleanly_and_the_retry_registers_once(retrain_env, capfd):
    import mlflow

    settings = retrain_env
    etl_days(DAYS, load_dag("posts_etl"))
    retrain = load_dag("retrain", all_dags=True)
    no_retry_delay(retrain, "train_model", "promote_model")

    killer = KillWhenRunAppears(settings)
    killer.start()
    run = retrain.test(run_conf={"days": [d.isoformat() for d in DAYS]})
    killer.join(timeout=5)
    assert killer.error is None, killer.error
    assert killer.killed_run is not None and killer.versions_then == []

    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert str(run.state) == "success", {t: str(ti.state) for t, ti in tis.items()}
    assert tis["train_model"].try_number == 2  # failed once, the retry finished
    assert tis["promote_model"].try_number == 1
    # the clear error of the killed try, in its task log (or the test's output)
    logs = Path(os.environ["AIRFLOW_HOME"], "logs")
    texts = [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()]
    texts.append("".join(capfd.readouterr()))
    assert any("python -m ml train was killed by SIGKILL (out of memory?" in t for t in texts)

    # nothing duplicated: one model version, from the retry's run; champion on it, with tags
    client = mlflow.MlflowClient(settings.mlflow_uri, settings.mlflow_uri)
    name = settings.registered_model
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == ["1"]
    assert versions[0].run_id != killer.killed_run
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1" and champion.tags["postflow.promotion"] == "promoted"
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    # the partitions the retry read are whole (the kill touched no lake data)
    lake = Lake.from_settings(settings)
    for d in DAYS:
        assert lake.read_manifest("features", d) is not None


# -- two posts_etl runs of one day at once, interleaved task by task ---------------------------
# tests/integration/test_faults.py already runs two whole `python -m ml etl` of one day at once
# (and two writers of one partition). posts_etl is three tasks, each its own try: here a
# scheduled run (A) and a backfill (B) of the same day interleave between and inside them,
# while the app keeps writing. The tasks are `ml.ingest.etl.extract/clean/reconcile`, as in the DAG.


@pytest.fixture
def etl_settings(tmp_path: Path, fresh_mysql_db) -> Settings:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(1, 8):
        (images / f"{i}.jpg").write_bytes(jpeg((30 * i, 90, 200 - 20 * i)))
    return Settings.load(
        {
            "mysql_uri": fresh_mysql_db.reader.uri(),
            "lake": str(tmp_path / "lake"),
            "image_root": str(images),
            "image_workers": 1,
            "extract_chunk_rows": 4,
        }
    )


def test_a_backfill_extracting_between_validate_and_reconcile(etl_settings, fresh_mysql_db):
    """A: extract, validate; the app writes; B: extract; A's reconcile fails naming the cause
    (its partitions were built from the older extract) until B's validate lands, then A's retry
    and B both finish: the day is whole, every post once."""
    insert(fresh_mysql_db, day_rows(range(1, 21)))
    extract(etl_settings, WINDOW)
    clean(etl_settings, WINDOW, now=NOW)
    insert(fresh_mysql_db, day_rows(range(21, 31)))
    extract(etl_settings, WINDOW)  # B
    with pytest.raises(ReconciliationError, match="built from extract .* re-run the validate"):
        reconcile(etl_settings, WINDOW)  # A's first try
    clean(etl_settings, WINDOW, now=NOW)  # B
    assert reconcile(etl_settings, WINDOW)["rows_in"] == 30  # B
    assert reconcile(etl_settings, WINDOW)["rows_in"] == 30  # A's retry
    assert_day_whole(etl_settings, range(1, 31))


def assert_day_whole(settings: Settings, ids: range) -> None:
    lake = Lake.from_settings(settings)
    raw = ids_of(lake, "posts_raw")
    assert raw == list(ids)
    both = ids_of(lake, "posts_clean") + ids_of(lake, "quarantine")
    assert sorted(both) == raw, "a post lost or duplicated between posts_clean and quarantine"


def test_a_validate_committing_after_a_newer_one_is_refused(
    etl_settings, fresh_mysql_db, monkeypatch
):
    """A's validate has committed one of its two partitions when B (a newer extract, the app
    having written meanwhile) extracts, validates and reconciles; then A commits the other.
    The day must not end with partitions of two extracts after B said it was whole."""
    insert(fresh_mysql_db, day_rows(range(1, 21)))
    extract(etl_settings, WINDOW)  # A
    paused, go = threading.Event(), threading.Event()
    a_thread: list[threading.Thread] = []
    original = PartitionWriter.commit
    commits = Counter()

    def commit(self):
        if threading.current_thread() in a_thread:
            commits[threading.current_thread()] += 1
            if commits[threading.current_thread()] == 2:  # A's second partition
                paused.set()
                assert go.wait(120)
        return original(self)

    monkeypatch.setattr(PartitionWriter, "commit", commit)
    errors: list[BaseException] = []

    def run_a():
        try:
            clean(etl_settings, WINDOW, now=NOW)
            reconcile(etl_settings, WINDOW)
        except BaseException as exc:  # A may fail, cleanly
            errors.append(exc)

    a = threading.Thread(target=run_a)
    a_thread.append(a)
    a.start()
    assert paused.wait(120)
    insert(fresh_mysql_db, day_rows(range(21, 31)))
    extract(etl_settings, WINDOW)  # B
    clean(etl_settings, WINDOW, now=NOW)
    assert reconcile(etl_settings, WINDOW)["rows_in"] == 30  # B finished
    go.set()
    a.join(120)
    # A's second partition is refused: its validate fails with StaleExtract (a run that raised
    # nothing, or failed otherwise, would have committed over B's day or broken elsewhere)
    assert len(errors) == 1 and type(errors[0]) is StaleExtract, errors
    assert "posts_raw" in str(errors[0]), errors[0]
    assert reconcile(etl_settings, WINDOW)["rows_in"] == 30
    assert_day_whole(etl_settings, range(1, 31))


# -- the scheduler of `make up`'s stack killed mid-backfill -------------------------------------
# The stack as tests/integration/test_backfill_api.py starts it (tools.up: `airflow standalone`,
# LocalExecutor, PostgreSQL metadata when reachable), its own posts and lake. `standalone` does
# not restart a dead component: the operator starts `airflow scheduler` again with the same
# environment. The scheduler's checks for orphaned tasks run every few seconds here instead of
# the defaults (5 min), so that the test takes minutes, not tens of minutes.
ORPHAN_CHECKS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
}
source = bf.source
metadata_db = bf.metadata_db


@pytest.fixture(scope="module")
def standalone(source, metadata_db):
    """(Stack, its environment, the standalone process, its home)."""
    with bf.start_stack(source, metadata_db, ORPHAN_CHECKS) as started:
        yield started


def the_scheduler(standalone_pid: int) -> psutil.Process:
    """`airflow scheduler`, the child standalone started (its executor's workers are its own
    children)."""
    found = []
    for child in psutil.Process(standalone_pid).children():
        try:
            if "scheduler" in child.cmdline()[1:3]:
                found.append(child)
        except psutil.Error:
            continue
    assert len(found) == 1, found
    return found[0]


def dead(proc: psutil.Process) -> bool:
    """Gone, or a zombie (standalone reaps it only when its output pipe closes)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(what: str, check, timeout: float = 300, every: float = 1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(what)


def ti_key(ti: dict) -> tuple[str, str]:
    return ti["dag_run_id"], ti["task_id"]


def running_tasks(stack) -> list[dict]:
    status, body = stack.call(
        "GET", "/api/v2/dags/posts_etl/dagRuns/~/taskInstances?state=running&limit=100"
    )
    assert status == 200, body
    return body["task_instances"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_scheduler_killed_mid_backfill_then_restarted(standalone, source):
    stack, env, proc, home = standalone
    db, settings = source
    days = bf.FIRST
    expected = bf._source_counts(db, days)
    bf._set_paused(stack, False)
    backfill = bf._backfill(stack, days, "none")

    in_flight = wait_for("a task running", lambda: running_tasks(stack), every=0.5)
    scheduler = the_scheduler(proc.pid)
    scheduler.send_signal(signal.SIGKILL)
    wait_for("the scheduler dead", lambda: dead(scheduler), timeout=30, every=0.1)
    assert proc.poll() is None  # standalone itself lives on (and does not restart it)

    # the operator starts the scheduler again, the same way
    log = open(home / "scheduler-restarted.log", "wb")
    restarted = subprocess.Popen(
        [str(VENV_BIN / "airflow"), "scheduler"],
        env=dict(env),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        runs = bf._wait_backfill(stack, backfill["id"], days, timeout=900)
    finally:
        up.stop(restarted)
        log.close()
    assert {str(d): runs[str(d)]["state"] for d in days} == {str(d): "success" for d in days}
    bf._check_partitions(Lake.from_settings(settings), days, expected)
    status, body = stack.call("GET", "/api/v2/dags/posts_etl/dagRuns/~/taskInstances?limit=100")
    assert status == 200, body
    tries = {ti_key(t): (t["state"], t["try_number"]) for t in body["task_instances"]}
    print("in flight at the kill:", [ti_key(t) for t in in_flight])
    print("after:", tries)
    for t in in_flight:  # the task the dead scheduler had started ended well
        assert tries[ti_key(t)][0] == "success"
