"""deploy/helm/values.yaml for the official Airflow Helm chart, read as data (no cluster here).
Its keys are checked by machine against the chart's own values.schema.json, vendored in
tests/deploy/airflow-chart/ (chart version, commit and refresh steps in its README), and the
header's chart version must be that one. The other tests hold the values to postflow's own
contracts: images, settings, the GPU pool, the RBAC subject and the Secrets they name."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from ml.config import Settings

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy/helm/values.yaml"
SECRETS = REPO / "deploy/helm/secrets.template.yaml"
# the chart's values.schema.json, vendored unedited, and the README that says which chart it is
CHART_SCHEMA = REPO / "tests/deploy/airflow-chart/values.schema.json"
CHART_README = REPO / "tests/deploy/airflow-chart/README.md"
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


@pytest.fixture(scope="module")
def chart_schema() -> dict:
    return json.loads(CHART_SCHEMA.read_text())


def vendored_chart() -> dict[str, str]:
    """The README's `Chart version:`, `appVersion:`, `Commit:` and `Blob:` lines."""
    keys = ("Chart version", "appVersion", "Commit", "Blob")
    found = re.findall(rf"^({'|'.join(keys)}): (\S+)$", CHART_README.read_text(), re.MULTILINE)
    assert sorted(k for k, _ in found) == sorted(keys), found
    return dict(found)


def schema_errors(values: dict, schema: dict) -> list[str]:
    """What the chart's schema rejects in `values`, as `path: message` lines."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in cls(schema).iter_errors(values)
    ]
    # The schema's top level has no `additionalProperties: false` (its sections do): a misspelt
    # top-level key would pass it, and the chart would ignore it. So each must be a chart value.
    unknown = [key for key in values if key not in schema["properties"]]
    errors += [f"{key}: not a value of the chart" for key in unknown]
    return errors


def header_text() -> str:
    """values.yaml's leading comment, its lines joined with single spaces."""
    lines = []
    for line in VALUES.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(" ".join(lines).split())


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
    init = (REPO / "deploy/airflow/airflow-init.sh").read_text()
    assert "airflow db migrate" in init and "airflow fab-db migrate" in init, "it migrates"
    assert int(env["POSTFLOW_K8S_GPU_TIMEOUT_S"]) > 0


def test_worker_and_triggerer_service_accounts_are_the_rbac_subjects(values):
    """Workers launch the GPU pods; deferred (deferrable=True), the triggerer watches them."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/k8s/rbac.yaml").read_text()) if d]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
    accounts = {values[c]["serviceAccount"]["name"] for c in ("workers", "triggerer")}
    assert all(values[c]["serviceAccount"]["create"] for c in ("workers", "triggerer"))
    assert subjects == {(a, "airflow") for a in accounts}
    assert binding["metadata"]["namespace"] == env_of(values)["POSTFLOW_K8S_NAMESPACE"]


def secret_refs(env: list[dict]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_no_default_admin_users_come_from_a_secret(values, secrets):
    """The chart's create-user job would make admin/admin: off. The migration job creates the
    FAB users with passwords from a Secret, with the script compose's airflow-init runs."""
    job = values["createUserJob"]
    assert job["enabled"] is False and job["defaultUser"]["enabled"] is False
    assert "defaultUser" not in values.get("webserver", {}), "the deprecated switch stays unset"
    migrate = values["migrateDatabaseJob"]
    refs = secret_refs(migrate["env"])
    assert set(refs) == {"AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_VIEWER_PASSWORD"}
    for name, key in refs.values():
        assert key in secrets[name], (name, key)
    assert "bash /opt/postflow/airflow-init.sh" in " ".join(migrate["args"])


def test_workers_get_s3_and_mlflow_credentials_from_a_secret(values, secrets):
    refs = secret_refs(values["workers"]["env"])
    needed = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    needed |= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert needed <= set(refs)
    for name, key in refs.values():
        assert key in secrets[name], (name, key)
    assert not [e for e in values["workers"]["env"] if "value" in e and e["name"] in needed]


def test_one_mlflow_uri_and_the_api_base_url(values):
    """The workers' POSTFLOW_MLFLOW_URI is the only one (the pods get it from them); failure
    mails link to [api] base_url, which must be a real address."""
    uris = [e for e in values["env"] if e["name"] == "POSTFLOW_MLFLOW_URI"]
    assert len(uris) == 1 and uris[0]["value"].startswith("https://")
    pod_secret = yaml.safe_load((REPO / "deploy/k8s/secret.template.yaml").read_text())
    assert "POSTFLOW_MLFLOW_URI" not in pod_secret["stringData"]
    base_url = values["config"]["api"]["base_url"]
    assert base_url.startswith("https://") and "localhost" not in base_url


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


def test_values_validate_against_the_charts_schema(values, chart_schema):
    assert schema_errors(values, chart_schema) == []


@pytest.mark.parametrize(
    ("path", "planted"),
    [
        (("workers", "serviceAcount"), {"name": "airflow-worker"}),  # misspelt section key
        (("data", "metadataSecret"), "postflow-airflow-metadata"),  # misspelt secret name key
        (("executer",), "CeleryExecutor"),  # misspelt top-level key
        (("workers", "replicas"), "two"),  # wrong type
    ],
)
def test_schema_check_rejects_misspelt_keys(values, chart_schema, path, planted):
    broken = copy.deepcopy(values)
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = planted
    errors = schema_errors(broken, chart_schema)
    assert errors and any(path[-1] in e or ".".join(path) in e for e in errors), errors


def test_vendored_schema_is_the_chart_the_readme_and_header_name(values, chart_schema):
    chart = vendored_chart()
    data = CHART_SCHEMA.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert blob == chart["Blob"], "values.schema.json was edited, or the README names another blob"
    # the README's appVersion is the vendored schema's own default Airflow
    for key in ("airflowVersion", "defaultAirflowTag"):
        assert chart_schema["properties"][key]["default"] == chart["appVersion"], key
    header = header_text()
    named = set(re.findall(r"\bchart (\d+\.\d+\.\d+)", header, re.IGNORECASE))
    named |= set(re.findall(r"--version (\S+)", header))
    assert named == {chart["Chart version"]}, "the header installs and names the vendored chart"
    assert f"defaults to Airflow {chart['appVersion']}" in header, header
    assert f"runs Airflow {values['airflowVersion']}" in header, header
    assert Version(values["airflowVersion"]) >= Version(chart["appVersion"])
