"""The Kubernetes step runner: the same `python -m ml <step>` in a pod of the ML image
(KubernetesPodOperator). Credentials come from the Secret `k8s_secret` (envFrom), every other
setting is an env literal; GPU steps get `nvidia.com/gpu`, the GPU node selector and tolerations,
the pool `k8s_gpu_pool` (caps how many run at once), an `execution_timeout` and the same
`activeDeadlineSeconds` on the pod, POSTFLOW_DEVICE=cuda (no GPU: the step fails, it does not
embed on CPU), and wait deferred (the triggerer watches the pod, no worker slot held). `POD_WRAPPER`
runs the command and writes its JSON result to /airflow/xcom/return.json, where the provider's
XCom sidecar picks it up."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import BaseOperator

from postflow_airflow.links import MLflowRunLink
from postflow_airflow.settings import RUNNER_ENV_PREFIXES, settings_env

if TYPE_CHECKING:
    from ml.config import Settings


XCOM_RESULT_FILE = "/airflow/xcom/return.json"
ML_COMMAND = ("python", "-m", "ml")

# Pod resources by kind of step; a DAG can pass container_resources= to override.
GPU_REQUESTS = {"cpu": "8", "memory": "24Gi"}
GPU_LIMITS = {"memory": "24Gi"}  # plus nvidia.com/gpu: k8s_gpus
CPU_REQUESTS = {"cpu": "1", "memory": "2Gi"}
CPU_LIMITS = {"memory": "4Gi"}
SHM_SIZE = "8Gi"  # /dev/shm for DataLoader workers (a container's default is 64 MiB)
RUN_AS = 10001  # the ML image's non-root user

# Runs as the pod's command ahead of `python -m ml <step> ...`: streams the step's stdout,
# forwards SIGTERM to it, and on success writes the last stdout line (if JSON) where the
# KubernetesPodOperator's XCom sidecar reads it. `python -c` because the ML image has Python
# but no promise of a shell with pipefail.
POD_WRAPPER = """\
import json, os, signal, subprocess, sys
env = dict(os.environ, PYTHONUNBUFFERED="1")
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True, errors="replace", env=env)
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
last = ""
for line in child.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    if line.strip():
        last = line.strip()
rc = child.wait()
if rc == 0:
    try:
        value = json.loads(last)
    except ValueError:
        value = None
    path = os.environ.get("POSTFLOW_XCOM_FILE", "@XCOM_RESULT_FILE@")
    if value is not None and os.path.isdir(os.path.dirname(path)):
        with open(path, "w") as fh:
            json.dump(value, fh)
sys.exit(rc if rc >= 0 else 128 - rc)
""".replace("@XCOM_RESULT_FILE@", XCOM_RESULT_FILE)


def parse_node_selector(spec: str) -> dict[str, str]:
    """'k=v,k=v' -> {k: v}."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"node selector {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def parse_tolerations(spec: str) -> list[dict[str, str]]:
    """'key[=value]:effect,...' -> toleration dicts (snake_case, as V1Toleration takes)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, sep, effect = item.rpartition(":")
        if not sep or effect not in {"NoSchedule", "PreferNoSchedule", "NoExecute"}:
            raise ValueError(f"toleration {item!r} is not key[=value]:effect")
        key, eq, value = head.partition("=")
        tol = {"key": key, "operator": "Equal" if eq else "Exists", "effect": effect}
        if eq:
            tol["value"] = value
        out.append(tol)
    return out


def without_credentials(uri: str) -> str:
    """The URI without its user:password part (credentials reach pods from the Secret only)."""
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def pod_kwargs(step: str, *, gpu: bool, settings: Settings) -> dict[str, Any]:
    """KubernetesPodOperator arguments for one `ml` step (the step's own arguments excluded)."""
    from kubernetes.client import models as k8s

    requests, limits = (GPU_REQUESTS, GPU_LIMITS) if gpu else (CPU_REQUESTS, CPU_LIMITS)
    limits = {**limits, "nvidia.com/gpu": str(settings.k8s_gpus)} if gpu else dict(limits)
    env = {**settings_env(settings, secrets=False), "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(RUNNER_ENV_PREFIXES)}
    # The workers' MLflow URI, the only one (its credentials: MLFLOW_TRACKING_* in the Secret)
    if settings.mlflow_uri:
        env["POSTFLOW_MLFLOW_URI"] = without_credentials(settings.mlflow_uri)
    if gpu:
        env["POSTFLOW_DEVICE"] = "cuda"
    restricted = k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        run_as_non_root=True,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )
    kwargs: dict[str, Any] = {
        "namespace": settings.k8s_namespace,
        "image": settings.k8s_image,
        "image_pull_policy": "IfNotPresent",
        # The wrapper then exactly `python -m ml <step>`; the step's arguments are `arguments`.
        "cmds": ["python", "-c", POD_WRAPPER, *ML_COMMAND, step],
        "labels": {"app": "postflow", "step": step},
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        "env_from": [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.k8s_secret))
        ],
        "container_resources": k8s.V1ResourceRequirements(requests=requests, limits=limits),
        "service_account_name": settings.k8s_service_account,
        "automount_service_account_token": False,
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=RUN_AS,
            run_as_group=RUN_AS,
            fs_group=RUN_AS,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        "container_security_context": restricted,
        "xcom_sidecar_container_security_context": restricted,
        "volumes": [
            k8s.V1Volume(
                name="dshm",
                empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=SHM_SIZE),
            )
        ],
        "volume_mounts": [k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        "get_logs": True,
        "on_finish_action": "delete_succeeded_pod",
        # The pod survives a worker restart and the retry re-attaches to it (Airflow 3.3:
        # `durable`; `reattach_on_restart` is deprecated there).
        "durable": True,
        "do_xcom_push": True,
        "startup_timeout_seconds": 900 if gpu else 300,  # a GPU node may scale up first
        "log_events_on_failure": True,
    }
    if gpu:
        # a GPU step runs for hours: the triggerer waits for it, not a Celery worker slot
        kwargs["deferrable"] = True
        if settings.k8s_gpu_timeout_s > 0:
            # the pod stops itself at the deadline even when no Airflow process is left to
            # kill it (execution_timeout acts from Airflow's side only)
            kwargs["active_deadline_seconds"] = settings.k8s_gpu_timeout_s
        kwargs["node_selector"] = parse_node_selector(settings.k8s_node_selector)
        kwargs["tolerations"] = [
            k8s.V1Toleration(**t) for t in parse_tolerations(settings.k8s_tolerations)
        ]
    return kwargs


def gpu_limits(settings: Settings) -> dict[str, Any]:
    """What every GPU pod task gets: the pool that caps how many GPU pods run at once (a pool of
    that name must exist: deploy/helm/values.yaml creates it) and an execution_timeout, so a
    hung pod frees its GPU and slot."""
    out: dict[str, Any] = {}
    if settings.k8s_gpu_pool:
        out["pool"] = settings.k8s_gpu_pool
    if settings.k8s_gpu_timeout_s > 0:
        out["execution_timeout"] = timedelta(seconds=settings.k8s_gpu_timeout_s)
    return out


@functools.cache
def pod_operator_class() -> type[BaseOperator]:
    """`MLStepPodOperator`: KubernetesPodOperator with the MLflow run link. Built on first use
    so that local mode never imports the provider or the kubernetes client."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class MLStepPodOperator(KubernetesPodOperator):
        """`python -m ml <step>` in a pod; `arguments` are the step's arguments."""

        operator_extra_links = (MLflowRunLink(),)
        ui_color = "#e8eef4"

    MLStepPodOperator.__module__ = __name__
    return MLStepPodOperator


def __getattr__(name: str) -> Any:
    if name == "MLStepPodOperator":
        return pod_operator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
