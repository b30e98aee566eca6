"""The step runner: one `python -m ml <step> ...` command, run locally or in a Kubernetes pod.

`Settings.step_runner` (read when the DAG file is parsed, from the environment and the settings
file only) picks the operator:

- `local` (default): `MLStepOperator` runs `[sys.executable, "-m", "ml", step, *arguments]` in
  a subprocess with the task's environment plus every setting as `POSTFLOW_*` (the
  `posts_mysql` connection included), streams the child's output into the task log, fails with
  the tail of its stderr, and returns the last stdout line parsed as JSON.
- `kubernetes`: a `KubernetesPodOperator` (`MLStepPodOperator`) runs the same command in the
  ML image. Credentials come from the Secret `k8s_secret` (envFrom), every other setting is an
  env literal; GPU steps get `nvidia.com/gpu`, the GPU node selector and tolerations. A small
  wrapper (`POD_WRAPPER`) runs the command and writes its JSON result to
  /airflow/xcom/return.json, where the provider's XCom sidecar picks it up. GPU pods run in the
  pool `k8s_gpu_pool` (caps how many at once) with an `execution_timeout` of `k8s_gpu_timeout_s`.

Either runner puts the task on the Celery queue `ml_queue` (POSTFLOW_ML_QUEUE, default
"default"): in compose, "ml", the worker whose image has torch.

Either way a step's result is its return_value XCom: the JSON object the step printed last, or
nothing when it printed no JSON. DAGs build steps with `ml_step(...)` or, one task per item,
`ml_step_mapped(...)`:

    embed = ml_step_mapped("embed_posts", "embed",
                           [["--ds", "{{ ds }}", "--shard", f"{i}/2"] for i in range(2)])
    merge = ml_step("merge_features", "embed", ["--ds", "{{ ds }}", "--merge-shards", "2"],
                    gpu=False)
    embed >> merge
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from postflow_airflow.links import MLflowRunLink
from postflow_airflow.settings import POSTS_MYSQL_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ml.config import Settings

# Steps that want a GPU when none is asked for explicitly.
GPU_STEPS = frozenset({"embed", "train"})
# Settings that may carry credentials: never an env literal in a pod spec (they come from the
# Secret there), masked by Airflow in the local task's log.
SECRET_SETTINGS = frozenset({"mysql_uri", "mlflow_uri"})
# Settings of the Airflow side only (a pod launches no pods), by env prefix.
RUNNER_ENV_PREFIXES = ("POSTFLOW_STEP_RUNNER", "POSTFLOW_K8S_", "POSTFLOW_ML_QUEUE")
XCOM_RESULT_FILE = "/airflow/xcom/return.json"
# A step's progress lines (`ml.progress`: count, rate, ETA) go to this logger of their own, so a
# quiet Airflow (the demo's WARNING) can still show them: namespace_levels `postflow.progress=INFO`.
PROGRESS_LOGGER = "postflow.progress"
PROGRESS_MARK = " ml.progress: "
STDERR_TAIL_LINES = 30
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


class MLStepFailed(AirflowException):
    """`python -m ml <step>` exited non-zero; the message ends with the tail of its stderr."""


def parse_result(line: str | None) -> Any:
    """A step's result: its last stdout line as JSON, None when that is not JSON."""
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def exit_reason(rc: int) -> str:
    """How a step ended, for the task's error: a negative code is the signal that killed it
    (SIGKILL is what the kernel's OOM killer sends, so say so)."""
    if rc >= 0:
        return f"exited with {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    if -rc == signal.SIGKILL:
        return f"was killed by {name} (out of memory? the kernel's OOM killer sends SIGKILL)"
    return f"was killed by {name}"


def settings_env(settings: Settings, *, secrets: bool = True) -> dict[str, str]:
    """Settings as `POSTFLOW_*` variables that `Settings.load()` reads back to equal values
    (all but `extra`, which has no variable)."""
    from ml.config import ENV_PREFIX

    env = {}
    for f in dataclasses.fields(settings):
        if f.name == "extra" or (not secrets and f.name in SECRET_SETTINGS):
            continue
        value = getattr(settings, f.name)
        if value is None:
            value = ""
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[ENV_PREFIX + f.name.upper()] = str(value)
    return env


def _load_settings(settings: Settings | None) -> Settings:
    from ml.config import Settings

    return settings if settings is not None else Settings.load()


def _check_step(step: str) -> None:
    from ml.cli import STEPS

    if step not in STEPS:
        raise ValueError(f"unknown ml step {step!r}; known: {sorted(STEPS)}")


# -- local: a subprocess ------------------------------------------------------------------------


class MLStepOperator(BaseOperator):
    """Run `python -m ml <step> *arguments` in a subprocess of the task; return its JSON result.

    :param step: an `ml` CLI step (`ml.cli.STEPS`).
    :param arguments: the step's arguments (templated: `{{ ds }}`, `{{ data_interval_start }}`);
        expand over it to run one task per argument list.
    :param gpu: whether the step wants a GPU (informative here; the child picks its device).
    :param env: extra environment variables for the child.
    :param mysql_conn_id: the Airflow connection whose credentials reach the child as
        POSTFLOW_MYSQL_URI.
    """

    template_fields: Sequence[str] = ("arguments",)
    template_fields_renderers = {"arguments": "py"}
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        step: str,
        arguments: Sequence[str] | None = None,
        gpu: bool = False,
        env: dict[str, str] | None = None,
        mysql_conn_id: str = POSTS_MYSQL_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_step(step)
        self.step = step
        # an XComArg (resolved when the task renders its templates) or a list of strings
        self.arguments = arguments if hasattr(arguments, "resolve") else list(arguments or [])
        self.gpu = gpu
        self.env = dict(env or {})
        self.mysql_conn_id = mysql_conn_id
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ml", self.step, *map(str, self.arguments)]

    def execute(self, context: Context) -> Any:
        from postflow_airflow.settings import task_settings

        env = {
            **os.environ,
            **settings_env(task_settings(self.mysql_conn_id)),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = self.command()
        self.log.info("running %s", shlex.join(["python", *cmd[1:]]))
        last, tail, rc = self._run(cmd, env)
        if rc != 0:
            raise MLStepFailed(
                f"python -m ml {self.step} {exit_reason(rc)}; stderr tail:\n" + "\n".join(tail)
            )
        result = parse_result(last)
        if result is None:
            self.log.warning("python -m ml %s printed no JSON result: no XCom", self.step)
        return result

    def _run(self, cmd: list[str], env: dict[str, str]) -> tuple[str, deque[str], int]:
        """Run `cmd`, logging its stdout and stderr lines as they come (all from this thread)."""
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        last, tail = "", deque(maxlen=STDERR_TAIL_LINES)
        self._proc = proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        try:
            pumps = [
                threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
                for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
            ]
            for t in pumps:
                t.start()
            open_streams = len(pumps)
            while open_streams:
                name, line = lines.get()
                if line is None:
                    open_streams -= 1
                    continue
                _, mark, progress = line.partition(PROGRESS_MARK)
                if mark:
                    _progress_log().info(progress)
                else:
                    self.log.info("%s", line)
                if name == "stderr":
                    tail.append(line)
                elif line.strip():
                    last = line.strip()
            return last, tail, proc.wait()
        finally:
            _stop(proc)
            self._proc = None

    def on_kill(self) -> None:
        if self._proc is not None:
            _stop(self._proc)


@functools.cache
def _progress_log() -> Any:
    import structlog  # Airflow's logging: namespace_levels applies to its named loggers

    return structlog.get_logger(PROGRESS_LOGGER)


def _pump(stream: Iterable[str], name: str, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    finally:
        lines.put((name, None))


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- kubernetes: a pod --------------------------------------------------------------------------


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


def pod_kwargs(step: str, *, gpu: bool, settings: Settings) -> dict[str, Any]:
    """KubernetesPodOperator arguments for one `ml` step (the step's own arguments excluded)."""
    from kubernetes.client import models as k8s

    requests, limits = (GPU_REQUESTS, GPU_LIMITS) if gpu else (CPU_REQUESTS, CPU_LIMITS)
    limits = {**limits, "nvidia.com/gpu": str(settings.k8s_gpus)} if gpu else dict(limits)
    env = {**settings_env(settings, secrets=False), "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(RUNNER_ENV_PREFIXES)}
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


# -- the factory DAGs use -----------------------------------------------------------------------


def _operator_and_kwargs(
    step: str, gpu: bool | None, settings: Settings | None, kwargs: dict[str, Any]
) -> tuple[type[BaseOperator], dict[str, Any]]:
    _check_step(step)
    settings = _load_settings(settings)
    gpu = step in GPU_STEPS if gpu is None else gpu
    # The Celery queue of the worker whose image has the ML dependencies (compose: "ml").
    kwargs = {"queue": settings.ml_queue, **kwargs}
    if settings.step_runner == "local":
        return MLStepOperator, {"step": step, "gpu": gpu, **kwargs}
    if settings.step_runner == "kubernetes":
        return pod_operator_class(), {
            **pod_kwargs(step, gpu=gpu, settings=settings),
            **(gpu_limits(settings) if gpu else {}),
            **kwargs,
        }
    raise ValueError(f"POSTFLOW_STEP_RUNNER={settings.step_runner!r}: use 'local' or 'kubernetes'")


def ml_step(
    task_id: str,
    step: str,
    arguments: Sequence[str] | Any = None,
    *,
    gpu: bool | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> BaseOperator:
    """A task running `python -m ml <step> *arguments` with the configured runner.

    `arguments` are templated, or an XComArg resolving to the list at run time. `gpu` defaults
    to whether the step is in `GPU_STEPS`; `settings` defaults to `Settings.load()`
    (environment and file, nothing networked); other keyword arguments go to the operator
    (retries, pool, container_resources, ...).
    """
    cls, op_kwargs = _operator_and_kwargs(step, gpu, settings, kwargs)
    from airflow.sdk import XComArg

    if not isinstance(arguments, XComArg):
        arguments = list(arguments or [])
    return cls(task_id=task_id, arguments=arguments, **op_kwargs)


def ml_step_mapped(
    task_id: str,
    step: str,
    arguments: Any,
    *,
    gpu: bool | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> Any:
    """One mapped task instance per argument list: `arguments` is a list of lists or an
    XComArg that resolves to one. Each instance's return_value is its step's result."""
    cls, op_kwargs = _operator_and_kwargs(step, gpu, settings, kwargs)
    return cls.partial(task_id=task_id, **op_kwargs).expand(arguments=arguments)
