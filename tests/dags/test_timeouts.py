"""Every ETL task and every locally run ML step has an execution_timeout: a hung MySQL read or a
stuck step fails (and alerts) instead of holding a worker slot for good."""

from __future__ import annotations

from datetime import timedelta

from ml.config import Settings
from tests.conftest import load_dag


def test_every_posts_etl_task_has_the_etl_timeout():
    dag = load_dag("posts_etl")
    expected = timedelta(seconds=Settings().etl_timeout_s)
    assert dag.tasks
    for t in dag.tasks:
        assert t.execution_timeout == expected, t.task_id


def test_a_zero_setting_means_no_timeout(monkeypatch):
    from postflow_airflow.settings import execution_timeout

    monkeypatch.setenv("POSTFLOW_ETL_TIMEOUT_S", "0")
    assert execution_timeout("etl_timeout_s") is None
    monkeypatch.setenv("POSTFLOW_ETL_TIMEOUT_S", "90")
    assert execution_timeout("etl_timeout_s") == timedelta(seconds=90)
