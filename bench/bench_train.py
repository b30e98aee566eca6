"""Training time: `train_model` (StandardScaler + whitened PCA 128, then the MLP with early
stopping) on N x 2432 float32 features, split train/val/test as `run_training` splits them.

Data (synthetic, seeded, `tools.synthetic`, the tests' recipe): 8 classes with the demo prior;
each row is its class centre plus latent noise in a random 16-d subspace of the 2432 dimensions,
plus isotropic noise in all of them, so PCA has a subspace to find and the classes overlap
(accuracy well below 1). Made in chunks, so memory stays at X plus one chunk.

Baseline in the same run: the logistic regression of `train_baselines` (what the nightly step
also fits), on the same training rows and the model's own scaler + PCA projection. The ratio
mlp/logistic says how many times the linear baseline's fitting time the whole model costs
(PCA included); the breakdown splits `train_model` into PCA + projection and the MLP epochs.

    .venv/bin/python -m bench train                                    # CPU, 50k rows
    .venv/bin/python bench/bench_train.py --rows 100000                # the issue's CPU figure
    .venv/bin/python bench/bench_train.py --device cuda --rows 1000000  # the GPU figure
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ml.schema import N_FEATURES
from tools.synthetic import synthetic_set

SEP = 0.5  # class centres vs unit latent noise: Bayes accuracy ~0.73, like the demo set (~0.72)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(X float32 (n, 2432), y int64 (n,), Bayes accuracy on these rows), made in chunks."""
    from ml.demo_data import CLASS_PRIOR

    X, y, bayes = synthetic_set(n, seed, sep=SEP, priors=CLASS_PRIOR)
    return X, y.astype(np.int64), bayes


def main(argv: list[str] | None = None) -> dict:
    import torch

    from ml.labels import assign_splits
    from ml.model import TrainConfig, metrics_from_predictions, train_baselines, train_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=50_000, help="all rows (train+val+test); issue: 100000"
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    X, y, bayes = make_data(args.rows, args.seed)
    split = assign_splits(np.arange(1, args.rows + 1, dtype=np.int64), args.rows)
    tr, va = split == "train", split == "val"
    X_tr, y_tr, X_va, y_va = X[tr], y[tr], X[va], y[va]
    del X
    print(
        f"data: {args.rows} x {N_FEATURES} float32 ({args.rows * N_FEATURES * 4 / 1e9:.2f} GB), "
        f"train {len(y_tr)}, val {len(y_va)}, made in {time.perf_counter() - t:.1f}s; "
        f"device={args.device} torch_threads={torch.get_num_threads()}"
    )

    cfg = TrainConfig(device=args.device, seed=args.seed, max_epochs=args.max_epochs)
    t = time.perf_counter()
    model = train_model(X_tr, y_tr, X_va, y_va, cfg)
    mlp_s = time.perf_counter() - t
    epochs_s = sum(h["seconds"] for h in model.history)
    t = time.perf_counter()
    baselines = train_baselines(X_tr, y_tr, model, cfg)
    logit_s = time.perf_counter() - t

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    m_mlp = metrics_from_predictions(y_va, model.predict(X_va), 8)
    m_log = metrics_from_predictions(y_va, baselines["logistic"].predict(X_va), 8)
    rate = len(y_tr) / mlp_s
    print(
        f"train_model: {mlp_s:.1f}s = {rate:,.0f} train rows/s "
        f"(PCA + projection {mlp_s - epochs_s:.1f}s, {len(model.history)} epochs "
        f"{epochs_s:.1f}s = {epochs_s / max(1, len(model.history)):.2f}s/epoch, "
        f"best epoch {model.best_epoch})"
    )
    print(f"logistic baseline (train_baselines): {logit_s:.1f}s on the same rows and projection")
    print(f"ratio train_model / logistic: {mlp_s / logit_s:.2f}x")
    print(
        f"signal check (val, not a timing): accuracy mlp {m_mlp['accuracy']:.3f}, logistic "
        f"{m_log['accuracy']:.3f}, Bayes {bayes:.3f}; macro-F1 mlp {m_mlp['macro_f1']:.3f}, "
        f"logistic {m_log['macro_f1']:.3f}"
    )
    if args.rows < 100_000:
        print(
            "the issue's CPU figure (about 4 min on 2 shared cores): "
            ".venv/bin/python -m bench.bench_train --rows 100000"
        )
    print(
        f"RESULT train_seconds={mlp_s:.1f} train_rows_per_s={rate:.0f} "
        f"logistic_seconds={logit_s:.1f} ratio={mlp_s / logit_s:.2f}x "
        f"epochs={len(model.history)} rows={args.rows} device={device}"
    )
    return {
        "rows": args.rows,
        "train_rows": int(len(y_tr)),
        "device": device,
        "train_seconds": mlp_s,
        "train_rows_per_s": rate,
        "pca_seconds": mlp_s - epochs_s,
        "epochs": len(model.history),
        "epoch_seconds": epochs_s,
        "logistic_seconds": logit_s,
        "ratio": mlp_s / logit_s,
        "val_accuracy_mlp": m_mlp["accuracy"],
        "val_accuracy_logistic": m_log["accuracy"],
        "bayes_accuracy": bayes,
    }


if __name__ == "__main__":
    main()
