"""Where ML steps run: the Celery queue of the worker with torch (compose), and the pool and
execution_timeout that bound GPU pods (Kubernetes)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ml.config import Settings
from tests.conftest import load_dag

DS = "2026-11-01"


@pytest.fixture
def k8s(monkeypatch) -> Settings:
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes"}')
    return Settings.load({"step_runner": "kubernetes"})


def test_steps_take_the_configured_queue_default_unchanged(k8s):
    from postflow_airflow.steps import ml_step, ml_step_mapped

    assert ml_step("e", "embed", ["--ds", DS], settings=Settings.load()).queue == "default"
    ml = Settings.load({"ml_queue": "ml"})
    assert ml_step("e", "embed", ["--ds", DS], settings=ml).queue == "ml"
    assert ml_step("e", "embed", [], settings=k8s.replace(ml_queue="ml")).queue == "ml"
    # a DAG may still put one step elsewhere
    assert ml_step("e", "embed", [], settings=ml, queue="gpu-big").queue == "gpu-big"
    from airflow.sdk import DAG

    with DAG("routing", schedule=None):
        mapped = ml_step_mapped("m", "embed", [["--ds", DS]], settings=ml)
    assert mapped.queue == "ml"


def test_gpu_pods_get_the_pool_and_a_timeout_cpu_pods_do_not(k8s):
    from postflow_airflow.steps import ml_step

    gpu = ml_step("embed_posts", "embed", ["--ds", DS], settings=k8s)
    assert gpu.pool == "postflow_gpu"
    assert gpu.execution_timeout == timedelta(hours=6)
    cpu = ml_step("tune_bins", "tune-bins", [], settings=k8s)
    assert cpu.pool == "default_pool" and cpu.execution_timeout is None
    custom = k8s.replace(k8s_gpu_pool="a100", k8s_gpu_timeout_s=600)
    gpu = ml_step("train_model", "train", [], settings=custom)
    assert (gpu.pool, gpu.execution_timeout) == ("a100", timedelta(minutes=10))
    none = k8s.replace(k8s_gpu_pool="", k8s_gpu_timeout_s=0)
    gpu = ml_step("train_model", "train", [], settings=none)
    assert (gpu.pool, gpu.execution_timeout) == ("default_pool", None)
    # local steps are capped by the ML worker's concurrency, not by a pool, and by their own
    # timeout (POSTFLOW_LOCAL_STEP_TIMEOUT_S)
    local_settings = Settings.load()
    local = ml_step("train_model", "train", [], settings=local_settings)
    assert local.pool == "default_pool"
    assert local.execution_timeout == timedelta(seconds=local_settings.local_step_timeout_s)


def test_the_pool_and_queue_settings_stay_off_the_pod_env(k8s):
    from postflow_airflow.steps import ml_step

    op = ml_step("embed_posts", "embed", [], settings=k8s.replace(ml_queue="ml"))
    names = {e.name for e in op.env_vars}
    assert not {n for n in names if n.startswith(("POSTFLOW_K8S_", "POSTFLOW_ML_QUEUE"))}


def test_retrain_routes_every_ml_step_to_the_ml_queue(monkeypatch):
    monkeypatch.setenv("POSTFLOW_ML_QUEUE", "ml")
    dag = load_dag("retrain")
    ml_tasks = {"embed_posts", "merge_features", "check_source", "train_model", "promote_model"}
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert {queues[t] for t in ml_tasks} == {"ml"}, queues
    assert {q for t, q in queues.items() if t not in ml_tasks} <= {"default"}, queues
