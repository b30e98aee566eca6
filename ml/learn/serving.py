"""The served engagement model: class probabilities of post features, with numpy alone.

This file is also the model's MLflow pyfunc entry point ("models from code"): `ml.learn.registry`
logs its text, with a two-line footer that calls `mlflow.models.set_model`, next to the weights
(`model.npz` + `model.json`, never a pickle). So it imports nothing of postflow and no torch: the
Airflow image (the weekly report) and any consumer of `models:/post-engagement@champion` load
and score the model with `mlflow` and `numpy` only.

Families (both trained by `ml.learn.model`, the winner on validation is registered):
- `mlp`: z = x @ W + b (scaler + whitened PCA folded into one affine map), then Linear/ReLU
  layers (dropout is off at inference), softmax.
- `logistic`: z as above, then scikit-learn's multinomial logistic regression (softmax of
  z @ coef.T + intercept; one logit and a sigmoid when it saw two classes), its classes put back
  at their indices among all bins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2  # model.json "format": 2 adds the family (format 1: an MLP, read as such)
FAMILIES = ("mlp", "logistic")
MODEL_DIR_ARTIFACT = "model_dir"
CHUNK_ROWS = 65_536  # rows scored at once: bounded memory for any input size


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def mlp_layers(arch: dict[str, Any], state: dict[str, np.ndarray]) -> list[tuple[Any, Any]]:
    """(weight, bias) of each Linear layer of the MLP, in order. The state is a torch
    `nn.Sequential` state dict: Linear, ReLU, Dropout per hidden layer, then the output Linear."""
    idx = [3 * i for i in range(len(arch["hidden"]))] + [3 * len(arch["hidden"])]
    return [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in idx]


def predict_proba(
    family: str,
    W: np.ndarray,
    b: np.ndarray,
    state: dict[str, np.ndarray],
    arch: dict[str, Any],
    X: Any,
) -> np.ndarray:
    """float32 (n, n_classes) class probabilities of float32 features X (n, in_features)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != W.shape[0]:
        raise ValueError(f"expected features of shape (n, {W.shape[0]}), got {X.shape}")
    k = int(arch["n_classes"])
    out = np.zeros((len(X), k), np.float32)
    for i in range(0, len(X), CHUNK_ROWS):
        z = X[i : i + CHUNK_ROWS] @ W + b
        if family == "mlp":
            layers = mlp_layers(arch, state)
            for w, bias in layers[:-1]:
                z = np.maximum(z @ w.T + bias, 0.0)
            w, bias = layers[-1]
            out[i : i + len(z)] = _softmax(z @ w.T + bias)
        elif family == "logistic":
            logits = z @ state["coef"].T + state["intercept"]
            if logits.shape[1] == 1:  # two classes: one logit for the second
                p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
                proba = np.stack([1.0 - p1, p1], axis=1)
            else:
                proba = _softmax(logits)
            out[i : i + len(z), state["classes"]] = proba
        else:
            raise ValueError(f"unknown model family {family!r}; known: {FAMILIES}")
    return out


class ServedModel:
    """A saved model directory (`model.npz` + `model.json`), ready to score."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz") as z:
            arrays = {k: z[k] for k in z.files}
        self.meta = meta
        self.family = meta.get("family", "mlp")
        self.arch = meta["arch"]
        self.W, self.b = arrays["W"], arrays["b"]
        prefix = f"{self.family}."
        self.state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    def predict_proba(self, X: Any) -> np.ndarray:
        return predict_proba(self.family, self.W, self.b, self.state, self.arch, X)


def pyfunc_model() -> Any:
    """The `mlflow.pyfunc.PythonModel` that serves a `ServedModel` (mlflow imported here only,
    so that importing this module for numpy scoring stays cheap)."""
    import mlflow.pyfunc

    class PostEngagementModel(mlflow.pyfunc.PythonModel):
        """Class probabilities, float32 (n, n_classes), of float32 features (n, 2432)."""

        def load_context(self, context):
            self.model = ServedModel(context.artifacts[MODEL_DIR_ARTIFACT])

        # `np.ndarray` is a type hint MLflow takes without inferring a schema from it (the
        # logged signature stays the TensorSpec); without a hint MLflow warns at every load.
        def predict(self, context, model_input: np.ndarray, params: Any = None) -> np.ndarray:
            X = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
            return self.model.predict_proba(X)

    return PostEngagementModel()


# What `ml.learn.registry` appends to this file's text when it logs a model.
PYFUNC_FOOTER = """

import mlflow.models  # noqa: E402

mlflow.models.set_model(pyfunc_model())
"""


def pyfunc_code() -> str:
    """The text of the logged pyfunc entry point: this module plus the `set_model` footer."""
    return Path(__file__).read_text() + PYFUNC_FOOTER
