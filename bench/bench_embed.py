"""Embedding throughput: posts/s end to end (fetch + hash + decode + ResNet50 + MiniLM + Parquet
write, i.e. `embed_partition` as `python -m ml embed` runs it) against the model-only ceiling.

Setup (not timed): a temp lake with one `posts_clean` day of `--posts` demo posts (captions and
photos from `ml.demo.posts`, every photo a plain JPEG, 70% square, 15% 4:5, 15% 4:3, longest side
`--image-size`) and the photos in a temp image root.

Timed, all in this run, for each image-encoder configuration: `--precision` (default: bf16 on
a CPU with native bf16, else `auto`, i.e. fp16 on CUDA) and, on CPU, the baseline
`--baseline fp32` (the default path, as before):
- ceiling: the same ImageEncoder + TextEncoder on pre-decoded uint8 tensors (already on the
  device) and in-memory captions, batch by batch with captions in a second thread as the
  pipeline does: no fetch, no decode, no write. Ratio = end_to_end / ceiling.
- end to end: `embed_partition` over the day (features removed before each run), models already
  loaded and warm; the configurations take turns, `--rounds` times, the best run of each kept,
  and the speed-up of `--precision` over the baseline is printed.
- fidelity: cosine of each post's 2048-d features under `--precision` to the baseline's.
- incremental: `embed_partition` again on the same day (every post cached): its time as a
  fraction of the first run (goal < 5%).
- caption check: the text encoder alone (captions/s) against the image encoder alone (img/s).

ResNet50 runs with RANDOM weights (`--image-weights none`): ImageNet weights cannot be
downloaded here, and throughput does not depend on the weight values.

    .venv/bin/python -m bench embed                      # CPU defaults: 192 posts, 512 px
    .venv/bin/python bench/bench_embed.py --posts 480 --image-size 256  # a demo shard's size
    .venv/bin/python bench/bench_embed.py --device cuda  # GPU defaults: 8192 posts, 1080 px
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

END = date(2026, 11, 21)  # the generated day is END - 1
SEED = 7


def build_day(root: Path, n: int, size: int, workers: int) -> tuple[object, str, list[str]]:
    """A lake with posts_clean/ds=D of `n` clean posts and their JPEGs: (lake, ds, captions)."""
    import pandas as pd
    import pyarrow as pa

    from ml.demo import posts as dd
    from ml.demo.photos import write_images
    from ml.ingest.captions import sanitize_captions
    from ml.ingest.images import ImageStore
    from ml.lake.partitions import Lake
    from ml.lake.schema import CLEAN_SCHEMA, DATASET_CLEAN

    store = ImageStore(str(root / "images"))
    store.ensure_root()
    p = dd.build_posts(n, 1, END, SEED, 1, 0.0, size, store.uri_prefix)
    p.image_mode = ["jpeg"] * n  # the odd formats of the demo set are not what we time here
    write_images(p, store, SEED, workers)
    captions = sanitize_captions(pd.Series(p.captions, dtype="object")).tolist()
    table = pa.table(
        {
            "id": pa.array(p.ids, pa.int64()),
            "author_id": pa.array(p.author, pa.int64()),
            "caption": pa.array(captions, pa.large_string()),
            "image_uri": pa.array(p.uris, pa.large_string()),
            "hearts": pa.array(p.hearts, pa.int64()),
            "comment_count": pa.array(p.comments, pa.int64()),
            "created_at": pa.array(p.created_us, pa.timestamp("us")),
            "updated_at": pa.array(p.updated_us, pa.timestamp("us")),
            "image_format": pa.array(["JPEG"] * n, pa.string()),
            "image_width": pa.array(p.width, pa.int32()),
            "image_height": pa.array(p.height, pa.int32()),
            "exif_orientation": pa.array(np.ones(n, np.int8), pa.int8()),
        },
        schema=CLEAN_SCHEMA,
    )
    lake = Lake(str(root / "lake"))
    lake.check()
    ds = (END - timedelta(days=1)).isoformat()
    with lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA) as w:
        w.write(table)
    return lake, ds, captions


def predecode(image_root: Path, uris: list[str], workers: int):
    """uint8 (N, 3, 224, 224) tensor of the photos, decoded as the CPU path decodes them."""
    import torch

    from ml.features.encoders import pillow_pixels
    from ml.ingest.images import ImageStore

    store = ImageStore(str(image_root))
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        return torch.stack(list(pool.map(lambda u: pillow_pixels(store.fetch(u)), uris)))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def model_pass(image_encoder, text_encoder, pixels, captions, batch: int, mode: str) -> float:
    """Seconds for one pass over all posts, batch by batch like `embed_partition`:
    mode "both" (captions in a second thread), "image" or "text"."""
    n = len(captions)
    pool = ThreadPoolExecutor(1, thread_name_prefix="captions")
    _sync(image_encoder.device)
    t0 = time.perf_counter()
    try:
        for i in range(0, n, batch):
            sl = slice(i, min(n, i + batch))
            fut = pool.submit(text_encoder.encode, captions[sl]) if mode != "image" else None
            if mode != "text":
                image_encoder.encode(pixels[sl])  # returns numpy: waits for the device
            if fut is not None:
                fut.result()
        _sync(image_encoder.device)
        return time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from ml.config import Settings
    from ml.features.embed import EmbedOptions, embed_partition, worker_context
    from ml.features.encoders import (
        ImageEncoder,
        RandomWeightsWarning,
        TextEncoder,
        native_bf16,
        resolve_device,
        resolve_precision,
    )
    from ml.ingest.images import ImageStore
    from ml.lake.schema import DATASET_CLEAN, DATASET_FEATURES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:K")
    ap.add_argument("--posts", type=int, default=None, help="default 192 on CPU, 8192 on GPU")
    ap.add_argument("--image-size", type=int, default=None, help="default 512 CPU, 1080 GPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 CPU, 256 GPU")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (as ml embed)")
    ap.add_argument("--decode", choices=["auto", "pillow", "device"], default="auto")
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default=None,
        help="the configuration timed (default: bf16 on a CPU with native bf16, else auto)",
    )
    ap.add_argument(
        "--baseline",
        choices=["fp32", "fp16", "bf16", "none"],
        default=None,
        help="configuration timed against --precision in the same run (default: fp32 on CPU, "
        "the path of before; none on CUDA)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="end-to-end runs per configuration")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image model")
    ap.add_argument(
        "--text-model", default=None, help="sentence-transformers dir (default: packaged MiniLM)"
    )
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    n = args.posts or (8192 if gpu else 192)
    size = args.image_size or (1080 if gpu else 512)
    batch = args.batch_size or (256 if gpu else 32)
    cores = os.cpu_count() or 1
    workers = (
        args.workers if args.workers is not None else min(8, max(1, Settings().workers - 1))
    )  # the same default as `python -m ml embed`
    if args.precision is None:
        args.precision = "bf16" if not gpu and native_bf16() else "auto"
    main_prec = resolve_precision(args.precision, device)
    base = args.baseline or ("none" if gpu else "fp32")
    main_key = main_prec
    precisions = [main_key] + ([base] if base not in ("none", main_key) else [])

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        lake, ds, captions = build_day(root, n, size, cores)
        uris = lake.read_partition(DATASET_CLEAN, ds, columns=["image_uri"])["image_uri"]
        sizes = [f.stat().st_size for f in (root / "images").rglob("*.jpg")]
        print(
            f"setup: {n} posts, JPEG longest side {size}px, {np.mean(sizes) / 1e3:.0f} KB mean, "
            f"in {time.perf_counter() - t:.1f}s"
        )
        print(
            f"device={device} batch={batch} workers={workers} precision={args.precision} "
            f"(= {main_prec}) baseline={base} compile={args.compile} decode={args.decode} "
            f"torch_threads={torch.get_num_threads()}"
        )
        print("NOTE: ResNet50 with RANDOM weights (--image-weights none); speed is the same")

        warnings.simplefilter("ignore", RandomWeightsWarning)
        # tqdm's monitor thread (started by the model loading bars) would leave this process
        # multi-threaded, and `embed_partition` then starts DataLoader workers with spawn (about
        # 3 s more per run here) where `python -m ml embed`, which loads its models lazily after
        # the workers start, forks them. Without the monitor this process forks too, like the CLI.
        import tqdm.std

        tqdm.std.tqdm.monitor_interval = 0
        encoders = {
            p: ImageEncoder(
                "none",
                device,
                batch,
                p,
                args.compile and p == main_key,
                seed=0,
            )
            for p in precisions
        }
        text_encoder = TextEncoder(args.text_model, device, batch_size=max(batch, 256))
        t = time.perf_counter()
        for enc in encoders.values():
            enc.load()
        text_encoder.load()
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
        for p, enc in encoders.items():
            for _ in range(3 if args.compile and p == main_key else 1):
                enc.encode(warm)
        text_encoder.encode(captions[:batch])
        print(f"models loaded in {load_s:.1f}s, warmed up in {time.perf_counter() - t:.1f}s")

        t = time.perf_counter()
        pixels = predecode(root / "images", uris.to_pylist(), cores).to(device)
        print(f"pre-decoded {n} photos for the ceiling in {time.perf_counter() - t:.1f}s")

        ceiling = {}
        for p, enc in encoders.items():
            ceiling_s = model_pass(enc, text_encoder, pixels, captions, batch, "both")
            ceiling[p] = n / ceiling_s
            print(f"model-only ceiling [{p:>4}]  : {ceiling[p]:9.1f} posts/s  ({ceiling_s:.1f}s)")

        store = functools.partial(ImageStore, str(root / "images"))
        print(f"DataLoader workers start with: {worker_context()}")
        opts = EmbedOptions(batch_size=batch, workers=workers, decode=args.decode)
        best: dict[str, float] = {p: float("inf") for p in precisions}
        feats: dict[str, np.ndarray] = {}
        for r in range(max(1, args.rounds)):
            for p, enc in encoders.items():  # taking turns: a noisy machine hits all alike
                shutil.rmtree(root / "lake" / DATASET_FEATURES, ignore_errors=True)
                t = time.perf_counter()
                first = embed_partition(lake, ds, store, enc, text_encoder, opts)
                s = time.perf_counter() - t
                best[p] = min(best[p], s)
                if first["computed"] != n or first["skipped"]:
                    print(f"WARNING: [{p}] computed {first['computed']}, skip {first['skipped']}")
                print(f"  round {r + 1} [{p:>4}] end to end: {n / s:9.1f} posts/s  ({s:.1f}s)")
                t_ = lake.read_partition(DATASET_FEATURES, ds, columns=["post_id", "img"])
                order = np.argsort(t_["post_id"].to_numpy())
                feats[p] = np.stack(t_["img"].to_numpy(zero_copy_only=False))[order]
        e2e = {p: n / s for p, s in best.items()}
        for p in precisions:
            print(
                f"end to end (embed_partition) [{p:>4}]: {e2e[p]:9.1f} posts/s "
                f"({best[p]:.1f}s best of {args.rounds}); / ceiling {e2e[p] / ceiling[p]:.2f}x"
            )
        speedup = None
        if len(precisions) > 1:
            speedup = e2e[main_key] / e2e[base]
            cos = _cosines(feats[main_key], feats[base])
            print(
                f"speed-up {main_key} over the baseline {base}, end to end: {speedup:.2f}x; "
                f"feature cosine to {base}: min {cos.min():.6f}, mean {cos.mean():.6f}"
            )

        image_encoder = encoders[main_key]
        e2e_s = best[main_key]
        t = time.perf_counter()
        again = embed_partition(lake, ds, store, image_encoder, text_encoder, opts)
        inc_s = time.perf_counter() - t
        if again["cached"] != n or again["computed"]:
            print(f"WARNING: re-run cached {again['cached']}, computed {again['computed']}")
        frac = inc_s / e2e_s
        print(
            f"incremental re-run (all cached)   : {inc_s:9.2f}s = {100 * frac:.1f}% of the first "
            f"run (goal < 5%)"
        )

        # caption check on the first few batches (the image pass is the slow one on CPU)
        m = min(n, 4 * batch)
        pix_m, cap_m = pixels[:m], captions[:m]
        image_s = model_pass(image_encoder, text_encoder, pix_m, cap_m, batch, "image")
        text_s = min(
            model_pass(image_encoder, text_encoder, pix_m, cap_m, batch, "text") for _ in range(3)
        )
        img_rate, cap_rate = m / image_s, m / text_s
        print(f"image encoder alone ({m} posts)   : {img_rate:9.1f} img/s")
        print(
            f"text encoder alone                : {cap_rate:9.1f} captions/s "
            f"({cap_rate / img_rate:.1f}x the image encoder: "
            f"{'not' if cap_rate > img_rate else 'IS'} the bottleneck)"
        )
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
    rate = e2e[main_key]
    print(
        f"RESULT embed_posts_per_s={rate:.1f} ceiling_posts_per_s={ceiling[main_key]:.1f} "
        f"ratio={rate / ceiling[main_key]:.2f}x incremental_fraction={frac:.3f} "
        f"captions_per_s={cap_rate:.0f} image_only_per_s={img_rate:.1f} device={device} "
        f"precision={main_key} "
        + (
            f"baseline={base} baseline_posts_per_s={e2e[base]:.1f} speedup={speedup:.2f}x "
            if speedup
            else ""
        )
        + (f"peak_gpu_gib={peak:.1f} " if peak is not None else "")
        + f"posts={n} image_size={size} batch={batch} weights=random"
    )
    return {
        "device": device,
        "posts": n,
        "image_size": size,
        "batch_size": batch,
        "precision": main_key,
        "embed_posts_per_s": rate,
        "ceiling_posts_per_s": ceiling[main_key],
        "ratio": rate / ceiling[main_key],
        "baseline": base if speedup else None,
        "baseline_posts_per_s": e2e[base] if speedup else None,
        "speedup": speedup,
        "incremental_seconds": inc_s,
        "first_run_seconds": e2e_s,
        "incremental_fraction": frac,
        "captions_per_s": cap_rate,
        "image_only_per_s": img_rate,
        "model_load_seconds": load_s,
        "peak_gpu_gib": peak,
        "weights": "random",
    }


if __name__ == "__main__":
    main()
