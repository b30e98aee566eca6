"""`python -m ml embed`: photo and caption embeddings of one day of clean posts (the encoders
are in `ml.features.encoders`, the rows they make in `ml.features.store`).

Pipeline: a DataLoader whose workers fetch the bytes, hash them with the caption, answer cache
hits without decoding, and decode the rest (Pillow with `draft`, so a JPEG is decoded at a
reduced DCT scale); with `--decode device` (the default on CUDA) JPEGs travel as raw bytes and
are batch-decoded by nvJPEG (TorchCodec's `decode_jpeg(list, device=...)`), Pillow being the
fallback for other formats and for files nvJPEG refuses. Captions are encoded in a second thread
while the image model runs (the fast tokenizer and torch both release the GIL).

Cache: the key is (post_id, content_hash, image_model, text_model). Candidates are read once
from every committed `features` partition with a post-id filter (Parquet statistics prune row
groups), so the lookup costs a column scan, not a load of the whole history; the worker then
compares the fresh hash. A post whose image or caption changed, or whose features came from other
weights, is recomputed. Identical content under *another* post id is not looked up (it would
need a hash index over all history); it is simply computed again.

Shards: `--shard i/N` embeds the posts whose id hashes into the i-th of N equal bucket ranges and
commits its own partition `features_shards/shard=i-of-N/ds=D`, so N pods never write the same
partition; `--merge-shards N` then checks that all N shards come from the same `posts_clean`
version and commits `features/ds=D`, the only partition downstream reads.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ml.config import parse_shard
from ml.features.encoders import (
    ImageEncoder,
    Item,
    TextEncoder,
    exif_orientation,
    pillow_pixels,
    resolve_device,
)
from ml.features.store import conform, features_table, photo_hashes, read_rows
from ml.hashing import hash_buckets
from ml.lake.schema import DATASET_CLEAN, DATASET_FEATURES, FEATURES_SCHEMA, shard_dataset
from ml.progress import Progress

log = logging.getLogger(__name__)

SHARD_BUCKETS = 1 << 16
SHARD_SALT = 0x9E3779B9  # independent of the split's salts (ml.learn.splits)


def content_hash(image_bytes: bytes, caption: str | None) -> str:
    """sha256 over the image bytes and the sanitised caption: the cache key of a post's content."""
    h = hashlib.sha256(image_bytes)
    h.update(b"\x00")
    h.update((caption or "").encode("utf-8"))
    return h.hexdigest()


def shard_mask(post_ids, index: int, count: int) -> np.ndarray:
    """Posts of shard `index` of `count`: a contiguous range of a stable id hash."""
    b = hash_buckets(post_ids, salt=SHARD_SALT, n_buckets=SHARD_BUCKETS)
    lo, hi = index * SHARD_BUCKETS // count, (index + 1) * SHARD_BUCKETS // count
    return (b >= lo) & (b < hi)


# -- the per-post work done in DataLoader workers ----------------------------------------------


class PostImages:
    """Map-style dataset over the posts of one run (DataLoader needs no base class)."""

    def __init__(
        self,
        post_ids: np.ndarray,
        uris: Sequence[str],
        captions: Sequence[str],
        store_factory: Callable[[], Any],
        cached: dict[int, set[str]],
        device_jpeg: bool,
    ) -> None:
        self.post_ids, self.uris, self.captions = post_ids, uris, captions
        self.store_factory, self.cached, self.device_jpeg = store_factory, cached, device_jpeg
        self._store: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.uris)

    def _get_store(self) -> Any:
        # one store per process: S3 clients do not survive a fork
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = self.store_factory(), os.getpid()
        return self._store

    def __getitem__(self, idx: int) -> Item:
        try:
            data = self._get_store().fetch(self.uris[idx])
        except Exception as exc:
            return Item(idx, "failed", reason=f"fetch: {type(exc).__name__}: {exc}"[:300])
        h = content_hash(data, self.captions[idx])
        if h in self.cached.get(int(self.post_ids[idx]), ()):
            return Item(idx, "cached", h)
        try:
            if self.device_jpeg:
                from PIL import Image

                img = Image.open(io.BytesIO(data))
                if img.format == "JPEG":
                    import torch

                    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    return Item(idx, "jpeg", h, raw, exif_orientation(img))
            return Item(idx, "pixels", h, pillow_pixels(data))
        except Exception as exc:
            return Item(idx, "failed", h, reason=f"decode: {type(exc).__name__}: {exc}"[:300])


def _collate_list(items: list[Item]) -> list[Item]:
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def worker_context() -> str:
    """fork is cheap but copies locks held by other threads (Airflow's, boto3's) into the child,
    where they never unlock: spawn whenever this process already runs threads."""
    import threading

    return "fork" if threading.active_count() == 1 else "spawn"


# -- the run ------------------------------------------------------------------------------------


@dataclass
class EmbedOptions:
    batch_size: int = 64
    workers: int = 0
    decode: str = "auto"  # auto | pillow | device
    shard: tuple[int, int] | None = None
    progress_every_s: float = 15.0  # a line per batch at most this often (demo: posts/s, ETA)
    extra_cache_sources: list[tuple[str, str]] = field(default_factory=list)


def cache_candidates(
    lake: Any,
    post_ids: np.ndarray,
    image_model: str,
    text_model: str,
    sources: list[tuple[str, str]],
) -> tuple[dict[int, set[str]], dict[tuple[int, str], tuple[str, str]]]:
    """(post_id -> content hashes with features, (post_id, hash) -> (dataset, ds) to copy from)."""
    by_post: dict[int, set[str]] = {}
    where: dict[tuple[int, str], tuple[str, str]] = {}
    if len(post_ids) == 0:
        return by_post, where
    cols = ["post_id", "content_hash", "image_model", "text_model"]
    for src in sources:
        t = read_rows(lake, src[0], src[1], post_ids, cols)
        if t is None or t.num_rows == 0:
            continue
        cols_ = [t[c].to_pylist() for c in cols]
        for pid, h, a, b in zip(*cols_, strict=True):
            if a == image_model and b == text_model:
                by_post.setdefault(pid, set()).add(h)
                where[(pid, h)] = src
    return by_post, where


def embed_partition(
    lake: Any,
    ds: str,
    store_factory: Callable[[], Any],
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    options: EmbedOptions | None = None,
) -> dict[str, Any]:
    """Embed `posts_clean/ds` (or one shard of it) into `features` (or `features_shards`),
    copying cached rows. Returns the run summary (also stored in the partition manifest)."""
    import torch
    from torch.utils.data import DataLoader

    from ml.lake.partitions import ds_str

    opts = options or EmbedOptions()
    ds = ds_str(ds)
    t0 = time.monotonic()
    clean = lake.read_partition(DATASET_CLEAN, ds, columns=["id", "caption", "image_uri"])
    source_run = (lake.read_manifest(DATASET_CLEAN, ds) or {}).get("run_id")
    ids = clean["id"].to_numpy()
    keep = np.ones(len(ids), bool) if opts.shard is None else shard_mask(ids, *opts.shard)
    clean = clean.filter(pa.array(keep))
    ids = clean["id"].to_numpy()
    uris, captions = clean["image_uri"].to_pylist(), clean["caption"].to_pylist()
    out_dataset = DATASET_FEATURES if opts.shard is None else shard_dataset(*opts.shard)
    label = f"embed ds={ds}" + (f" shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else "")

    sources = [(DATASET_FEATURES, d) for d in lake.partitions(DATASET_FEATURES)] + list(
        opts.extra_cache_sources
    )
    if opts.shard is not None and lake.read_manifest(out_dataset, ds) is not None:
        sources.append((out_dataset, ds))
    im_id, tm_id = image_encoder.model_id, text_encoder.model_id
    cached, where = cache_candidates(lake, ids, im_id, tm_id, sources)

    device_jpeg = opts.decode == "device" or (
        opts.decode == "auto" and image_encoder.device.startswith("cuda")
    )
    dataset = PostImages(ids, uris, captions, store_factory, cached, device_jpeg)
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        collate_fn=_collate_list,
        worker_init_fn=_worker_init if opts.workers else None,
        prefetch_factor=4 if opts.workers else None,
        pin_memory=False,  # items are dataclasses; device copies happen per batch
        multiprocessing_context=worker_context() if opts.workers else None,
    )
    progress = Progress(label, len(ids), opts.progress_every_s, unit="posts")
    progress.start()
    skipped: list[dict[str, Any]] = []
    hits: dict[tuple[str, str], dict[int, str]] = {}
    computed = 0
    text_pool = ThreadPoolExecutor(1, thread_name_prefix="captions")

    def skip(it: Item) -> None:
        pid = int(ids[it.idx])
        skipped.append({"post_id": pid, "reason": it.reason})
        log.warning("%s: skipped post %d: %s", label, pid, it.reason)

    with lake.writer(out_dataset, ds, FEATURES_SCHEMA) as w:
        try:
            for batch in loader:
                todo: list[tuple[Item, Any]] = []
                jpegs = [it for it in batch if it.kind == "jpeg"]
                decoded = image_encoder.decode_jpegs(jpegs) if jpegs else []
                dec = dict(zip((it.idx for it in jpegs), decoded, strict=True))
                for it in batch:
                    if it.kind == "cached":
                        hits.setdefault(where[(int(ids[it.idx]), it.hash)], {})[
                            int(ids[it.idx])
                        ] = it.hash
                    elif it.kind == "failed" or (it.kind == "jpeg" and dec[it.idx] is None):
                        skip(it)
                    else:
                        todo.append((it, it.payload if it.kind == "pixels" else dec[it.idx]))
                if todo:
                    caps = [captions[it.idx] for it, _ in todo]
                    fut = text_pool.submit(text_encoder.encode, caps)
                    dev = image_encoder.device
                    pixels = torch.stack([p.to(dev) for _, p in todo])
                    img = image_encoder.encode(pixels)
                    txt = fut.result()
                    w.write(
                        features_table(
                            [ids[it.idx] for it, _ in todo],
                            [it.hash for it, _ in todo],
                            img,
                            txt,
                            im_id,
                            tm_id,
                            photo_hashes(pixels),  # the split key of reposts (ml.learn.splits)
                        )
                    )
                    computed += len(todo)
                progress.add(len(batch))
            progress.finish()
        finally:
            text_pool.shutdown(wait=True)

        n_cached = 0
        for (dataset_name, src_ds), want in sorted(hits.items()):
            t = read_rows(lake, dataset_name, src_ds, np.fromiter(want, np.int64), None)
            pids, hs = t["post_id"].to_pylist(), t["content_hash"].to_pylist()
            rows, seen = [], set()
            for i, (pid, h) in enumerate(zip(pids, hs, strict=True)):
                if want.get(pid) == h and pid not in seen:
                    rows.append(i)
                    seen.add(pid)
            for pid in set(want) - seen:  # the cache partition changed under us: say so
                skipped.append({"post_id": pid, "reason": "cache: cached row vanished"})
                log.error("%s: post %d: cached features vanished from %s", label, pid, src_ds)
            w.write(conform(t.take(pa.array(rows, pa.int64()))))
            n_cached += len(rows)

        seconds = time.monotonic() - t0
        summary = {
            "ds": ds,
            "dataset": out_dataset,
            "rows": computed + n_cached,
            "posts": len(ids),
            "computed": computed,
            "cached": n_cached,
            "skipped": len(skipped),
            "seconds": round(seconds, 3),
            "posts_per_s": round(len(ids) / seconds, 1) if seconds > 0 else None,
            "image_model": im_id,
            "text_model": tm_id,
            "shard": list(opts.shard) if opts.shard else None,
            "source_run_id": source_run,
        }
        w.meta.update({"summary": summary, "skipped": skipped})
    return summary


def merge_shards(lake: Any, ds: str, count: int) -> dict[str, Any]:
    """Commit `features/ds` from the N shard partitions of that day, all of one source run."""
    from ml.lake.partitions import ds_str

    ds = ds_str(ds)
    t0 = time.monotonic()
    manifests = [lake.read_manifest(shard_dataset(i, count), ds) for i in range(count)]
    missing = [i for i, m in enumerate(manifests) if m is None]
    if missing:
        raise FileNotFoundError(f"features shards {missing} of {count} for {ds} are not committed")
    runs = {m.get("summary", {}).get("source_run_id") for m in manifests}
    current = (lake.read_manifest(DATASET_CLEAN, ds) or {}).get("run_id")
    if runs != {current}:
        raise RuntimeError(
            f"shards of {ds} come from posts_clean runs {sorted(map(str, runs))}, the current "
            f"one is {current}: re-run the stale shards"
        )
    skipped: list[dict[str, Any]] = []
    counts = {"computed": 0, "cached": 0, "posts": 0}
    with lake.writer(DATASET_FEATURES, ds, FEATURES_SCHEMA) as w:
        for i, m in enumerate(manifests):
            w.write(conform(lake.read_partition(shard_dataset(i, count), ds)))
            skipped += m.get("skipped", [])
            for k in counts:
                counts[k] += int(m.get("summary", {}).get(k, 0))
        summary = {
            "ds": ds,
            "dataset": DATASET_FEATURES,
            "rows": w.rows,
            **counts,
            "skipped": len(skipped),
            "shards": count,
            "seconds": round(time.monotonic() - t0, 3),
            "image_model": manifests[0]["summary"]["image_model"],
            "text_model": manifests[0]["summary"]["text_model"],
            "source_run_id": current,
        }
        w.meta.update({"summary": summary, "skipped": skipped})
    return summary


# -- CLI: python -m ml embed --------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml embed", description="Embed photos and captions of one day of posts."
    )
    p.add_argument(
        "--ds", required=True, help="posts_clean partition date, YYYY-MM-DD (D1,D2,... to merge)"
    )
    p.add_argument("--shard", type=parse_shard, help="i/N: embed only shard i of N")
    p.add_argument("--merge-shards", type=int, metavar="N", help="merge N committed shards")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:K (default: POSTFLOW_DEVICE)")
    p.add_argument(
        "--image-weights",
        help="imagenet (torchvision cache) | none (random init, tests only) | /path/resnet50.pth "
        "(default: POSTFLOW_IMAGE_WEIGHTS)",
    )
    p.add_argument("--allow-download", action="store_true", help="fetch missing ImageNet weights")
    p.add_argument(
        "--text-model",
        help="sentence-transformers model dir (default: POSTFLOW_TEXT_MODEL, else the packaged "
        "all-MiniLM-L6-v2)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 32 on CPU")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--decode", choices=["auto", "pillow", "device"], default="auto")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default=None,
        help="auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32 "
        "(default: POSTFLOW_EMBED_PRECISION)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the image model")
    p.add_argument("--seed", type=int, default=0, help="seed of random init (--image-weights none)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake.partitions import Lake

    settings = Settings.load()
    lake = Lake.from_settings(settings)
    if args.merge_shards:
        # one call may merge several days (a backfill's): --ds D1,D2,...
        summaries = [merge_shards(lake, d, args.merge_shards) for d in args.ds.split(",")]
        print(json.dumps(summaries[0] if len(summaries) == 1 else {"days": summaries}))
        return 0

    import functools

    from ml.ingest.images import ImageStore

    device = resolve_device(args.device or settings.device)
    gpu = device.startswith("cuda")
    batch = args.batch_size or (256 if gpu else 32)
    workers = args.workers if args.workers is not None else min(8, max(1, settings.workers - 1))
    image_encoder = ImageEncoder(
        args.image_weights or settings.image_weights,
        device,
        batch,
        args.precision or settings.embed_precision,
        args.compile,
        args.allow_download,
        args.seed,
    )
    text_encoder = TextEncoder(
        args.text_model or settings.text_model or None, device, batch_size=max(batch, 256)
    )
    opts = EmbedOptions(batch_size=batch, workers=workers, decode=args.decode, shard=args.shard)
    store = functools.partial(ImageStore.from_settings, settings)  # confined, bounded reads
    summary = embed_partition(lake, args.ds, store, image_encoder, text_encoder, opts)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("ds", "dataset", "rows", "computed", "cached", "skipped", "seconds")
            }
            | {"posts_per_s": summary["posts_per_s"], "image_model": summary["image_model"]}
        )
    )
    return 0
