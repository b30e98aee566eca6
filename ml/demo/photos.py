"""The demo's photos: rendering each post's synthetic image, planting the broken ones, and
writing them all to the image store (a local folder or S3, through `ml.ingest.images.ImageStore`).

`ml.demo.posts` draws the posts and decides, for each, its photo's dominant colour, pattern, size
and kind; this module turns that into bytes. A photo's bytes depend only on (seed, index) and
its parameters, never on the worker count or the order photos are written in.
"""

from __future__ import annotations

import io
import time
from typing import Any, NamedTuple

import numpy as np

from ml.config import Settings
from ml.ingest.images import ImageStore
from ml.progress import Progress

N_PATTERNS = 4  # stripes, checks, rings, soft blobs (`render_photo`)

# Dominant colours, one per class (well apart in RGB, so mean colour is a usable feature).
PALETTE = np.array(
    [
        (125, 125, 130),  # grey
        (60, 100, 190),  # blue
        (60, 160, 90),  # green
        (225, 200, 60),  # yellow
        (235, 135, 40),  # orange
        (200, 50, 50),  # red
        (140, 70, 180),  # purple
        (240, 110, 175),  # pink
    ],
    dtype=np.float32,
)

# Valid photos in unusual forms: they must pass the image check (and be embedded).
UNUSUAL_IMAGE_KINDS: tuple[str, ...] = (
    "jpeg_cmyk",
    "jpeg_grayscale",
    "png_rgba",
    "jpeg_progressive",
    "webp",
    "jpeg_exif_orientation_6",
)
# Bad-row kinds planted as damaged bytes (`encode_image`); image_missing is a deleted key.
DAMAGED_IMAGE_KINDS: tuple[str, ...] = (
    "image_corrupt",
    "image_truncated",
    "image_empty",
    "image_not_an_image",
)
EXTENSIONS = {"png_rgba": "png", "webp": "webp"}  # file extension by kind; "jpg" otherwise
_NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested photo was not found.</p></body></html>\n",
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>\n",
    b'{"error": "upload interrupted", "retry": true}\n',
)


class DemoDataError(RuntimeError):
    """The demo data cannot be written (ids taken, image store unusable); says how to fix it."""


# -- rendering -------------------------------------------------------------------------------


def render_photo(rng: np.random.Generator, width: int, height: int, colour: int, pattern: int):
    """An RGB uint8 array: a dominant palette colour modulated by one of 4 patterns, a random
    'object' rectangle and luminance noise. Vectorised: a few ms at 256 px."""
    base = PALETTE[colour] + rng.normal(0, 10, 3).astype(np.float32)
    other = rng.uniform(20, 235, 3).astype(np.float32)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    f = np.float32(rng.uniform(3, 10))
    if pattern == 0:  # stripes
        th = rng.uniform(0, np.pi)
        m = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xs * np.cos(th) + ys * np.sin(th)))
    elif pattern == 1:  # checks
        m = (np.floor(xs * f) + np.floor(ys * f)) % 2
    elif pattern == 2:  # rings
        cx, cy = rng.uniform(0.2, 0.8, 2)
        m = 0.5 + 0.5 * np.sin(2 * np.pi * f * np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2))
    else:  # soft blobs
        m = np.zeros((height, width), np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(0.1, 0.9, 2)
            s = rng.uniform(0.08, 0.2)
            m = m + np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / np.float32(2 * s * s))
        m = np.minimum(m, 1)
    m = (0.35 * m).astype(np.float32)[..., None]
    img = base * (1 - m) + other * m
    x0, y0 = rng.integers(0, max(1, width * 2 // 3)), rng.integers(0, max(1, height * 2 // 3))
    w, h = (
        max(1, int(width * rng.uniform(0.15, 0.35))),
        max(1, int(height * rng.uniform(0.15, 0.35))),
    )
    img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3).astype(np.float32)
    img = img + rng.integers(-12, 13, (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_image(
    mode: str, index: int, seed: int, width: int, height: int, colour: int, pattern: int
) -> bytes:
    """The stored bytes of one post's photo for `mode` (a format, unusual or bad image kind)."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    if mode == "image_not_an_image":
        return _NOT_AN_IMAGE[index % len(_NOT_AN_IMAGE)]
    if mode == "image_empty":
        return b""
    arr = render_photo(rng, width, height, colour, pattern)
    quality = int(rng.integers(75, 93))
    buf = io.BytesIO()
    if mode == "jpeg_exif_orientation_6":
        # Stored rotated 90° counter-clockwise; orientation 6 tells viewers to turn it back.
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(arr, 1))).save(
            buf, "JPEG", quality=quality, exif=exif.tobytes()
        )
    elif mode == "jpeg_cmyk":
        Image.fromarray(arr).convert("CMYK").save(buf, "JPEG", quality=quality)
    elif mode == "jpeg_grayscale":
        Image.fromarray(arr).convert("L").save(buf, "JPEG", quality=quality)
    elif mode == "jpeg_progressive":
        Image.fromarray(arr).save(buf, "JPEG", quality=quality, progressive=True)
    elif mode == "png_rgba":
        ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
        xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
        alpha = np.clip(255 * (1.4 - np.sqrt(xs**2 + ys**2)), 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([arr, alpha]), "RGBA").save(buf, "PNG")
    elif mode == "webp":
        Image.fromarray(arr).save(buf, "WEBP", quality=quality)
    else:
        Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    if mode == "image_truncated":
        return data[: len(data) // 2]
    if mode == "image_corrupt":
        # A stray SOI marker plus random bytes in the middle of the scan: libjpeg (Pillow,
        # torchvision) stops with a fatal error instead of decoding a smeared picture.
        sos = data.find(b"\xff\xda")
        mid = (sos + len(data) - 2) // 2
        junk = b"\xff\xd8" + rng.integers(0, 256, 94, dtype=np.uint8).tobytes()
        return data[:mid] + junk + data[mid + len(junk) :]
    return data


# -- the image store ---------------------------------------------------------------------------


def image_store(settings: Settings) -> ImageStore:
    """The store the photos go to (`settings.image_root`); DemoDataError for a root it cannot
    be (a URL scheme other than s3:// or file://, a bad bucket name)."""
    try:
        return ImageStore.from_settings(settings)
    except ValueError as exc:
        raise DemoDataError(str(exc)) from None


def ensure_store(store: ImageStore) -> None:
    """Create the folder or bucket if needed; fail early with a clear message."""
    try:
        store.ensure_root()
    except Exception as exc:  # OSError or any botocore error
        raise DemoDataError(f"image store {store.root!r} is not usable: {exc}") from exc


# -- writing -----------------------------------------------------------------------------------


class PhotoJob(NamedTuple):
    """One photo to write: `mode` is "jpeg", an unusual or damaged kind, or "delete"."""

    index: int  # the photo's post (a repost's original) in its batch: with `seed`, its RNG
    key: str  # under the image root
    mode: str
    seed: int
    width: int
    height: int
    colour: int
    pattern: int


_WORKER_STORE: ImageStore | None = None


def _init_worker(store: ImageStore) -> None:
    global _WORKER_STORE
    store._client = None  # a forked child must not share the parent's HTTP connections
    _WORKER_STORE = store


def _write_one(job: PhotoJob) -> int:
    """Render and store one photo; returns the bytes written. Runs in pool workers."""
    index, key, mode, seed, width, height, colour, pattern = job
    store = _WORKER_STORE
    try:
        if mode == "delete":
            store.delete(key)
            return 0
        data = encode_image(mode, index, seed, width, height, colour, pattern)
        store.put(key, data)
        return len(data)
    except Exception as exc:  # make S3/OS errors picklable and clear
        raise DemoDataError(f"cannot write image {key!r} to {store.root!r}: {exc}") from None


def write_images(posts: Any, store: ImageStore, seed: int, workers: int) -> dict[str, Any]:
    """Render and store the photos of `posts` (an `ml.demo.posts.Posts`: a photo per key that is
    not None; a repost's is rendered as its original's, the same bytes), in a process pool when
    there are enough of them."""
    jobs = [
        PhotoJob(int(posts.render[i]), posts.keys[i], posts.image_mode[i], seed,
                 int(posts.width[i]), int(posts.height[i]), int(posts.colour[i]),
                 int(posts.pattern[i]))
        for i in range(len(posts.keys))
        if posts.keys[i] is not None
    ]  # fmt: skip
    t0 = time.monotonic()
    progress = Progress("images", len(jobs), unit="images")
    total = 0
    if workers <= 1 or len(jobs) < 200:
        _init_worker(store)
        for job in jobs:
            total += _write_one(job)
            progress.add(1)
    else:
        import multiprocessing as mp

        # spawn, not fork: forking a process that already runs threads (Airflow, a test runner,
        # boto3) can copy a held lock into the child and hang the pool forever.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(store,)) as pool:
            chunk = max(16, min(256, len(jobs) // (workers * 8)))
            for nbytes in pool.imap_unordered(_write_one, jobs, chunksize=chunk):
                total += nbytes
                progress.add(1)
    progress.add(0, force=len(jobs) >= 5_000)  # a closing line for runs worth waiting on
    seconds = time.monotonic() - t0
    return {
        "images": len(jobs),
        "image_bytes": total,
        "image_seconds": round(seconds, 3),
        "images_per_s": round(len(jobs) / seconds, 1) if seconds > 0 else None,
    }
