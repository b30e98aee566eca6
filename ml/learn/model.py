"""The engagement classifier and its baselines, and the metrics every stage scores them with.

Model: StandardScaler -> PCA(128, whitened) fitted with scikit-learn, folded into one affine map
(W, b) so that inference is a single matmul; then a PyTorch MLP (ReLU, dropout) trained with
Adam on cross-entropy with balanced class weights, early-stopped on the (equally weighted)
validation loss. `TrainedModel` holds only numpy arrays and plain config: it pickles, saves to
`model.npz` + `model.json` without pickle, and predicts identically after a round trip, on CPU or
CUDA, which is what an `mlflow.pyfunc` wrapper needs (input: float32 n x 2432 features).

Baselines, trained on the same split: the majority class, and logistic regression (balanced
class weights) on the same standardised + PCA features. `TrainedModel` serves either family
(`ml.learn.serving`, numpy only): `ml.learn.train` registers whichever of the MLP and the logistic
model scores the higher macro-F1 on validation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.features.encoders import resolve_device
from ml.learn.bins import DEFAULT_EDGES
from ml.learn.serving import FORMAT as SERVING_FORMAT
from ml.learn.serving import ServedModel, predict_proba

log = logging.getLogger(__name__)


# -- model --------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    n_classes: int = len(DEFAULT_EDGES)
    pca_dim: int = 128
    pca_fit_rows: int = 200_000  # PCA is fitted on a seeded sample of at most this many rows
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    min_delta: float = 1e-4
    class_weight: str | None = "balanced"
    seed: int = 0
    device: str = "auto"


def _mlp(arch: dict[str, Any]):
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = arch["in_dim"]
    for h in arch["hidden"]:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(arch["dropout"])]
        width = h
    layers.append(nn.Linear(width, arch["n_classes"]))
    return nn.Sequential(*layers)


def fit_preprocess(X: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler then whitened PCA, folded into (W, b): z = x @ W + b."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(config.seed)
    sample = X
    if len(X) > config.pca_fit_rows:
        sample = X[np.sort(rng.choice(len(X), config.pca_fit_rows, replace=False))]
    scaler = StandardScaler().fit(sample)
    k = min(config.pca_dim, sample.shape[0], sample.shape[1])
    solver = "covariance_eigh" if sample.shape[0] > 2 * sample.shape[1] else "full"
    pca = PCA(n_components=k, whiten=True, svd_solver=solver, random_state=config.seed)
    pca.fit(scaler.transform(sample))
    inv_sd = 1.0 / np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
    W = (pca.components_.T / scaler.scale_[:, None]) * inv_sd[None, :]
    b = -((scaler.mean_ / scaler.scale_ + pca.mean_) @ pca.components_.T) * inv_sd
    return W.astype(np.float32), b.astype(np.float32)


def _project(X: np.ndarray, W: np.ndarray, b: np.ndarray, device: str, rows: int = 65_536):
    """x @ W + b on the device, in chunks: float32 torch tensor (n, k) on the device."""
    import torch

    Wt, bt = torch.from_numpy(W).to(device), torch.from_numpy(b).to(device)
    out = [
        torch.from_numpy(np.ascontiguousarray(X[i : i + rows], dtype=np.float32)).to(device) @ Wt
        + bt
        for i in range(0, len(X), rows)
    ]
    return torch.cat(out) if out else torch.zeros((0, W.shape[1]), device=device)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's "balanced": n / (k * count_c) over the k classes present; 0 for absent ones."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


@dataclass
class TrainedModel:
    """A served model as numpy arrays: scaler+PCA folded into (W, b), then the family's own
    weights (`state`). Device-free, picklable, saved without pickle; scored by `ml.learn.serving`
    with numpy alone, exactly as the registered pyfunc scores it."""

    W: np.ndarray
    b: np.ndarray
    state: dict[str, np.ndarray]
    arch: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    config: dict[str, Any] = field(default_factory=dict)
    family: str = "mlp"  # "mlp" | "logistic" (ml.learn.serving.FAMILIES)

    @property
    def n_classes(self) -> int:
        return int(self.arch["n_classes"])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (n, n_classes), for float32 features (n, 2432)."""
        return predict_proba(self.family, self.W, self.b, self.state, self.arch, X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def save(self, path: str | Path) -> Path:
        """`model.npz` (arrays) and `model.json` (family, architecture, history): no pickle."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {f"{self.family}.{k}": v for k, v in self.state.items()}
        np.savez(path / "model.npz", W=self.W, b=self.b, **arrays)
        meta = {
            "family": self.family,
            "arch": self.arch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "config": self.config,
            "format": SERVING_FORMAT,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        served = ServedModel(path)
        meta = served.meta
        arch = dict(meta["arch"])
        if "hidden" in arch:
            arch["hidden"] = tuple(arch["hidden"])
        return cls(
            served.W,
            served.b,
            served.state,
            arch,
            meta.get("history", []),
            meta.get("best_epoch", -1),
            meta.get("config", {}),
            served.family,
        )


def train_model(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig | None = None,
) -> TrainedModel:
    """Fit scaler+PCA on train, then the MLP with early stopping on validation loss."""
    import torch

    cfg = config or TrainConfig()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    W, b = fit_preprocess(X_train, cfg)
    z_tr, z_va = _project(X_train, W, b, device), _project(X_val, W, b, device)
    y_tr = torch.as_tensor(np.asarray(y_train, np.int64), device=device)
    y_va = torch.as_tensor(np.asarray(y_val, np.int64), device=device)
    arch = {
        "in_dim": int(W.shape[1]),
        "hidden": tuple(cfg.hidden),
        "n_classes": cfg.n_classes,
        "dropout": cfg.dropout,
    }
    net = _mlp(arch).to(device)
    weight = None
    if cfg.class_weight == "balanced":
        weight = torch.from_numpy(class_weights(np.asarray(y_train), cfg.n_classes)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    best, best_epoch, best_state, bad, history = float("inf"), -1, None, 0, []
    n = len(z_tr)
    for epoch in range(cfg.max_epochs):
        t0 = time.monotonic()
        net.train()
        perm = torch.randperm(n, generator=gen).to(device)
        total, correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            logits_b = net(z_tr[idx])
            loss = loss_fn(logits_b, y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((logits_b.argmax(1) == y_tr[idx]).sum())
        net.eval()
        with torch.no_grad():
            logits = net(z_va)
            val_loss = float(loss_fn(logits, y_va)) if len(z_va) else float("nan")
            val_acc = float((logits.argmax(1) == y_va).float().mean()) if len(z_va) else 0.0
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(n, 1),
                # of the batches as they were trained (dropout on): the curve costs no extra pass
                "train_accuracy": correct / max(n, 1),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.monotonic() - t0,
            }
        )
        if val_loss < best - cfg.min_delta:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                log.info("early stop at epoch %d, best %d (val loss %.4f)", epoch, best_epoch, best)
                break
    if best_state is None:  # no validation data: keep the last weights
        best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        best_epoch = len(history) - 1
    state = {k: v.numpy() for k, v in best_state.items()}
    cfg_d = asdict(cfg) | {"hidden": list(cfg.hidden)}
    return TrainedModel(W, b, state, arch, history, best_epoch, cfg_d)


# -- baselines ----------------------------------------------------------------------------------


@dataclass
class MajorityModel:
    label: int
    n_classes: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.zeros((len(X), self.n_classes), np.float32)
        p[:, self.label] = 1.0
        return p

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label, np.int64)


def logistic_model(W: np.ndarray, b: np.ndarray, clf: Any, n_classes: int) -> TrainedModel:
    """A fitted scikit-learn LogisticRegression on z = x @ W + b, as a servable `TrainedModel`
    (family "logistic": its coefficients, intercepts and the classes it saw)."""
    state = {
        "coef": np.asarray(clf.coef_, np.float32),
        "intercept": np.asarray(clf.intercept_, np.float32),
        "classes": np.asarray(clf.classes_, np.int64),
    }
    arch = {"in_dim": int(W.shape[1]), "n_classes": int(n_classes)}
    return TrainedModel(W, b, state, arch, family="logistic")


def train_baselines(
    X_train: np.ndarray, y_train: np.ndarray, model: TrainedModel, config: TrainConfig | None = None
) -> dict[str, Any]:
    """Majority class, and logistic regression on the MLP's own scaler+PCA features (a family
    that can be registered in the MLP's place when it validates better)."""
    from sklearn.linear_model import LogisticRegression

    cfg = config or TrainConfig()
    y = np.asarray(y_train, np.int64)
    majority = MajorityModel(int(np.bincount(y, minlength=cfg.n_classes).argmax()), cfg.n_classes)
    z = np.asarray(X_train, np.float32) @ model.W + model.b
    clf = LogisticRegression(
        max_iter=1000,
        class_weight=cfg.class_weight,
        random_state=cfg.seed,
    ).fit(z, y)
    return {"majority": majority, "logistic": logistic_model(model.W, model.b, clf, cfg.n_classes)}


# -- metrics ------------------------------------------------------------------------------------


def macro_f1_of_counts(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices (..., k, k), rows = truth: the mean F1 over the classes
    present or predicted (sklearn's definition); vectorised, so the gate's bootstrap scores
    thousands of resamples at once with the same definition as every reported score."""
    cm = np.asarray(cm, np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    seen = (support > 0) | (predicted > 0)
    return (f1 * seen).sum(-1) / np.maximum(seen.sum(-1), 1)


def metrics_from_predictions(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """accuracy, balanced accuracy, macro-F1 (sklearn's definitions), per-class recall (None for
    a class absent from y), confusion matrix (rows = truth)."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
    seen = (support > 0) | (predicted > 0)
    n = int(len(y))
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if (support > 0).any() else float("nan"),
        "macro_f1": float(macro_f1_of_counts(cm)) if seen.any() else float("nan"),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> dict:
    """Metrics of any object with `predict_proba(X)` on (X, y)."""
    proba = model.predict_proba(X)
    k = n_classes or proba.shape[1]
    return metrics_from_predictions(y, proba.argmax(axis=1), k)
