"""deploy/k8s/*.yaml: every document is a valid Kubernetes object with no unknown field, agrees
with the defaults in `ml.config.Settings` and with the pod the step runner renders, grants
nothing beyond what the KubernetesPodOperator needs, and holds no credential."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from ml.config import Settings

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"
PLACEHOLDER = "CHANGE_ME"
DEFAULTS = Settings.load({})


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc.get('kind')}/{doc['metadata']['name']}", doc))
    return docs


DOCS = documents()


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def to_model(doc: dict):
    """The kubernetes client model of a manifest (V1Pod, V1Role, ...)."""
    from kubernetes.client import ApiClient

    group_version = doc["apiVersion"]
    version = group_version.rsplit("/", 1)[-1]
    assert version == "v1", f"{group_version}: only stable v1 APIs here"
    return ApiClient()._ApiClient__deserialize(doc, f"V1{doc['kind']}")


def test_manifests_exist():
    kinds = sorted(doc["kind"] for _, doc in DOCS)
    assert kinds == ["Namespace", "Pod", "Role", "RoleBinding", "Secret", "ServiceAccount"]


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_document_is_a_valid_object_without_unknown_fields(name, doc):
    from kubernetes.client import ApiClient

    model = to_model(doc)
    assert type(model).__name__ == f"V1{doc['kind']}"
    # Unknown or misspelt keys are dropped by the model: the round trip would differ.
    assert ApiClient().sanitize_for_serialization(model) == doc
    ns = doc["metadata"].get("namespace", doc["metadata"]["name"])
    assert ns == DEFAULTS.k8s_namespace


def test_names_agree_with_settings():
    assert [d["metadata"]["name"] for d in by_kind("Namespace")] == [DEFAULTS.k8s_namespace]
    assert [d["metadata"]["name"] for d in by_kind("Secret")] == [DEFAULTS.k8s_secret]
    (sa,) = by_kind("ServiceAccount")
    assert sa["metadata"]["name"] == DEFAULTS.k8s_service_account
    assert sa["automountServiceAccountToken"] is False


def test_pod_template_agrees_with_settings():
    from postflow_airflow.pod_runner import ML_COMMAND, parse_node_selector, parse_tolerations

    (pod,) = by_kind("Pod")
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["image"] == DEFAULTS.k8s_image
    assert c["command"] == list(ML_COMMAND)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(DEFAULTS.k8s_gpus)
    assert spec["nodeSelector"] == parse_node_selector(DEFAULTS.k8s_node_selector)
    assert spec["tolerations"] == parse_tolerations(DEFAULTS.k8s_tolerations)
    assert c["envFrom"] == [{"secretRef": {"name": DEFAULTS.k8s_secret}}]
    assert spec["serviceAccountName"] == DEFAULTS.k8s_service_account
    assert spec["automountServiceAccountToken"] is False


def test_pod_template_agrees_with_the_rendered_operator_pod(monkeypatch):
    """The fields the template and a rendered GPU step share are equal."""
    from kubernetes.client import ApiClient
    from postflow_airflow.steps import ml_step

    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes"}')
    op = ml_step(
        "embed_posts",
        "embed",
        ["--ds", "2026-11-01"],
        settings=DEFAULTS.replace(step_runner="kubernetes"),
    )
    rendered = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    (template,) = by_kind("Pod")
    t_spec, r_spec = template["spec"], rendered["spec"]
    for key in (
        "serviceAccountName",
        "automountServiceAccountToken",
        "restartPolicy",
        "securityContext",
        "nodeSelector",
        "tolerations",
    ):
        assert t_spec[key] == r_spec[key], key
    assert template["metadata"]["namespace"] == rendered["metadata"]["namespace"]
    assert template["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    t_c, r_c = t_spec["containers"][0], r_spec["containers"][0]
    for key in ("name", "image", "imagePullPolicy", "resources", "securityContext", "envFrom"):
        assert t_c[key] == r_c[key], key
    assert [e for e in t_c["env"] if e not in r_c["env"]] == []
    assert all(m in r_c["volumeMounts"] for m in t_c["volumeMounts"])
    assert all(v in r_spec["volumes"] for v in t_spec["volumes"])


def test_step_pods_get_no_kubernetes_api_access():
    (sa,) = by_kind("ServiceAccount")
    for binding in by_kind("RoleBinding"):
        for subject in binding["subjects"]:
            assert subject["name"] != sa["metadata"]["name"], "the ML pods' account is bound"


def test_launcher_role_is_least_privilege():
    (role,) = by_kind("Role")
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not [g for g in granted if "*" in g], "no wildcards"
    assert {(r, v) for _, r, v in granted} <= {
        *(("pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")),
        ("pods/log", "get"),
        ("pods/exec", "create"),
        ("pods/exec", "get"),
        ("events", "list"),
    }
    assert {g for g, _, _ in granted} == {""}


def test_secret_template_holds_only_placeholders():
    (secret,) = by_kind("Secret")
    assert "data" not in secret, "base64 data is not a template"
    values = secret["stringData"]
    needed = {"POSTFLOW_MYSQL_URI", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"}
    assert needed <= set(values)
    # one MLflow URI: the workers', handed to the pod as an env literal (pod_runner)
    assert "POSTFLOW_MLFLOW_URI" not in values
    for key, value in values.items():
        if "://" in value:
            password = urlsplit(value).password
            assert password in (None, PLACEHOLDER), f"{key} has a password in its URI"
        else:
            assert value == PLACEHOLDER, f"{key} is not a placeholder"
