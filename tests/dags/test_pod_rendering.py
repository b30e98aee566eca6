"""The step runner: the pod a Kubernetes step would get (built, serialized, read back; no
cluster here), and the local runner run for real on cheap `ml` steps, once through `dag.test()`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml.config import Settings
from tools.airflow_env import offline_parse_env

DS = "2026-11-01"
SECRET_BITS = ("s3cret-pw", "tr4cking-tok")
K8S = {
    "step_runner": "kubernetes",
    "k8s_image": "registry.example/postflow-ml:1.2.3",
    "k8s_namespace": "ml-prod",
    "k8s_service_account": "ml-runner",
    "k8s_secret": "ml-creds",
    "k8s_gpus": 2,
    "k8s_node_selector": "nvidia.com/gpu.present=true, pool=a100",
    "k8s_tolerations": "nvidia.com/gpu=present:NoSchedule,dedicated:NoExecute",
    "mysql_uri": f"mysql://reader:{SECRET_BITS[0]}@db.internal:3306/postflow",
    "mlflow_uri": f"http://ml:{SECRET_BITS[1]}@mlflow.internal:5000",
    "lake": "s3://lake/postflow",
}


@pytest.fixture
def k8s_settings(monkeypatch) -> Settings:
    # The provider reads the (absent) kubernetes_default connection while building a pod.
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes"}')
    return Settings.load(K8S)


def exec_argv(container) -> list[str]:
    """What the container runs once the XCom wrapper (`python -c POD_WRAPPER`) hands over."""
    from postflow_airflow.pod_runner import POD_WRAPPER

    argv = [*container.command, *container.args]
    assert argv[:3] == ["python", "-c", POD_WRAPPER]
    return argv[3:]


def build_pod(op):
    return op.build_pod_request_obj(dry_run=True)


# -- kubernetes ---------------------------------------------------------------------------------


def test_embed_step_renders_a_gpu_pod(k8s_settings):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from postflow_airflow.links import MLflowRunLink
    from postflow_airflow.steps import ml_step

    op = ml_step("embed_posts", "embed", ["--ds", DS, "--shard", "0/2"], settings=k8s_settings)
    assert isinstance(op, KubernetesPodOperator)
    assert type(op).__name__ == "MLStepPodOperator"
    assert [type(link) for link in op.operator_extra_links] == [MLflowRunLink]
    assert op.do_xcom_push and op.get_logs and op.on_finish_action == "delete_succeeded_pod"
    pod = build_pod(op)

    base, sidecar = pod.spec.containers
    assert base.image == "registry.example/postflow-ml:1.2.3"
    assert exec_argv(base) == ["python", "-m", "ml", "embed", "--ds", DS, "--shard", "0/2"]
    assert base.resources.limits["nvidia.com/gpu"] == "2"
    assert {"cpu", "memory"} <= set(base.resources.requests)
    assert pod.metadata.namespace == "ml-prod"
    assert pod.metadata.labels["app"] == "postflow" and pod.metadata.labels["step"] == "embed"
    assert pod.spec.service_account_name == "ml-runner"
    assert pod.spec.automount_service_account_token is False
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    assert [t.to_dict() for t in pod.spec.tolerations] == [
        {
            "key": "nvidia.com/gpu",
            "operator": "Equal",
            "value": "present",
            "effect": "NoSchedule",
            "toleration_seconds": None,
        },
        {
            "key": "dedicated",
            "operator": "Exists",
            "value": None,
            "effect": "NoExecute",
            "toleration_seconds": None,
        },
    ]
    assert [e.secret_ref.name for e in base.env_from] == ["ml-creds"]

    env = {e.name: e.value for e in base.env}
    assert env["POSTFLOW_LAKE"] == "s3://lake/postflow"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "POSTFLOW_MYSQL_URI" not in env
    # the workers' MLflow URI, its credentials left to the Secret (MLFLOW_TRACKING_*)
    assert env["POSTFLOW_MLFLOW_URI"] == "http://mlflow.internal:5000"
    assert not [k for k in env if k.startswith(("POSTFLOW_K8S_", "POSTFLOW_STEP_RUNNER"))]
    # The XCom sidecar is there, and every container would pass Pod Security "restricted".
    assert sidecar.name == "airflow-xcom-sidecar"
    assert {"name": "xcom", "mount_path": "/airflow/xcom"} in [
        {"name": m.name, "mount_path": m.mount_path} for m in base.volume_mounts
    ]
    assert pod.spec.security_context.run_as_non_root
    for c in pod.spec.containers:
        assert c.security_context.allow_privilege_escalation is False
        assert c.security_context.capabilities.drop == ["ALL"]
        assert c.security_context.seccomp_profile.type == "RuntimeDefault"


def test_gpu_pods_wait_deferred_with_a_pod_side_deadline_and_need_cuda(k8s_settings):
    """The triggerer waits for a GPU pod (no worker slot held for hours); the pod stops itself at
    the deadline (activeDeadlineSeconds) even with no Airflow process left to kill it; and a node
    without a usable GPU fails the step (POSTFLOW_DEVICE=cuda) instead of embedding on CPU."""
    from postflow_airflow.steps import ml_step

    op = ml_step("embed_posts", "embed", ["--ds", DS], settings=k8s_settings)
    assert op.deferrable is True
    deadline = k8s_settings.k8s_gpu_timeout_s
    assert op.execution_timeout == timedelta(seconds=deadline)
    pod = build_pod(op)
    assert pod.spec.active_deadline_seconds == deadline > 0
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["POSTFLOW_DEVICE"] == "cuda"
    cpu = ml_step("tune_bins", "tune-bins", [], settings=k8s_settings)
    assert not cpu.deferrable
    cpu_pod = build_pod(cpu)
    assert cpu_pod.spec.active_deadline_seconds is None
    cpu_env = {e.name: e.value for e in cpu_pod.spec.containers[0].env}
    assert cpu_env["POSTFLOW_DEVICE"] == k8s_settings.device != "cuda"


def test_local_steps_get_an_execution_timeout():
    from postflow_airflow.steps import ml_step

    settings = Settings.load({"step_runner": "local"})
    op = ml_step("train_model", "train", [], settings=settings)
    assert op.execution_timeout == timedelta(seconds=settings.local_step_timeout_s)
    op = ml_step("train_model", "train", [], settings=settings, execution_timeout=timedelta(60))
    assert op.execution_timeout == timedelta(60), "a DAG's own timeout wins"


def test_pod_serializes_without_secrets_and_round_trips(k8s_settings):
    from kubernetes.client import ApiClient, V1Pod
    from postflow_airflow.steps import ml_step

    op = ml_step("embed_posts", "embed", ["--ds", DS, "--shard", "1/2"], settings=k8s_settings)
    pod = build_pod(op)
    api = ApiClient()
    data = api.sanitize_for_serialization(pod)
    text = json.dumps(data)
    assert not [s for s in SECRET_BITS if s in text], "a credential is in the pod spec"
    assert data["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "ml-creds"}}]
    back = api._ApiClient__deserialize(json.loads(text), "V1Pod")
    assert isinstance(back, V1Pod)
    assert api.sanitize_for_serialization(back) == data
    # equal models too, but for the provider's `affinity={}` (a dict, read back as V1Affinity())
    assert back.metadata == pod.metadata
    assert back.spec.containers == pod.spec.containers
    assert back.spec.volumes == pod.spec.volumes
    assert back.spec.tolerations == pod.spec.tolerations


def test_cpu_step_gets_no_gpu_and_no_gpu_node(k8s_settings):
    from postflow_airflow.steps import ml_step

    pod = build_pod(ml_step("tune_bins", "tune-bins", ["--start", DS], settings=k8s_settings))
    base = pod.spec.containers[0]
    assert "nvidia.com/gpu" not in (base.resources.limits or {})
    assert not pod.spec.node_selector and not pod.spec.tolerations
    # a DAG may still ask for one, and override resources
    pod = build_pod(ml_step("tune_bins", "tune-bins", [], gpu=True, settings=k8s_settings))
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"


def test_arguments_are_templated_in_both_modes(k8s_settings):
    from postflow_airflow.local_runner import MLStepOperator
    from postflow_airflow.steps import ml_step

    args = ["--ds", "{{ ds }}", "--start", "{{ data_interval_start | ds }}"]
    context = {"ds": DS, "data_interval_start": datetime(2026, 10, 25, tzinfo=UTC)}
    for op in (
        ml_step("embed_posts", "embed", args, settings=k8s_settings),
        ml_step("embed_posts", "embed", args, settings=Settings.load()),
    ):
        op.render_template_fields(context)
        assert op.arguments == ["--ds", DS, "--start", "2026-10-25"]
    assert isinstance(op, MLStepOperator)


def test_mapped_steps_serialize_with_the_link(k8s_settings):
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization
    from postflow_airflow.steps import ml_step_mapped

    shards = [["--ds", "{{ ds }}", "--shard", f"{i}/2"] for i in range(2)]
    with DAG("mapped", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
        ml_step_mapped("embed_pod", "embed", shards, settings=k8s_settings)
        ml_step_mapped("embed_local", "embed", shards, settings=Settings.load())
    tasks = {
        t["__var"]["task_id"]: t["__var"] for t in DagSerialization.to_dict(dag)["dag"]["tasks"]
    }
    for task_id, task_type, module in (
        ("embed_pod", "MLStepPodOperator", "postflow_airflow.pod_runner"),
        ("embed_local", "MLStepOperator", "postflow_airflow.local_runner"),
    ):
        t = tasks[task_id]
        assert t["_is_mapped"] and t["task_type"] == task_type
        assert t["_task_module"] == module
        assert t["_operator_extra_links"] == {"MLflow run": "_link_MLflowRunLink"}
        assert t["expand_input"]["value"]["__var"]["arguments"] == shards


def test_unknown_runner_or_step_fails_at_parse():
    from postflow_airflow.steps import ml_step

    with pytest.raises(ValueError, match="step_runner|STEP_RUNNER"):
        ml_step("x", "embed", [], settings=Settings.load({"step_runner": "docker"}))
    with pytest.raises(ValueError, match="unknown ml step"):
        ml_step("x", "embedd", [], settings=Settings.load())


def test_parse_helpers():
    from postflow_airflow.pod_runner import parse_node_selector, parse_tolerations
    from postflow_airflow.settings import settings_env

    assert parse_node_selector("a=1, b.io/c=x") == {"a": "1", "b.io/c": "x"}
    assert parse_node_selector("") == {}
    assert parse_tolerations("k:NoSchedule") == [
        {"key": "k", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for bad in ("k=v", "k=v:Sometimes"):
        with pytest.raises(ValueError):
            parse_tolerations(bad)
    with pytest.raises(ValueError):
        parse_node_selector("novalue")
    s = Settings.load(K8S | {"s3_endpoint": None})
    env = settings_env(s) | {"POSTFLOW_CONFIG": ""}
    assert Settings.load(environ=env) == s
    assert not set(settings_env(s, secrets=False)) & {"POSTFLOW_MYSQL_URI", "POSTFLOW_MLFLOW_URI"}


# -- the MLflow link ----------------------------------------------------------------------------


def test_mlflow_link(monkeypatch):
    from postflow_airflow import links

    result = {"run_id": "abc123", "experiment_id": "7", "accuracy": 0.5}
    assert (
        links.mlflow_run_url(result, "", "https://user:pw@mlflow.example/")
        == "https://mlflow.example/#/experiments/7/runs/abc123"
    )
    assert links.mlflow_run_url(result, "http://ui:8080/mlflow", "sqlite:///x.db") == (
        "http://ui:8080/mlflow/#/experiments/7/runs/abc123"
    )
    assert links.mlflow_run_url(result, "", "sqlite:///x.db") == ""
    with_url = result | {"run_url": "http://u:p@mlflow:5000/#/experiments/7/runs/abc123"}
    assert links.mlflow_run_url(with_url, "", "sqlite:///x.db") == (
        "http://mlflow:5000/#/experiments/7/runs/abc123"
    )
    assert links.mlflow_run_url({"mlflow": {"run_id": "r", "experiment_id": "1"}}, "http://m", "")
    # a lake run id alone (ETL results) is no MLflow run
    assert links.mlflow_run_url({"run_id": "20261101T000000-ab"}, "http://m", "") == ""
    assert links.mlflow_run_url(None, "http://m", "") == ""

    from airflow.sdk.execution_time import xcom

    seen = {}

    def get_value(*, ti_key, key):
        seen.update(ti_key=ti_key, key=key)
        return result

    monkeypatch.setattr(xcom.XCom, "get_value", get_value)
    monkeypatch.setenv("POSTFLOW_MLFLOW_UI_URL", "https://mlflow.example")
    url = links.MLflowRunLink().get_link(None, ti_key="TI")
    assert url == "https://mlflow.example/#/experiments/7/runs/abc123"
    assert seen == {"ti_key": "TI", "key": "return_value"}


# -- local: real subprocesses -------------------------------------------------------------------


@pytest.fixture
def tiny_lake(tmp_path, monkeypatch) -> Path:
    """One posts_clean partition of 40 posts created that day, labelled at horizon 0 (what
    `tune-bins` reads)."""
    from ml.lake.partitions import Lake
    from tools.synthetic import write_posts_clean

    created = datetime(2026, 11, 1, 12)  # in DS's window: the labelled population
    n = 40
    root = tmp_path / "lake"
    write_posts_clean(
        Lake(str(root)),
        DS,
        {
            "id": list(range(n)),
            "caption": [f"post {i}" for i in range(n)],
            "hearts": [1 + i for i in range(n)],
            "comment_count": [i * i for i in range(n)],
            "created_at": [created] * n,
            "updated_at": [created] * n,
        },
    )
    monkeypatch.setenv("POSTFLOW_LAKE", str(root))
    monkeypatch.setenv("POSTFLOW_CONFIG", "")
    monkeypatch.setenv("POSTFLOW_LABEL_HORIZON_DAYS", "0")
    return root


def test_local_step_returns_its_json(tiny_lake):
    from postflow_airflow.local_runner import MLStepOperator

    op = MLStepOperator(
        task_id="tune_bins", step="tune-bins", arguments=["--start", DS, "--end", DS]
    )
    result = op.execute({})
    assert result["rows"] == 40 and len(result["proposed_edges"]) == 8


def test_local_step_without_json_returns_none():
    from postflow_airflow.local_runner import MLStepOperator

    assert MLStepOperator(task_id="help", step="embed", arguments=["--help"]).execute({}) is None


def test_local_step_failure_carries_stderr_tail():
    from postflow_airflow.local_runner import MLStepFailed, MLStepOperator

    op = MLStepOperator(
        task_id="bad", step="tune-bins", arguments=["--start", DS, "--end", DS, "--bogus-flag"]
    )
    with pytest.raises(MLStepFailed, match=r"(?s)exited with 2.*unrecognized arguments: --bogus"):
        op.execute({})


@pytest.mark.slow
def test_local_step_gets_the_posts_mysql_connection(monkeypatch):
    """The connection's target reaches the child as POSTFLOW_MYSQL_URI (nothing listens there)."""
    from postflow_airflow.local_runner import MLStepFailed, MLStepOperator

    monkeypatch.setenv("AIRFLOW_CONN_POSTS_MYSQL", "mysql://rdr:pw@127.0.0.1:1/from_conn_db")
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", "mysql://env@127.0.0.1:2/from_env_db")
    op = MLStepOperator(task_id="x", step="etl", arguments=["--start", DS, "--step", "extract"])
    with pytest.raises(MLStepFailed) as err:
        op.execute({})
    assert "from_conn_db" in str(err.value) and "from_env_db" not in str(err.value)


def test_pod_wrapper_writes_the_xcom_file(tiny_lake, tmp_path, k8s_settings):
    """The container command, run here with this interpreter for `python`."""
    from postflow_airflow.steps import ml_step

    base = build_pod(ml_step("t", "tune-bins", ["--start", DS, "--end", DS], settings=k8s_settings))
    argv = [*base.spec.containers[0].command, *base.spec.containers[0].args]
    argv = [sys.executable if a == "python" else a for a in argv]
    (tmp_path / "xcom").mkdir()
    out = tmp_path / "xcom" / "return.json"
    env = {**os.environ, "POSTFLOW_XCOM_FILE": str(out)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == json.loads(proc.stdout.strip().splitlines()[-1])
    out.unlink()
    argv[argv.index("tune-bins") + 1 :] = ["--bogus-flag"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not out.exists()


def test_local_steps_in_dag_test(airflow_db, tiny_lake):
    """Mapped local steps through real Airflow: `{{ ds }}` rendered per instance, each result in
    its XCom, the MLflow link computed as each task ends (empty: tune-bins logs no run)."""
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG
    from airflow.utils.session import create_session
    from postflow_airflow.steps import ml_step_mapped

    with DAG(
        "pf_step_runner_test",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        default_args={"retries": 0},
    ) as dag:
        ml_step_mapped(
            "tune_bins",
            "tune-bins",
            [["--start", "{{ ds }}", "--end", "{{ ds }}", "--n-bins", str(n)] for n in (4, 6)],
        )
    _sync_to_db(dag)
    run = dag.test(logical_date=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=1))
    assert str(run.state) == "success"
    with create_session() as session:
        rows = session.execute(
            XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id).with_only_columns(
                XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value
            )
        ).all()
    values = {(r.task_id, r.map_index, r.key): XComModel.deserialize_value(r) for r in rows}
    for i, n in enumerate((4, 6)):
        assert values[("tune_bins", i, "return_value")]["rows"] == 40
        assert len(values[("tune_bins", i, "return_value")]["proposed_edges"]) == n
        assert values[("tune_bins", i, "_link_MLflowRunLink")] == ""


def _sync_to_db(dag) -> None:
    """Store a DAG defined in a test (not in a bundle's folder) as the DAG processor would, so
    that `dag.test()` finds it serialized."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session
        )


@pytest.mark.parametrize("runner", ["local", "kubernetes"])
def test_building_steps_is_offline_and_light(runner):
    """What a DAG file pays at parse time: no DB, no connection, no heavy module; the
    kubernetes client only in kubernetes mode."""
    code = """
import json, sys
from datetime import datetime, timezone
from airflow.sdk import DAG
from postflow_airflow.steps import ml_step, ml_step_mapped
with DAG("parse", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    ml_step("embed_merge", "embed", ["--ds", "{{ ds }}", "--merge-shards", "2"])
    ml_step_mapped("embed", "embed", [["--ds", "{{ ds }}", "--shard", f"{i}/2"] for i in (0, 1)])
mods = ("torch", "pandas", "mlflow", "sklearn", "MySQLdb", "boto3", "kubernetes", "ml.ingest.etl")
print(json.dumps(sorted(m for m in mods if m in sys.modules)))
"""
    env = offline_parse_env({"POSTFLOW_CONFIG": "", "POSTFLOW_STEP_RUNNER": runner})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == ([] if runner == "local" else ["kubernetes"])
