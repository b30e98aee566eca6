"""MLflow I/O: the tracking connection, the record of a training run, the registered model
`post-engagement` and its aliases.

- `log_training` records one `python -m ml train` run (params, per-epoch and final metrics,
  label histogram, confusion matrix) and logs the classifier as an `mlflow.pyfunc` model whose
  weights are the `model.npz` + `model.json` files of `TrainedModel.save` (an artifact, never a
  pickle). The pyfunc entry point is "models from code": the text of `ml.learn.serving`, which
  scores with numpy alone, so loading needs neither torch nor the `postflow` package: the Airflow
  image and any consumer load `models:/post-engagement@champion` with mlflow and numpy.
- `register_challenger` registers the run's model and points the alias `challenger` at it.
- The promotion gate that moves `champion` is `ml.learn.promote`.

No Airflow import; mlflow is imported inside functions so `import ml.learn.registry` stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import redact_uri
from ml.lake.partitions import code_version as current_code_version
from ml.lake.schema import N_FEATURES
from ml.learn.bins import bin_names
from ml.learn.confusion import confusion_png
from ml.learn.labels import target_sentence
from ml.learn.serving import MODEL_DIR_ARTIFACT, pyfunc_code, pyfunc_model

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME = "model"  # the pyfunc model's name in its run: runs:/<run_id>/model
FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MODELS = ("mlp", "majority", "logistic")
GAP_METRIC = "mlp_minus_logistic_test_macro_f1"  # its _low and _high: the bootstrap interval
# run tags copied onto the registered version
VERSION_TAGS = (
    "postflow.window",
    "postflow.ds",
    "postflow.code_version",
    "postflow.image_weights",
    "postflow.random_weights",
    "postflow.edges",
    "postflow.family",
    "postflow.image_model",
    "postflow.text_model",
    "postflow.label_horizon_days",
    "postflow.target",
)


def __getattr__(name: str) -> Any:
    # Versions registered before `ml.learn.serving` load through a code file that runs
    # `from ml.learn.registry import PostEngagementModel`: that name keeps serving them (format 1).
    if name == "PostEngagementModel":
        return type(pyfunc_model())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RegistryError(RuntimeError):
    """MLflow is unreachable or the registry is not in the expected state (one-line message)."""


# -- connection ---------------------------------------------------------------------------------


def check_tracking(settings: Any, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when an http(s) tracking server does not answer /health
    (MLflow's own client would retry for minutes)."""
    import urllib.error
    import urllib.request

    uri = settings.mlflow_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(
            f"MLflow tracking server {redact_uri(uri)} is unreachable ({reason}); "
            "check POSTFLOW_MLFLOW_URI"
        ) from None


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def connect(settings: Any):
    """An `mlflow.MlflowClient` on settings.mlflow_uri (tracking and registry), with the
    process-wide URIs set too (pyfunc logging and `models:/` loading use them)."""
    check_tracking(settings)
    if getattr(settings, "s3_endpoint", None):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint
    db = _sqlite_path(settings.mlflow_uri)
    if db is not None and db.name != ":memory:":
        db.parent.mkdir(parents=True, exist_ok=True)
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return mlflow.MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def _stdout_to_stderr():
    """MLflow prints run links to stdout; the CLI steps keep stdout for their one JSON line."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def experiment_id(client: Any, settings: Any) -> str:
    """Id of settings.mlflow_experiment, created on first use. With a local sqlite store the
    artifacts go next to the database (`<db dir>/mlartifacts`), not into the working folder."""
    from mlflow.exceptions import MlflowException

    name = settings.mlflow_experiment
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    db = _sqlite_path(settings.mlflow_uri)
    if db is not None:
        location = (db.parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_url(settings: Any, experiment_id: str, run_id: str) -> str | None:
    """Link to a run in the MLflow UI (settings.mlflow_ui_url, else an http(s) mlflow_uri)."""
    base = settings.mlflow_ui_url or (
        settings.mlflow_uri if settings.mlflow_uri.startswith(("http://", "https://")) else ""
    )
    if not base:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# -- tags ------------------------------------------------------------------------


def image_weights_tag(image_models: Sequence[str]) -> str:
    """The weights behind the features' image model ids (see `ml.features.store`): "imagenet",
    "none" (random init; as soon as any feature used it) or "file:<name>"."""
    kinds = set()
    for m in image_models:
        ident = m.split(":", 1)[-1]
        if ident.startswith("random"):
            kinds.add("none")
        elif ident.startswith("imagenet"):
            kinds.add("imagenet")
        elif ident.startswith("file-"):
            kinds.add("file:" + ident[len("file-") :].rsplit("-", 1)[0])
        else:
            kinds.add(ident or "unknown")
    if "none" in kinds:
        return "none"
    return ",".join(sorted(kinds)) or "unknown"


# -- logging a training run ---------------------------------------------------------------------


def _run_params(result: Any) -> dict[str, str]:
    data, cfg = result.data, result.mlp.config
    image_model, text_model = data.encoder_pair()
    params: dict[str, Any] = {
        "family": result.family,
        "window_start": data.window[0],
        "window_end": data.window[1],
        "edges": json.dumps(list(data.edges)),
        "n_classes": len(data.edges),
        "image_models": json.dumps(list(data.image_models)),
        "text_models": json.dumps(list(data.text_models)),
        # what the model is made of: the gate compares only models equal in these
        "image_model": image_model,  # names its weights; a weights file by its sha256
        "text_model": text_model,
        "label_horizon_days": data.horizon_days,
        "target": target_sentence(data.horizon_days, data.edges),
    }
    for key in (
        "pca_dim",
        "pca_fit_rows",
        "hidden",
        "dropout",
        "lr",
        "weight_decay",
        "batch_size",
        "max_epochs",
        "patience",
        "min_delta",
        "seed",
        "class_weight",
        "device",
    ):
        if key in cfg:
            value = cfg[key]
            params[key] = json.dumps(list(value)) if isinstance(value, list | tuple) else value
    return {k: str(v) for k, v in params.items()}


def _run_metrics(result: Any) -> list[tuple[str, float, int]]:
    """(key, value, step) of the per-epoch curves and the final scores."""
    out: list[tuple[str, float, int]] = []
    for h in result.mlp.history:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if key in h:
                out.append((key, float(h[key]), int(h["epoch"])))
    for model in MODELS:
        for split in ("val", "test"):
            m = result.metrics.get(model, {}).get(split)
            if m is None:
                continue
            for key in FINAL_METRICS:
                out.append((f"{model}_{split}_{key}", float(m[key]), 0))
    for split in ("val", "test"):  # the registered family's scores under one name
        for key in FINAL_METRICS:
            out.append(
                (f"model_{split}_{key}", float(result.metrics[result.family][split][key]), 0)
            )
    for k, r in enumerate(result.metrics["mlp"]["test"]["per_class_recall"]):
        if r is not None:
            out.append((f"mlp_test_recall_class_{k}", float(r), 0))
    gap = result.baseline_gap
    if gap is not None:  # the interval the gate's baseline rule states
        out += [(f"{GAP_METRIC}_low", gap.low, 0), (f"{GAP_METRIC}_high", gap.high, 0)]
    for split in ("train", "val", "test"):
        out.append((f"split_{split}_rows", float(result.split_sizes[split]), 0))
    for key, value in result.data.split_stats.items():  # reserve, groups, caption leaks
        out.append((f"split_{key}", float(value), 0))
    out += [
        ("rows", float(len(result.data.y)), 0),
        ("missing_features", float(result.data.missing_features), 0),
        ("best_epoch", float(result.mlp.best_epoch), 0),
        ("epochs", float(len(result.mlp.history)), 0),
        ("train_seconds", float(result.seconds), 0),
    ]
    return out


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy"):  # all `ml.learn.serving` imports: no torch, no postflow
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _signature(n_classes: int):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, N_FEATURES))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes))]),
    )


def run_tags(result: Any, *, ds: str | None, code_version: str | None) -> dict[str, str]:
    data = result.data
    weights = image_weights_tag(data.image_models)
    image_model, text_model = data.encoder_pair()
    tags = {
        "postflow.window": f"{data.window[0]}..{data.window[1]}",
        "postflow.code_version": code_version or current_code_version(),
        "postflow.image_weights": weights,
        "postflow.random_weights": "true" if weights == "none" else "false",
        "postflow.edges": json.dumps(list(data.edges)),
        "postflow.family": result.family,
        "postflow.step": "train",
        "postflow.image_model": image_model,
        "postflow.text_model": text_model,
        "postflow.label_horizon_days": str(data.horizon_days),
        "postflow.target": target_sentence(data.horizon_days, data.edges),
    }
    if ds:
        tags["postflow.ds"] = ds
    return tags


def log_training(
    result: Any,
    settings: Any,
    *,
    ds: str | None = None,
    code_version: str | None = None,
) -> str:
    """Log a `TrainingResult` as one run of settings.mlflow_experiment; returns its run id.
    The label horizon and edges are recorded so that `promote` rebuilds exactly the labels the
    run was scored on, and the encoders so that the gate compares only like models."""
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param

    client = connect(settings)
    exp_id = experiment_id(client, settings)
    tags = run_tags(result, ds=ds, code_version=code_version)
    if tags["postflow.random_weights"] == "true":
        log.warning("image features come from a RANDOMLY initialised ResNet50: run tagged so")
    name = f"train-{ds or result.data.window[1]}"
    now = int(time.time() * 1000)
    with (
        _stdout_to_stderr(),
        mlflow.start_run(experiment_id=exp_id, run_name=name, tags=tags) as run,
    ):
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in _run_params(result).items()]
        metrics = [Metric(k, v, now, step) for k, v, step in _run_metrics(result)]
        client.log_batch(run_id, params=params)
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])

        with tempfile.TemporaryDirectory(prefix="postflow-run-") as tmp:
            tmp_path = Path(tmp)
            hist = {"edges": list(result.data.edges)} | {
                s: list(result.label_histogram[s]) for s in ("train", "val", "test")
            }
            files = {
                "label_histogram.json": json.dumps(hist, indent=2).encode(),
                "metrics.json": json.dumps(result.metrics, indent=2).encode(),
                "groups.json": json.dumps(result.groups, indent=2).encode(),
                "confusion_matrix.png": confusion_png(
                    result.metrics[result.family]["test"]["confusion_matrix"],
                    bin_names(result.data.edges),
                    f"{result.family}, test split ({result.split_sizes['test']} posts), "
                    f"{result.data.window[0]}..{result.data.window[1]}",
                ),
            }
            for fname, blob in files.items():
                (tmp_path / fname).write_bytes(blob)
                client.log_artifact(run_id, str(tmp_path / fname))

            model_dir = result.model.save(tmp_path / "trained")
            code = tmp_path / "postflow_pyfunc.py"
            code.write_text(pyfunc_code())
            n_example = min(2, len(result.data.X))
            mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(code),
                artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
                signature=_signature(result.model.n_classes),
                input_example=np.asarray(result.data.X[:n_example], np.float32),
                pip_requirements=_pip_requirements(),
            )
    log.info("logged run %s in experiment %s (%s)", run_id, exp_id, settings.mlflow_experiment)
    return run_id


# -- registry -----------------------------------------------------------------------------------


def register_challenger(run_id: str, settings: Any) -> int:
    """Register the model of run `run_id` (`runs:/<run_id>/model`) as a new version of
    settings.registered_model, copy the run's key tags to it and point the alias `challenger`
    at it. Returns the version number."""
    import mlflow

    client = connect(settings)
    run = client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k in VERSION_TAGS}
    for key in ("mlp_test_macro_f1", "mlp_val_macro_f1", "model_test_macro_f1"):
        if key in run.data.metrics:
            tags[f"postflow.{key}"] = f"{run.data.metrics[key]:.6f}"
    # the run's logged model (MLflow 3 stores it as models:/<model_id>), else runs:/<id>/model
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    ids = [o.model_id for o in outputs if client.get_logged_model(o.model_id).name == MODEL_NAME]
    uri = f"models:/{ids[-1]}" if ids else f"runs:/{run_id}/{MODEL_NAME}"
    with _stdout_to_stderr():
        mv = mlflow.register_model(uri, settings.registered_model, tags=tags)
    client.set_registered_model_alias(settings.registered_model, CHALLENGER, mv.version)
    log.info("registered %s version %s (alias %s)", mv.name, mv.version, CHALLENGER)
    return int(mv.version)


def alias_version(client: Any, name: str, alias: str):
    """The ModelVersion an alias points at, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise


def load_champion(settings: Any):
    """(pyfunc model, ModelVersion) of the current champion, or None when there is none."""

    client = connect(settings)
    mv = alias_version(client, settings.registered_model, CHAMPION)
    if mv is None:
        return None
    return load_version(settings.registered_model, mv.version), mv


def load_version(name: str, version: int | str):
    """The pyfunc model of a registered version (process-wide registry URI, see `connect`)."""
    import mlflow.pyfunc

    with _stdout_to_stderr():
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")
