"""The step runner: one `python -m ml <step> ...` command, run locally or in a Kubernetes pod.

`Settings.step_runner` (read when the DAG file is parsed, from the environment and the settings
file only) picks the operator:

- `local` (default, `local_runner.py`): `MLStepOperator` runs
  `[sys.executable, "-m", "ml", step, *arguments]` in a subprocess with the task's environment plus
  every setting as `POSTFLOW_*` (the `posts_mysql` connection included), streams the child's output
  into the task log, fails with the tail of its stderr, and returns the last stdout line parsed as
  JSON.
- `kubernetes` (`pod_runner.py`): a `KubernetesPodOperator` (`MLStepPodOperator`) runs the
  same command in the ML image. Credentials come from the Secret `k8s_secret` (envFrom), every
  other setting is an env literal; GPU steps get `nvidia.com/gpu`, the GPU node selector and
  tolerations. A small wrapper (`POD_WRAPPER`) runs the command and writes its JSON result to
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

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from postflow_airflow.local_runner import MLStepOperator, check_step
from postflow_airflow.pod_runner import gpu_limits, pod_kwargs, pod_operator_class

if TYPE_CHECKING:
    from ml.config import Settings


# Steps that want a GPU when none is asked for explicitly.
GPU_STEPS = frozenset({"embed", "train"})


def _load_settings(settings: Settings | None) -> Settings:
    from ml.config import Settings

    return settings if settings is not None else Settings.load()


def _operator_and_kwargs(
    step: str, gpu: bool | None, settings: Settings | None, kwargs: dict[str, Any]
) -> tuple[type[BaseOperator], dict[str, Any]]:
    check_step(step)
    settings = _load_settings(settings)
    gpu = step in GPU_STEPS if gpu is None else gpu
    # The Celery queue of the worker whose image has the ML dependencies (compose: "ml").
    kwargs = {"queue": settings.ml_queue, **kwargs}
    if settings.step_runner == "local":
        # a hung step fails and frees the worker slot (a DAG may pass its own)
        if settings.local_step_timeout_s > 0:
            timeout = timedelta(seconds=settings.local_step_timeout_s)
            kwargs = {"execution_timeout": timeout, **kwargs}
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
