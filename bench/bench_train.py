"""Training time and memory: the features read back through the real `load_dataset` (peak RSS
against the size of the features), then `train_model` (StandardScaler + whitened PCA 128, then
the MLP with early stopping) on the train/val split `run_training` uses.

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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ml.lake.partitions import Lake
from ml.lake.schema import N_FEATURES
from tools.synthetic import synthetic_set

DAY = "2024-01-02"
SEP = 0.5  # class centres vs unit latent noise: Bayes accuracy ~0.73, like the demo set (~0.72)


def write_lake(root: str, rows: int, seed: int = 0, chunk: int = 50_000) -> float:
    """A lake with one day of `rows` labelled posts and their features (written chunk by
    chunk, as the embed step writes them); returns the Bayes accuracy of the rows."""
    import pyarrow as pa

    from ml.demo.posts import CLASS_PRIOR
    from ml.features.store import features_table
    from ml.lake.partitions import Lake
    from ml.lake.schema import CLEAN_SCHEMA, DATASET_CLEAN, DATASET_FEATURES, FEATURES_SCHEMA
    from ml.learn.bins import DEFAULT_EDGES

    lake, old = Lake(root), datetime.fromisoformat(DAY)  # created on DAY: labelled at horizon 0
    hits = 0.0
    with (
        lake.writer(DATASET_CLEAN, DAY, CLEAN_SCHEMA) as clean,
        lake.writer(DATASET_FEATURES, DAY, FEATURES_SCHEMA) as feats,
    ):
        for k, i in enumerate(range(0, rows, chunk)):
            n = min(chunk, rows - i)
            X, y, bayes = synthetic_set(
                n, seed + k + 1, sep=SEP, priors=CLASS_PRIOR, space_seed=seed
            )
            hits += bayes * n
            ids = np.arange(i + 1, i + n + 1, dtype=np.int64)
            cols = {f.name: [None] * n for f in CLEAN_SCHEMA}
            cols |= {
                "id": ids,
                "author_id": np.ones(n, np.int64),
                "caption": ["c"] * n,
                "image_uri": ["x"] * n,
                "hearts": np.ones(n, np.int64),
                "comment_count": np.asarray(DEFAULT_EDGES)[y],
                "created_at": [old] * n,
                "updated_at": [old] * n,
            }
            clean.write(pa.table(cols, schema=CLEAN_SCHEMA))
            tags = ("resnet50:random-seed0", "all-MiniLM-L6-v2")
            feats.write(features_table(ids, [""] * n, X[:, :2048], X[:, 2048:], *tags))
    return hits / max(rows, 1)


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    import subprocess
    import tempfile

    import torch

    from ml.learn.dataset import load_dataset
    from ml.learn.model import TrainConfig, metrics_from_predictions, train_baselines, train_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=int, default=50_000, help="all rows (train+val+test); issue: 100000"
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-lake", metavar="DIR", help=argparse.SUPPRESS)  # the child's job
    args = ap.parse_args(argv)
    if args.write_lake:
        print(f"BAYES {write_lake(args.write_lake, args.rows, args.seed):.6f}")
        return {}

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        # the lake is written by a child process, so this one's peak memory is the reader's
        t = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_train",
                "--write-lake",
                tmp,
                "--rows",
                str(args.rows),
                "--seed",
                str(args.seed),
            ],
            cwd=Path(__file__).resolve().parents[1],
            check=True,
            capture_output=True,
            text=True,
        )
        bayes = float(out.stdout.split("BAYES")[-1])
        write_s = time.perf_counter() - t
        rss_before = _peak_rss_gb()
        t = time.perf_counter()
        data = load_dataset(Lake(tmp), DAY, DAY, horizon_days=0)
        load_s = time.perf_counter() - t
        rss_load = _peak_rss_gb()
        tr, va = data.rows("train"), data.rows("val")
        X_tr, y_tr, X_va, y_va = data.X[tr], data.y[tr], data.X[va], data.y[va]
        x_gb = data.X.nbytes / 1e9
        print(
            f"data: {args.rows} x {N_FEATURES} float32 ({x_gb:.2f} GB), train {len(y_tr)}, "
            f"val {len(y_va)}; lake written in {write_s:.1f}s (not timed below); "
            f"load_dataset {load_s:.1f}s, peak RSS {rss_load:.2f} GB (before it "
            f"{rss_before:.2f} GB) = {rss_load / max(x_gb, 1e-9):.2f}x the features; "
            f"device={args.device} torch_threads={torch.get_num_threads()}"
        )

        cfg = TrainConfig(device=args.device, seed=args.seed, max_epochs=args.max_epochs)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        model = train_model(X_tr, y_tr, X_va, y_va, cfg)
        mlp_s = time.perf_counter() - t
        gpu_gb = torch.cuda.max_memory_allocated() / 1e9 if args.device.startswith("cuda") else 0
        epochs_s = sum(h["seconds"] for h in model.history)
        t = time.perf_counter()
        baselines = train_baselines(X_tr, y_tr, model, cfg)
        logit_s = time.perf_counter() - t
        rss_train = _peak_rss_gb()

        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        device = "cpu" if device == "auto" else device
        m_mlp = metrics_from_predictions(y_va, model.predict(X_va), 8)
        m_log = metrics_from_predictions(y_va, baselines["logistic"].predict(X_va), 8)
    rate = len(y_tr) / mlp_s
    print(
        f"train_model: {mlp_s:.1f}s = {rate:,.0f} train rows/s "
        f"(PCA + projection {mlp_s - epochs_s:.1f}s, {len(model.history)} epochs "
        f"{epochs_s:.1f}s = {epochs_s / max(1, len(model.history)):.2f}s/epoch, "
        f"best epoch {model.best_epoch}); peak RSS {rss_train:.2f} GB"
        + (f", peak GPU memory {gpu_gb:.2f} GB" if gpu_gb else "")
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
        f"epochs={len(model.history)} rows={args.rows} device={device} "
        f"load_seconds={load_s:.1f} peak_rss_gb={rss_train:.2f} features_gb={x_gb:.2f} "
        f"peak_gpu_gb={gpu_gb:.2f}"
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
        "load_seconds": load_s,
        "peak_rss_gb": rss_train,
        "features_gb": x_gb,
        "peak_gpu_gb": gpu_gb,
        "val_accuracy_mlp": m_mlp["accuracy"],
        "val_accuracy_logistic": m_log["accuracy"],
        "bayes_accuracy": bayes,
    }


if __name__ == "__main__":
    main()
