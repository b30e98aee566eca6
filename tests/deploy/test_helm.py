"""deploy/helm/values.yaml for the official Airflow Helm chart, read as data: no cluster and no
chart here (the chart's values.schema.json is not shipped with postflow), so the keys were checked
by hand against the chart's documented values; these tests hold the values to postflow's own
contracts: images, settings, the GPU pool, the RBAC subject and the Secrets they name."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ml.config import Settings

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy/helm/values.yaml"
SECRETS = REPO / "deploy/helm/secrets.template.yaml"
# the chart's secret-name values and the key each Secret must hold (chart docs)
SECRET_KEYS = {
    ("data", "metadataSecretName"): "connection",
    ("data", "resultBackendSecretName"): "connection",
    ("data", "brokerUrlSecretName"): "connection",
    ("fernetKeySecretName",): "fernet-key",
    ("apiSecretKeySecretName",): "api-secret-key",
    ("jwtSecretName",): "jwt-secret",
    ("redis", "passwordSecretName"): "password",
}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def secrets() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(SECRETS.read_text()) if d]
    assert all(d["kind"] == "Secret" and d["metadata"]["namespace"] == "airflow" for d in docs)
    return {d["metadata"]["name"]: d["stringData"] for d in docs}


def env_of(values: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


def test_airflow_version_images_and_executor(values):
    from tests.deploy.test_dockerfile import pins

    assert values["airflowVersion"] == pins()["apache-airflow"]
    assert values["executor"] == "CeleryExecutor"
    image = values["images"]["airflow"]
    assert image["repository"].endswith("/postflow-airflow") and image["tag"]
    assert (values["defaultAirflowRepository"], values["defaultAirflowTag"]) == (
        image["repository"],
        image["tag"],
    )
    assert env_of(values)["POSTFLOW_K8S_IMAGE"].rsplit("/", 1)[-1] == f"postflow-ml:{image['tag']}"
    assert values["config"]["core"]["auth_manager"].endswith("fab_auth_manager.FabAuthManager")
    assert values["postgresql"]["enabled"] is False, "an external metadata DB"
    assert values["dags"]["gitSync"]["enabled"] is False, "DAGs baked into the image"


def test_settings_are_postflows_and_steps_run_in_pods(values):
    env = env_of(values)
    known = {f"POSTFLOW_{f.name.upper()}" for f in fields(Settings)} | {"POSTFLOW_CONFIG"}
    assert set(env) <= known, set(env) - known
    assert env["POSTFLOW_STEP_RUNNER"] == "kubernetes"
    Settings.load(environ=env)
    assert not [k for k in env if re.search("PASSWORD|SECRET_KEY|TOKEN", k)], "secrets via Secrets"


def test_gpu_pool_is_created_with_the_name_the_steps_use(values):
    env = env_of(values)
    pool = env["POSTFLOW_K8S_GPU_POOL"]
    assert pool == Settings().k8s_gpu_pool
    script = " ".join(values["migrateDatabaseJob"]["args"])
    m = re.search(r"airflow pools set (\S+) (\d+)", script)
    assert m and m.group(1) == pool and int(m.group(2)) >= 1, script
    assert "airflow db migrate" in script, "the job still migrates"
    assert int(env["POSTFLOW_K8S_GPU_TIMEOUT_S"]) > 0


def test_worker_service_account_is_the_rbac_subject(values):
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/k8s/rbac.yaml").read_text()) if d]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    (subject,) = binding["subjects"]
    account = values["workers"]["serviceAccount"]
    assert account["name"] == subject["name"] and subject["namespace"] == "airflow"
    assert binding["metadata"]["namespace"] == env_of(values)["POSTFLOW_K8S_NAMESPACE"]


def test_every_secret_named_is_templated_with_the_key_the_chart_reads(values, secrets):
    for path, key in SECRET_KEYS.items():
        node = values
        for part in path:
            node = node[part]
        assert node in secrets, (path, node)
        assert key in secrets[node], (node, key)
    (ref,) = yaml.safe_load(values["extraEnvFrom"])
    conns = secrets[ref["secretRef"]["name"]]
    assert set(conns) == {"AIRFLOW_CONN_POSTS_MYSQL", "AIRFLOW_CONN_SMTP_DEFAULT"}
    for value in conns.values():
        assert json.loads(value)["conn_type"] in {"mysql", "smtp"}
    for data in secrets.values():
        for value in data.values():
            assert "change-me" in value, "the template holds placeholders only"
