"""The engagement classifier and its baselines, and the metrics every stage scores them with.

Model: StandardScaler -> PCA(128, whitened) fitted with scikit-learn, folded into one affine map
(W, b) so that inference is a single matmul; then a PyTorch MLP (ReLU, dropout) trained with
Adam on cross-entropy with balanced class weights, early-stopped on the (equally weighted)
validation loss. `TrainedModel` holds only numpy arrays and plain config: it pickles, saves to
`model.npz` + `model.json` without pickle, and predicts identically after a round trip, on CPU or
CUDA, which is what an `mlflow.pyfunc` wrapper needs (input: float32 n x 2432 features).

Baselines, trained on the same split: the majority class, and logistic regression (balanced
class weights) on the same standardised + PCA features.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.encoders import resolve_device
from ml.labels import DEFAULT_EDGES

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
    """Scaler+PCA (as W, b) and the MLP weights as numpy arrays: device-free and picklable."""

    W: np.ndarray
    b: np.ndarray
    state: dict[str, np.ndarray]
    arch: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    config: dict[str, Any] = field(default_factory=dict)
    _nets: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return int(self.arch["n_classes"])

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_nets"] = {}
        return d

    def _net(self, device: str):
        import torch

        if device not in self._nets:
            net = _mlp(self.arch)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
            self._nets[device] = net.to(device).eval()
        return self._nets[device]

    def predict_proba(
        self, X: np.ndarray, device: str = "cpu", batch_rows: int = 65_536
    ) -> np.ndarray:
        """Class probabilities, float32 (n, n_classes), for float32 features (n, 2432)."""
        import torch

        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.W.shape[0]:
            raise ValueError(f"expected features of shape (n, {self.W.shape[0]}), got {X.shape}")
        net, out = self._net(device), []
        with torch.inference_mode():
            for i in range(0, len(X), batch_rows):
                z = _project(X[i : i + batch_rows], self.W, self.b, device)
                out.append(torch.softmax(net(z), dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)

    def predict(self, X: np.ndarray, device: str = "cpu") -> np.ndarray:
        return self.predict_proba(X, device).argmax(axis=1)

    def save(self, path: str | Path) -> Path:
        """`model.npz` (arrays) and `model.json` (architecture, history): no pickle involved."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(
            path / "model.npz", W=self.W, b=self.b, **{f"mlp.{k}": v for k, v in self.state.items()}
        )
        meta = {
            "arch": self.arch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "config": self.config,
            "format": 1,
        }
        (path / "model.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz") as z:
            arrays = {k: z[k] for k in z.files}
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("mlp.")}
        arch = meta["arch"] | {"hidden": tuple(meta["arch"]["hidden"])}
        return cls(
            arrays["W"],
            arrays["b"],
            state,
            arch,
            meta["history"],
            meta["best_epoch"],
            meta["config"],
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
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(z_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        net.eval()
        with torch.no_grad():
            logits = net(z_va)
            val_loss = float(loss_fn(logits, y_va)) if len(z_va) else float("nan")
            val_acc = float((logits.argmax(1) == y_va).float().mean()) if len(z_va) else 0.0
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(n, 1),
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


@dataclass
class LogisticModel:
    W: np.ndarray
    b: np.ndarray
    clf: Any
    n_classes: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, np.float32) @ self.W + self.b
        p = np.zeros((len(X), self.n_classes), np.float32)
        p[:, self.clf.classes_] = self.clf.predict_proba(z)
        return p

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


def train_baselines(
    X_train: np.ndarray, y_train: np.ndarray, model: TrainedModel, config: TrainConfig | None = None
) -> dict[str, Any]:
    """Majority class, and logistic regression on the model's own scaler+PCA features."""
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
    return {"majority": majority, "logistic": LogisticModel(model.W, model.b, clf, cfg.n_classes)}


# -- metrics ------------------------------------------------------------------------------------


def metrics_from_predictions(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """accuracy, balanced accuracy, macro-F1 (sklearn's definitions), per-class recall (None for
    a class absent from y), confusion matrix (rows = truth)."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(
            precision + np.nan_to_num(recall) > 0,
            2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)),
            0.0,
        )
    seen = (support > 0) | (predicted > 0)
    n = int(len(y))
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if (support > 0).any() else float("nan"),
        "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> dict:
    """Metrics of any object with `predict_proba(X)` on (X, y)."""
    proba = model.predict_proba(X)
    k = n_classes or proba.shape[1]
    return metrics_from_predictions(y, proba.argmax(axis=1), k)
