"""MLflow tracking, the registered model `post-engagement`, and the promotion gate.

- `log_training` records one `python -m ml train` run (params, per-epoch and final metrics,
  label histogram, confusion matrix) and logs the classifier as an `mlflow.pyfunc` model whose
  weights are the `model.npz` + `model.json` files of `TrainedModel.save` (an artifact, never a
  pickle). The pyfunc entry point is "models from code": a three-line script that imports
  `ml.registry.PostEngagementModel`, so loading needs the `ml` package installed (as in the
  Airflow and ML images) and runs the installed code, whose version is tagged on the run.
- `register_challenger` registers the run's model and points the alias `challenger` at it.
- `promote` scores challenger and champion on the *same* test split of the current window (the
  split is a function of post ids, see `ml.labels`) and moves the alias `champion` only when
  `decide` says so. The decision and both scores are tagged on the version and its run.

No Airflow import; mlflow is imported inside functions so `import ml.registry` stays cheap.
`python -m ml promote --version V --start S --end E` prints the decision as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME = "model"  # the pyfunc model's name in its run: runs:/<run_id>/model
MODEL_DIR_ARTIFACT = "model_dir"
N_FEATURES = 2048 + 384
FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MODELS = ("mlp", "majority", "logistic")
# run tags copied onto the registered version
VERSION_TAGS = (
    "postflow.window",
    "postflow.ds",
    "postflow.code_version",
    "postflow.image_weights",
    "postflow.random_weights",
    "postflow.edges",
)
_EPS = 1e-9  # comparisons of scores computed on the same rows: equal means tie

# models-from-code entry point logged with every model (no pickle of any object)
_PYFUNC_CODE = '''"""postflow engagement classifier: MLflow pyfunc entry point."""
import mlflow

from ml.registry import PostEngagementModel

mlflow.models.set_model(PostEngagementModel())
'''


class RegistryError(RuntimeError):
    """MLflow is unreachable or the registry is not in the expected state (one-line message)."""


# -- the pyfunc model ---------------------------------------------------------------------------


def _define_model_class() -> type:
    import mlflow.pyfunc

    class PostEngagementModel(mlflow.pyfunc.PythonModel):
        """Class probabilities, float32 (n, n_classes), of float32 features (n, 2432)."""

        def load_context(self, context) -> None:
            from ml.train import TrainedModel

            self.model = TrainedModel.load(context.artifacts[MODEL_DIR_ARTIFACT])

        def predict(self, context, model_input: np.ndarray, params=None):
            X = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
            X = np.asarray(X, dtype=np.float32)
            if X.ndim == 1:
                X = X.reshape(1, -1)
            device = (params or {}).get("device", "cpu")
            return self.model.predict_proba(X, device=device).astype(np.float32)

    PostEngagementModel.__module__ = __name__
    PostEngagementModel.__qualname__ = "PostEngagementModel"
    return PostEngagementModel


def __getattr__(name: str) -> Any:
    # `ml.registry.PostEngagementModel` is built on first access: mlflow is imported only then.
    if name == "PostEngagementModel":
        cls = _define_model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- connection ---------------------------------------------------------------------------------


def _redact(uri: str) -> str:
    from ml.config import redact_uri

    return redact_uri(uri)


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
            f"MLflow tracking server {_redact(uri)} is unreachable ({reason}); "
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


# -- tags, labels, plots ------------------------------------------------------------------------


def image_weights_tag(image_models: Sequence[str]) -> str:
    """The weights behind the features' image model ids (see `ml.features`): "imagenet",
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


def class_labels(edges: Sequence[int]) -> list[str]:
    """Readable bin names: class k is [edges[k], edges[k+1]), e.g. "0", "1-2", …, "600+"."""
    out = []
    for lo, hi in zip(edges, list(edges[1:]) + [None], strict=True):
        if hi is None:
            out.append(f"{lo}+")
        elif hi - lo == 1:
            out.append(str(lo))
        else:
            out.append(f"{lo}-{hi - 1}")
    return out


def confusion_png(cm: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> bytes:
    """A confusion matrix (rows = truth) as PNG: colour = row share, text = count."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    cm = np.asarray(cm, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="share of the true class")
    k = len(labels)
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted comments")
    ax.set_ylabel("true comments")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- logging a training run ---------------------------------------------------------------------


def _run_params(result: Any, label_age_days: int | None) -> dict[str, str]:
    data, cfg = result.data, result.model.config
    params: dict[str, Any] = {
        "window_start": data.window[0],
        "window_end": data.window[1],
        "edges": json.dumps(list(data.edges)),
        "n_classes": len(data.edges),
        "image_models": json.dumps(list(data.image_models)),
        "text_models": json.dumps(list(data.text_models)),
    }
    if label_age_days is not None:
        params["label_age_days"] = label_age_days
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
    for h in result.model.history:
        for key in ("train_loss", "val_loss", "val_accuracy"):
            if key in h:
                out.append((key, float(h[key]), int(h["epoch"])))
    for model in MODELS:
        for split in ("val", "test"):
            m = result.metrics.get(model, {}).get(split)
            if m is None:
                continue
            for key in FINAL_METRICS:
                out.append((f"{model}_{split}_{key}", float(m[key]), 0))
    for k, r in enumerate(result.metrics["mlp"]["test"]["per_class_recall"]):
        if r is not None:
            out.append((f"mlp_test_recall_class_{k}", float(r), 0))
    for split in ("train", "val", "test"):
        out.append((f"split_{split}_rows", float(result.split_sizes[split]), 0))
    out += [
        ("rows", float(len(result.data.y)), 0),
        ("missing_features", float(result.data.missing_features), 0),
        ("best_epoch", float(result.model.best_epoch), 0),
        ("epochs", float(len(result.model.history)), 0),
        ("train_seconds", float(result.seconds), 0),
    ]
    return out


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "torch", "postflow"):
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
    from ml.lake import code_version as current_code_version

    data = result.data
    weights = image_weights_tag(data.image_models)
    tags = {
        "postflow.window": f"{data.window[0]}..{data.window[1]}",
        "postflow.code_version": code_version or current_code_version(),
        "postflow.image_weights": weights,
        "postflow.random_weights": "true" if weights == "none" else "false",
        "postflow.edges": json.dumps(list(data.edges)),
        "postflow.step": "train",
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
    label_age_days: int | None = None,
) -> str:
    """Log a `TrainingResult` as one run of settings.mlflow_experiment; returns its run id.
    `label_age_days` (default settings.label_age_days) is recorded so that `promote` rebuilds
    exactly the labels the run was scored on."""
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param

    client = connect(settings)
    exp_id = experiment_id(client, settings)
    age = settings.label_age_days if label_age_days is None else label_age_days
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
        params = [Param(k, v) for k, v in _run_params(result, age).items()]
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
                "confusion_matrix.png": confusion_png(
                    result.metrics["mlp"]["test"]["confusion_matrix"],
                    class_labels(result.data.edges),
                    f"mlp, test split ({result.split_sizes['test']} posts), "
                    f"{result.data.window[0]}..{result.data.window[1]}",
                ),
            }
            for fname, blob in files.items():
                (tmp_path / fname).write_bytes(blob)
                client.log_artifact(run_id, str(tmp_path / fname))

            model_dir = result.model.save(tmp_path / "trained")
            code = tmp_path / "postflow_pyfunc.py"
            code.write_text(_PYFUNC_CODE)
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
    for key in ("mlp_test_macro_f1", "mlp_val_macro_f1"):
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


# -- the promotion gate -------------------------------------------------------------------------


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    challenger_version: int | None
    champion_version: int | None
    challenger_macro_f1: float
    champion_macro_f1: float | None
    challenger_recall: list[float | None]
    champion_recall: list[float | None] | None
    margin: float

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON values (NaN as None)."""
        return {k: None if _nan(v) else v for k, v in asdict(self).items()}


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def decide(
    challenger_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    margin: float = 0.0,
    max_recall_drop: float = 0.15,
    min_macro_f1: float = 0.0,
    *,
    challenger_version: int | None = None,
    champion_version: int | None = None,
) -> PromotionDecision:
    """The gate, on metrics of both models computed on the same rows:
    1. challenger macro-F1 >= `min_macro_f1` (the floor; the only test for a first model);
    2. challenger macro-F1 >= champion macro-F1 + `margin` (a tie passes with margin 0);
    3. no class whose recall falls by more than `max_recall_drop` (absolute) from the
       champion's; classes absent from the rows (recall None) are not compared."""
    c_f1 = challenger_metrics.get("macro_f1")
    c_rec = list(challenger_metrics.get("per_class_recall") or [])
    h_f1 = None if champion_metrics is None else champion_metrics.get("macro_f1")
    h_rec = (
        None if champion_metrics is None else list(champion_metrics.get("per_class_recall") or [])
    )
    failures: list[str] = []
    if not _finite(c_f1):
        failures.append("challenger macro-F1 is undefined (no test rows)")
    elif c_f1 + _EPS < min_macro_f1:
        failures.append(f"macro-F1 {c_f1:.4f} below the floor {min_macro_f1:.4f}")
    if champion_metrics is not None and _finite(c_f1):
        if _finite(h_f1) and c_f1 + _EPS < h_f1 + margin:
            failures.append(f"macro-F1 {c_f1:.4f} < champion {h_f1:.4f} + margin {margin:.4f}")
        drops = [
            f"class {k} {h:.3f}->{c:.3f}"
            for k, (c, h) in enumerate(zip(c_rec, h_rec or [], strict=False))
            if c is not None and h is not None and h - c > max_recall_drop + _EPS
        ]
        if drops:
            failures.append(f"recall drops by more than {max_recall_drop:.3f}: " + ", ".join(drops))
    if failures:
        reason = "; ".join(failures)
    elif champion_metrics is None:
        reason = f"first model: macro-F1 {c_f1:.4f} >= floor {min_macro_f1:.4f}"
    else:
        shown = f"{h_f1:.4f}" if _finite(h_f1) else "undefined"
        reason = (
            f"macro-F1 {c_f1:.4f} >= champion {shown} + margin {margin:.4f}, "
            f"no class recall drop > {max_recall_drop:.3f}"
        )
    return PromotionDecision(
        promoted=not failures,
        reason=reason,
        challenger_version=challenger_version,
        champion_version=champion_version,
        challenger_macro_f1=float(c_f1) if _finite(c_f1) else float("nan"),
        champion_macro_f1=float(h_f1) if _finite(h_f1) else None,
        challenger_recall=c_rec,
        champion_recall=h_rec,
        margin=margin,
    )


def _score(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    from ml.train import metrics_from_predictions

    proba = np.asarray(model.predict(np.asarray(X, np.float32)))
    if proba.ndim != 2 or proba.shape[0] != len(y):
        raise RegistryError(f"model returned shape {proba.shape} for {len(y)} rows")
    return metrics_from_predictions(y, proba.argmax(axis=1), n_classes)


def _run_edges(client: Any, run_id: str | None) -> tuple[int, ...] | None:
    if not run_id:
        return None
    raw = client.get_run(run_id).data.params.get("edges")
    return tuple(json.loads(raw)) if raw else None


def _record(client: Any, settings: Any, mv: Any, decision: PromotionDecision) -> None:
    from mlflow.entities import Metric, RunTag

    name = settings.registered_model
    tags = {
        "postflow.promotion": "promoted" if decision.promoted else "rejected",
        "postflow.decision_reason": decision.reason[:5000],
        "postflow.challenger_macro_f1": f"{decision.challenger_macro_f1:.6f}",
        "postflow.champion_macro_f1": (
            "" if decision.champion_macro_f1 is None else f"{decision.champion_macro_f1:.6f}"
        ),
        "postflow.champion_version": (
            "" if decision.champion_version is None else str(decision.champion_version)
        ),
        "postflow.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
    if mv.run_id:
        now = int(time.time() * 1000)
        metrics = [Metric("gate_challenger_macro_f1", decision.challenger_macro_f1, now, 0)]
        if decision.champion_macro_f1 is not None:
            metrics.append(Metric("gate_champion_macro_f1", decision.champion_macro_f1, now, 0))
        client.log_batch(mv.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])


def resolve_version(client: Any, settings: Any, version: int | str):
    """ModelVersion of a number or an alias (`challenger`)."""
    from mlflow.exceptions import MlflowException

    name = settings.registered_model
    try:
        if str(version).isdigit():
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {name} has no version {version!r}: {exc.message}") from None


def promote_on(
    settings: Any,
    version: int | str,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int | None = None,
) -> PromotionDecision:
    """Score `version` and the current champion on (X_test, y_test), decide, move `champion`
    when promoted, and record the decision on the version and its run."""

    client = connect(settings)
    name = settings.registered_model
    mv = resolve_version(client, settings, version)
    ch_version = int(mv.version)
    edges = _run_edges(client, mv.run_id)
    k = n_classes or (len(edges) if edges else None)
    if k is None:
        raise RegistryError(f"{name}/{ch_version}: unknown number of classes (no edges param)")
    if len(y_test) == 0:
        raise RegistryError("no test rows to compare the models on")
    champ = alias_version(client, name, CHAMPION)
    challenger = load_version(name, ch_version)
    c_metrics = _score(challenger, X_test, y_test, k)
    if champ is not None and int(champ.version) == ch_version:  # a re-run after promotion
        decision = replace(
            decide(c_metrics, c_metrics, 0.0, 1.0, settings.min_macro_f1),
            promoted=True,
            reason=f"version {ch_version} is already the champion",
            challenger_version=ch_version,
            champion_version=ch_version,
            margin=settings.promotion_margin,
        )
        _record(client, settings, mv, decision)
        return decision

    h_metrics, note, champ_version = None, "", None
    if champ is not None:
        champ_version = int(champ.version)
        champ_edges = _run_edges(client, champ.run_id)
        if edges is not None and champ_edges is not None and champ_edges != edges:
            note = (
                f"champion {champ_version} has other bin edges {list(champ_edges)}: "
                "not comparable, floor only; "
            )
        else:
            champion = load_version(name, champ_version)
            h_metrics = _score(champion, X_test, y_test, k)
    decision = decide(
        c_metrics,
        h_metrics,
        settings.promotion_margin,
        settings.max_recall_drop,
        settings.min_macro_f1,
        challenger_version=ch_version,
        champion_version=champ_version,
    )
    if note:
        decision = replace(decision, reason=note + decision.reason)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(ch_version))
    _record(client, settings, mv, decision)
    log.info(
        "%s %s/%s: %s",
        "promoted" if decision.promoted else "rejected",
        name,
        ch_version,
        decision.reason,
    )
    return decision


def heldout_split(lake: Any, start: str, end: str, edges: Sequence[int], label_age_days: int):
    """(X, y) of the test split of the window: the rows `run_training` held out for test."""
    from ml.labels import assign_splits
    from ml.train import load_dataset

    data = load_dataset(lake, start, end, edges, label_age_days)
    test = assign_splits(data.post_ids, len(data.post_ids)) == "test"
    return data.X[test], data.y[test]


def promote(settings: Any, lake: Any, version: int | str, start: str, end: str):
    """`promote_on` the test split of the window start..end, built with the bin edges and label
    age that the challenger's run recorded (so both models are scored on the same labels)."""
    client = connect(settings)
    mv = resolve_version(client, settings, version)
    params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    from ml.labels import DEFAULT_EDGES

    edges = tuple(json.loads(params["edges"])) if "edges" in params else DEFAULT_EDGES
    age = int(params.get("label_age_days", settings.label_age_days))
    X, y = heldout_split(lake, start, end, edges, age)
    return promote_on(settings, int(mv.version), X, y, len(edges))


# -- CLI: python -m ml promote ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml promote",
        description="Score a registered version against the champion on the window's test "
        "split; move the alias `champion` when it passes the gate.",
    )
    p.add_argument("--version", required=True, help="model version number, or an alias")
    p.add_argument("--start", required=True, help="first partition of the window (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last partition of the window (YYYY-MM-DD)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake import Lake

    settings = Settings.load()
    try:
        lake = Lake.from_settings(settings)
        decision = promote(settings, lake, args.version, args.start, args.end)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision.to_dict()))
    return 0
