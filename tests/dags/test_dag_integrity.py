"""Every DAG file loads, is configured on purpose, and parses without heavy or networked work."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tools.airflow_env import offline_parse_env

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
ALLOWED_TAGS = {"postflow", "etl", "ml", "report"}
HEAVY = (
    "torch",
    "torchvision",
    "mlflow",
    "great_expectations",
    "pandas",
    "sklearn",
    "sentence_transformers",
    "connectorx",
    "MySQLdb",
    "boto3",
    "ml.ingest.etl",
    "ml.ingest.shards",
)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_files_exist():
    assert [p.stem for p in DAG_FILES if p.stem != "__init__"], "no DAG files found"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_dag_id_is_file_name(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_configured_on_purpose(dagbag, path):
    dags = [d for d in dagbag.dags.values() if Path(d.fileloc) == path]
    assert dags, f"{path.name} defines no DAG"
    for dag in dags:
        assert dag.tags and set(dag.tags) <= ALLOWED_TAGS, f"tags {dag.tags} not in {ALLOWED_TAGS}"
        assert dag.doc_md and len(dag.doc_md) > 80, "module docstring used as doc_md"
        assert dag.start_date.tzinfo is not None and dag.start_date.utcoffset() == timedelta(0)
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{t.task_id} has no owner"
            assert t.retries >= 1, f"{t.task_id} has no retries"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parse_is_light_and_offline(path):
    """Import the file in a fresh interpreter: no heavy module, no DB or connection touched."""
    code = f"""
import json, runpy, sys
runpy.run_path({str(path)!r})
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    env = offline_parse_env()  # a metadata DB that cannot be opened: touching it fails the test
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_posts_etl_reads_whole_utc_days(dagbag):
    """Scheduled and backfill runs each get [D 00:00, D+1 00:00), logical date = D."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    dag = dagbag.dags["posts_etl"]
    timetable = coerce_to_core_timetable(dag.timetable)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(start - timedelta(days=1), start),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    assert info.data_interval.start == start
    assert info.data_interval.end == start + timedelta(days=1)
    assert info.logical_date == start
    assert not dag.catchup


def test_posts_etl_publishes_clean_asset_after_reconcile(dagbag):
    dag = dagbag.dags["posts_etl"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "extract_posts",
        "plan_shards",
        "validate_posts",
        "merge_posts",
        "reconcile_posts",
    ]
    assert dag.get_task("validate_posts").is_mapped, "validate fans out over id ranges"
    outlets = dag.get_task("reconcile_posts").outlets
    assert [a.name for a in outlets] == ["posts_clean"]
