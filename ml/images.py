"""Fetching and checking the photo of each post before it reaches the GPU step.

A post whose photo cannot be fetched or decoded is quarantined with a reason from
`ml.reasons` rather than failing the night: `check_uris` never raises for a bad image. The check
decodes every image fully (JPEG at 1/8 scale through libjpeg-turbo, which still entropy-decodes
all of the data, with its warnings as errors) because a header-only check lets truncated uploads
through to the embedding pods.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ml.reasons import Reason

if TYPE_CHECKING:
    from ml.config import Settings

# Formats a photo may come in. Everything else Pillow could open (EPS runs Ghostscript, PSD,
# ICO, ...) is refused as not an image: less attack surface, nothing the GPU step cannot read.
# Multi-picture JPEGs from phones open through the JPEG opener and report format "MPO".
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
log = logging.getLogger(__name__)

_CHUNK = 64  # URIs per task sent to a worker process
_IN_PROCESS_BELOW = 2 * _CHUNK


class ImageError(Exception):
    """A photo is not usable; `reason` is the quarantine code, `message` says why to a human."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    exif_orientation: int  # 1-8 as in the EXIF tag, 1 when absent; applied by the feature step
    mode: str


@dataclass(frozen=True)
class ImageResult:
    uri: str | None
    reason: Reason | None
    message: str
    format: str | None = None
    width: int | None = None
    height: int | None = None
    exif_orientation: int | None = None
    mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


# -- fetching --------------------------------------------------------------------------------

_S3_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_S3_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "500",
    "502",
    "503",
    "504",
}


class ImageStore:
    """Resolves `image_uri` values (s3://bucket/key, file:///abs/path, or relative to `root`),
    reads them, and writes keys under `root` (a folder or s3://bucket/prefix; the demo data).

    Picklable: the boto3 client is built lazily, once per process, so a worker pool can ship it.
    """

    _CONTENT_TYPES = {"png": "image/png", "webp": "image/webp"}  # `put` stores the rest as JPEG

    def __init__(
        self,
        root: str,
        s3_endpoint: str | None = None,
        region: str = "us-east-1",
        *,
        attempts: int = 4,
        backoff_s: float = 0.25,
    ) -> None:
        self.root = root
        self.s3_endpoint = s3_endpoint or None
        self.region = region
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._client: Any = None
        self._made_dirs: set[str] = set()  # local folders `put` has created (or found)
        if root.startswith("s3://"):
            bucket, _, prefix = root[len("s3://") :].partition("/")
            if not _BUCKET.match(bucket):
                raise ValueError(f"image root {root!r}: {bucket!r} is not an S3 bucket name")
            self._root_bucket: str | None = bucket
            self._root_prefix = prefix.strip("/")
        elif _SCHEME.match(root) and not root.startswith("file://"):
            raise ValueError(f"unsupported image root {root!r}: use a folder or s3://bucket/prefix")
        else:
            self._root_bucket = None
            self._root_prefix = os.path.abspath(os.path.expanduser(root.removeprefix("file://")))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_made_dirs"] = set()
        return state

    # resolving

    def resolve(self, uri: str | None) -> tuple[str | None, str]:
        """(bucket, key) for S3 or (None, local path); IMAGE_URI_INVALID when it has no place."""
        if not isinstance(uri, str) or not uri.strip():
            raise ImageError(Reason.IMAGE_URI_INVALID, "image_uri is empty")
        if "\x00" in uri:
            raise ImageError(Reason.IMAGE_URI_INVALID, "image_uri contains a NUL character")
        m = _SCHEME.match(uri)
        if m:
            scheme = m.group(1).lower()
            rest = uri[m.end() :]
            if scheme == "s3":
                bucket, _, key = rest.partition("/")
                if not _BUCKET.match(bucket) or not key or key.endswith("/"):
                    raise ImageError(
                        Reason.IMAGE_URI_INVALID, f"{uri!r} is not of the form s3://bucket/key"
                    )
                return bucket, key
            if scheme == "file":
                if rest.startswith("localhost/"):
                    rest = rest[len("localhost") :]
                if not rest.startswith("/"):
                    raise ImageError(
                        Reason.IMAGE_URI_INVALID,
                        f"{uri!r} is not of the form file:///absolute/path (no host allowed)",
                    )
                return None, unquote(rest)
            raise ImageError(
                Reason.IMAGE_URI_INVALID,
                f"unsupported scheme {scheme!r} in {uri!r}: use s3://, file:/// or a relative path",
            )
        if uri.lower().startswith("data:"):
            raise ImageError(Reason.IMAGE_URI_INVALID, "data: URIs are not supported")
        if uri.startswith("/"):
            raise ImageError(
                Reason.IMAGE_URI_INVALID,
                f"{uri!r} is an absolute path: write it file://{uri} or make it relative",
            )
        rel = posixpath.normpath(uri)
        if rel == ".." or rel.startswith("../") or rel == ".":
            raise ImageError(
                Reason.IMAGE_URI_INVALID, f"{uri!r} points outside the image root {self.root!r}"
            )
        if self._root_bucket is not None:
            key = f"{self._root_prefix}/{rel}" if self._root_prefix else rel
            return self._root_bucket, key
        return None, os.path.join(self._root_prefix, rel)

    # fetching

    def fetch(self, uri: str | None) -> bytes:
        """The bytes of a photo, or ImageError (URI_INVALID, MISSING, UNREADABLE, EMPTY)."""
        bucket, key = self.resolve(uri)
        data = self._read_local(key) if bucket is None else self._read_s3(bucket, key)
        if not data:
            raise ImageError(Reason.IMAGE_EMPTY, f"{uri!r} has zero bytes")
        return data

    def _read_local(self, path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError(Reason.IMAGE_MISSING, f"no file {path}") from None
        except IsADirectoryError:
            raise ImageError(Reason.IMAGE_MISSING, f"{path} is a directory, not a file") from None
        except PermissionError as exc:
            raise ImageError(
                Reason.IMAGE_UNREADABLE, f"no permission to read {path}: {exc}"
            ) from None
        except OSError as exc:
            raise ImageError(Reason.IMAGE_UNREADABLE, f"cannot read {path}: {exc}") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.s3_endpoint,
                region_name=self.region,
                config=Config(
                    # botocore retries throttling, 5xx and connection errors with backoff
                    retries={"total_max_attempts": self.attempts, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=30,
                    max_pool_connections=4,
                ),
            )
        return self._client

    def _read_s3(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{bucket}/{key}"
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                obj = self.client.get_object(Bucket=bucket, Key=key)
                data = obj["Body"].read()
                expected = obj.get("ContentLength")
                if expected is not None and len(data) != expected:
                    last = f"short read: {len(data)} of {expected} bytes"
                    continue
                return data
            except ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                if code in _S3_MISSING:
                    raise ImageError(Reason.IMAGE_MISSING, f"no object {where} ({code})") from None
                if code not in _S3_TRANSIENT:
                    raise ImageError(
                        Reason.IMAGE_UNREADABLE, f"cannot read {where}: {code} {err.get('Message')}"
                    ) from None
                last = f"{code} {err.get('Message', '')}".strip()
            except (BotoCoreError, OSError) as exc:
                # connection refused/reset, timeouts, a body stream cut mid-read
                last = f"{type(exc).__name__}: {exc}"
        raise ImageError(
            Reason.IMAGE_UNREADABLE, f"cannot read {where} after {self.attempts} attempts: {last}"
        )

    # writing (the demo data): keys are paths relative to the root, as relative image_uri values

    @property
    def uri_prefix(self) -> str:
        """The absolute URI form of the root, ending in '/': s3://bucket/prefix/ or file:///abs/
        (symlinks resolved), so that `uri_prefix + key` names what `put(key, ...)` wrote."""
        if self._root_bucket is not None:
            prefix = f"{self._root_prefix}/" if self._root_prefix else ""
            return f"s3://{self._root_bucket}/{prefix}"
        return "file://" + os.path.realpath(self._root_prefix).rstrip("/") + "/"

    def ensure_root(self) -> None:
        """Create the root folder, or the bucket when it does not answer; errors as raised
        (OSError, botocore's), for the caller to say what it was doing."""
        if self._root_bucket is None:
            os.makedirs(self._root_prefix, exist_ok=True)
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self._root_bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self._root_bucket)

    def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key` under the root (creating folders); S3 gets a content type
        from the extension (png, webp, else JPEG)."""
        bucket, path = self._key(key)
        if bucket is not None:
            ctype = self._CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "image/jpeg")
            self.client.put_object(Bucket=bucket, Key=path, Body=data, ContentType=ctype)
            return
        folder = os.path.dirname(path)
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
        with open(path, "wb") as fh:
            fh.write(data)

    def delete(self, key: str) -> None:
        """Remove `key` under the root; nothing there is fine."""
        bucket, path = self._key(key)
        if bucket is not None:
            self.client.delete_object(Bucket=bucket, Key=path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _key(self, key: str) -> tuple[str | None, str]:
        if _SCHEME.match(key):
            raise ValueError(f"{key!r}: write a key relative to the image root, not a URI")
        return self.resolve(key)


# -- checking --------------------------------------------------------------------------------


def check_image(data: bytes, max_pixels: int, min_side: int) -> ImageInfo:
    """Identify, size-check from the header, then decode the whole image; ImageError if unusable.

    The pixel limit is checked before any decoding (decompression bombs). JPEG decodes at 1/8
    scale: libjpeg still Huffman-decodes every coefficient, so a truncated or broken stream fails
    exactly as it would at full size, at a fraction of the IDCT and colour-conversion cost.
    """
    from PIL import Image, UnidentifiedImageError

    Image.init()  # registers every plugin, so `formats=` knows MPO, WEBP, AVIF...; once per process
    fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            Reason.IMAGE_NOT_AN_IMAGE,
            f"not a recognised image ({len(data)} bytes starting {data[:8]!r}); "
            f"accepted: {', '.join(ACCEPTED_FORMATS)}",
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(Reason.IMAGE_TOO_LARGE, str(exc)) from None
    except Exception as exc:  # a malformed header: Pillow raises many types here
        raise ImageError(
            Reason.IMAGE_CORRUPT, f"unreadable image header: {_describe(exc)}"
        ) from None

    with im:
        fmt, mode = im.format or "unknown", im.mode
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                Reason.IMAGE_TOO_LARGE,
                f"{fmt} {width}x{height} = {width * height} pixels exceeds {max_pixels}",
            )
        small = min(width, height) < min_side
        also = f" (also smaller than {min_side} px: {width}x{height})" if small else ""
        if fmt in ("JPEG", "MPO"):  # libjpeg's L, RGB and CMYK all convert to RGB
            problem = jpeg_decode_problem(data, mode)
            if problem:
                raise ImageError(Reason.IMAGE_CORRUPT, problem + also)
        else:
            try:
                im.load()
            except Exception as exc:
                raise ImageError(
                    Reason.IMAGE_CORRUPT, _decode_message(exc, fmt, data) + also
                ) from None
            try:
                im.convert("RGB")
            except Exception as exc:
                raise ImageError(
                    Reason.IMAGE_CORRUPT,
                    f"{fmt} mode {mode} cannot convert to RGB: {_describe(exc)}",
                ) from None
        if small:
            raise ImageError(
                Reason.IMAGE_TOO_SMALL, f"{fmt} {width}x{height}: a side is below {min_side} px"
            )
        orientation = 1
        try:
            value = im.getexif().get(0x0112, 1)
            if isinstance(value, int) and 1 <= value <= 8:
                orientation = value
        except Exception:  # a broken EXIF block does not make the photo unusable
            pass
    return ImageInfo(fmt, width, height, orientation, mode)


# libjpeg warnings that say nothing about the pixels: a file that only has these is clean.
# Every other warning (premature end of file or of a data segment, bad Huffman code, lost
# restart marker, extraneous bytes in scan data...) means damaged image data.
_HARMLESS_LIBJPEG_WARNINGS = (
    "unknown JFIF revision",
    "Unknown Adobe color transform",
    "bad ICC marker",
    "Invalid SOS parameters for sequential JPEG",
)
# "N extraneous bytes before marker 0xd9" is padding when those N bytes before an EOI are one
# repeated value (some encoders pad); otherwise the decoder lost sync in damaged scan data and
# finished early: the commonest sign of garbage inside a scan.
_EXTRANEOUS_BEFORE_EOI = re.compile(r"(\d+) extraneous bytes before marker 0xd9")


def jpeg_decode_problem(data: bytes, mode: str) -> str | None:
    """Decode a JPEG at 1/8 scale with libjpeg-turbo warnings as errors; what is wrong, or None.

    1/8 scale still entropy-decodes every coefficient of every component, so damage anywhere in
    the data shows, at a fraction of the IDCT and colour-conversion cost (2.3x a full Pillow
    decode, bench/bench_images.py). Pillow drops libjpeg's warnings, and with them a bad
    Huffman code or a premature end of scan data: such files "decode" into grey blocks. Here
    those warnings fail the image, except the few that concern metadata only.
    """
    import simplejpeg

    space = "CMYK" if mode == "CMYK" else "GRAY"  # grey output: chroma still entropy-decoded
    kw = {"colorspace": space, "min_height": 1, "min_width": 1, "min_factor": 8}
    try:
        simplejpeg.decode_jpeg(data, strict=True, **kw)
        return None
    except ValueError as exc:
        text = str(exc).strip() or type(exc).__name__
    if any(harmless in text for harmless in _HARMLESS_LIBJPEG_WARNINGS) or _padded_eoi(data, text):
        # TurboJPEG fails some of these even when not strict: Pillow, which ignores every
        # warning, decides (still at 1/8 scale). Rare files, so the slower path is fine.
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft(im.mode, (1, 1))
                im.load()
            return None
        except Exception as exc:
            text = _describe(exc)
    if "Premature end of JPEG file" in text:
        return f"image file is truncated: JPEG data ends after {len(data)} bytes (libjpeg: {text})"
    return f"JPEG decode failed: {text}"


def _padded_eoi(data: bytes, warning: str) -> bool:
    m = _EXTRANEOUS_BEFORE_EOI.search(warning)
    if not m:
        return False
    n = int(m.group(1))
    eoi = data.find(b"\xff\xd9", n)
    while eoi >= 0:
        if len(set(data[eoi - n : eoi])) == 1:
            return True
        eoi = data.find(b"\xff\xd9", eoi + 2)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode_message(exc: BaseException, fmt: str, data: bytes) -> str:
    text = str(exc)
    if "truncated" in text:
        m = re.search(r"\((\d+) bytes not processed\)", text)
        used = f", {int(m.group(1))} trailing bytes unprocessed" if m else ""
        return f"image file is truncated: {fmt} data ends after {len(data)} bytes{used}"
    return f"{fmt} decode failed: {_describe(exc)}"


# -- many at once ------------------------------------------------------------------------------


def check_uri(store: ImageStore, uri: str | None, max_pixels: int, min_side: int) -> ImageResult:
    """Fetch and check one photo; every way a photo can be bad becomes a reason and a message."""
    try:
        info = check_image(store.fetch(uri), max_pixels, min_side)
    except ImageError as exc:
        return ImageResult(uri, exc.reason, exc.message)
    return ImageResult(
        uri, None, "", info.format, info.width, info.height, info.exif_orientation, info.mode
    )


def check_uris(uris: Sequence[str | None], settings: Settings) -> list[ImageResult]:
    """One result per URI, in order, over `settings.workers` processes.

    Processes, not threads: decoding holds the GIL for part of its time. Workers are spawned
    (not forked: the caller may hold threads, e.g. boto3's or Airflow's), each builds its store
    and S3 client once and gets URIs in chunks. Small batches run in-process.
    """
    uris = list(uris)
    workers = min(settings.workers, -(-len(uris) // _CHUNK))
    if workers <= 1 or len(uris) < _IN_PROCESS_BELOW:
        return _in_process(uris, settings)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    chunks = [uris[i : i + _CHUNK] for i in range(0, len(uris), _CHUNK)]
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (OOM kill, a crash in a
    # codec) breaks the executor with an error instead of hanging the task forever.
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(settings,),
        ) as pool:
            return [r for part in pool.map(_check_chunk, chunks) for r in part]
    except BrokenProcessPool as exc:
        log.warning("image worker pool broke (%s); checking %d images in-process", exc, len(uris))
        return _in_process(uris, settings)


def _in_process(uris: list[str | None], settings: Settings) -> list[ImageResult]:
    store = _store(settings)
    return [check_uri(store, u, settings.max_image_pixels, settings.min_image_side) for u in uris]


def _store(settings: Settings) -> ImageStore:
    return ImageStore(settings.image_root, settings.s3_endpoint, settings.s3_region)


_worker: tuple[ImageStore, int, int] | None = None


def _init_worker(settings: Settings) -> None:
    global _worker
    _worker = (_store(settings), settings.max_image_pixels, settings.min_image_side)


def _check_chunk(uris: list[str | None]) -> list[ImageResult]:
    assert _worker is not None, "worker not initialised"
    store, max_pixels, min_side = _worker
    return [check_uri(store, u, max_pixels, min_side) for u in uris]
