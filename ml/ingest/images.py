"""Fetching and checking the photo of each post before it reaches the GPU step.

A post whose photo cannot be fetched or decoded (`ml.ingest.image_decode`) is quarantined with a
reason from `ml.ingest.reasons` rather than failing the night: `check_uris` never raises for a bad
image.

`image_uri` is typed by the app's users, so fetching is confined: local paths (symlinks resolved)
only inside the image root and `POSTFLOW_IMAGE_ALLOWED_ROOTS`, never under /proc, /sys or /dev,
regular files only; S3 only in the root's bucket and the allowed ones; at most
`POSTFLOW_MAX_IMAGE_BYTES` read. Messages never quote a file's bytes.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ml.ingest.image_decode import ImageError, check_image
from ml.ingest.reasons import Reason

if TYPE_CHECKING:
    from ml.config import Settings

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
log = logging.getLogger(__name__)

# Trees of the kernel's pseudo-files and devices: never read, whatever the allowed roots say.
SYSTEM_TREES: tuple[str, ...] = ("/proc", "/sys", "/dev")
DEFAULT_MAX_IMAGE_BYTES = 50_000_000
# Open flags of a photo: no symlink swapped in after the check, no blocking on a FIFO.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_READ_BLOCK = 1 << 20

_CHUNK = 64  # URIs per task sent to a worker process
_IN_PROCESS_BELOW = 2 * _CHUNK


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
        allowed_roots: Iterable[str] = (),
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self.root = root
        self.max_bytes = int(max_bytes)
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
        self._extra_dirs: list[str] = []
        self._buckets: set[str] = {self._root_bucket} if self._root_bucket else set()
        for extra in (r.strip() for r in allowed_roots):
            if extra.startswith("s3://"):
                bucket = extra[len("s3://") :].partition("/")[0]
                if not _BUCKET.match(bucket):
                    raise ValueError(f"allowed image root {extra!r}: not an S3 bucket name")
                self._buckets.add(bucket)
            elif extra:
                if _SCHEME.match(extra) and not extra.startswith("file://"):
                    raise ValueError(f"allowed image root {extra!r}: use a folder or s3://bucket")
                folder = extra.removeprefix("file://")
                self._extra_dirs.append(os.path.abspath(os.path.expanduser(folder)))

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageStore:
        """The store the pipeline reads photos through (image check and embedding alike)."""
        return cls(
            settings.image_root,
            settings.s3_endpoint,
            settings.s3_region,
            allowed_roots=settings.image_allowed_roots.split(","),
            max_bytes=settings.max_image_bytes,
        )

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
                if bucket not in self._buckets:
                    raise ImageError(
                        Reason.IMAGE_URI_INVALID,
                        f"{uri!r}: bucket {bucket!r} is not the image root's or in "
                        "POSTFLOW_IMAGE_ALLOWED_ROOTS",
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
                return None, self._confine(unquote(rest), uri)
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
                Reason.IMAGE_URI_INVALID,
                f"{uri!r} points outside the image root {self.root!r}",
            )
        if self._root_bucket is not None:
            key = f"{self._root_prefix}/{rel}" if self._root_prefix else rel
            return self._root_bucket, key
        return None, self._confine(os.path.join(self._root_prefix, rel), uri)

    def _confine(self, path: str, uri: str) -> str:
        """The real path of `path` (every symlink resolved) when it lies in an allowed folder
        and outside the system trees; IMAGE_URI_INVALID otherwise."""
        real = os.path.realpath(path)
        if any(_within(real, tree) for tree in SYSTEM_TREES):
            raise ImageError(Reason.IMAGE_URI_INVALID, f"{uri!r} points into a system folder")
        roots = [self._root_prefix] if self._root_bucket is None else []
        if not any(_within(real, os.path.realpath(d)) for d in (*roots, *self._extra_dirs)):
            raise ImageError(
                Reason.IMAGE_URI_INVALID,
                f"{uri!r} resolves outside the image root and POSTFLOW_IMAGE_ALLOWED_ROOTS",
            )
        return real

    # fetching

    def fetch(self, uri: str | None) -> bytes:
        """The bytes of a photo, or ImageError (URI_INVALID, MISSING, UNREADABLE, EMPTY)."""
        bucket, key = self.resolve(uri)
        data = self._read_local(key) if bucket is None else self._read_s3(bucket, key)
        if not data:
            raise ImageError(Reason.IMAGE_EMPTY, f"{uri!r} has zero bytes")
        return data

    def _read_local(self, path: str) -> bytes:
        """At most `max_bytes` of a regular file: the size is checked before reading, and the
        read stops one byte past the limit in case the file grows meanwhile."""
        try:
            info = os.stat(path)
            self._check_file(path, info)
            fd = os.open(path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError(Reason.IMAGE_MISSING, f"no file {path}") from None
        except PermissionError as exc:
            raise ImageError(
                Reason.IMAGE_UNREADABLE, f"no permission to read {path}: {exc.strerror}"
            ) from None
        except OSError as exc:  # ELOOP: a symlink swapped in after resolving
            raise ImageError(Reason.IMAGE_UNREADABLE, f"cannot read {path}: {exc}") from None
        try:
            self._check_file(path, os.fstat(fd))  # the file opened is the file checked
            parts, size = [], 0
            while size <= self.max_bytes:
                part = os.read(fd, min(_READ_BLOCK, self.max_bytes + 1 - size))
                if not part:
                    break
                parts.append(part)
                size += len(part)
        except OSError as exc:
            raise ImageError(Reason.IMAGE_UNREADABLE, f"cannot read {path}: {exc}") from None
        finally:
            os.close(fd)
        if size > self.max_bytes:
            raise ImageError(
                Reason.IMAGE_TOO_LARGE,
                f"{path} grew past {self.max_bytes} bytes while read (POSTFLOW_MAX_IMAGE_BYTES)",
            )
        return b"".join(parts)

    def _check_file(self, path: str, info: os.stat_result) -> None:
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(Reason.IMAGE_MISSING, f"{path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(
                Reason.IMAGE_URI_INVALID,
                f"{path} is not a regular file (device, FIFO or socket)",
            )
        if info.st_size > self.max_bytes:
            raise ImageError(
                Reason.IMAGE_TOO_LARGE,
                f"{path} has {info.st_size} bytes, more than {self.max_bytes} "
                "(POSTFLOW_MAX_IMAGE_BYTES)",
            )

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
                expected = obj.get("ContentLength")
                if expected is not None and expected > self.max_bytes:
                    obj["Body"].close()  # the headers said it: no byte of the body is read
                    raise ImageError(Reason.IMAGE_TOO_LARGE, self._too_large(where, expected))
                data = obj["Body"].read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    obj["Body"].close()
                    raise ImageError(Reason.IMAGE_TOO_LARGE, self._too_large(where, None))
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
                        Reason.IMAGE_UNREADABLE,
                        f"cannot read {where}: {code} {err.get('Message')}",
                    ) from None
                last = f"{code} {err.get('Message', '')}".strip()
            except (BotoCoreError, OSError) as exc:
                # connection refused/reset, timeouts, a body stream cut mid-read
                last = f"{type(exc).__name__}: {exc}"
        raise ImageError(
            Reason.IMAGE_UNREADABLE,
            f"cannot read {where} after {self.attempts} attempts: {last}",
        )

    def _too_large(self, where: str, size: int | None) -> str:
        has = f"has {size} bytes" if size is not None else "is longer than its headers said"
        return f"{where} {has}, more than {self.max_bytes} (POSTFLOW_MAX_IMAGE_BYTES)"

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


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- many at once ------------------------------------------------------------------------------


def check_uri(store: ImageStore, uri: str | None, max_pixels: int, min_side: int) -> ImageResult:
    """Fetch and check one photo; every way a photo can be bad becomes a reason and a message."""
    try:
        info = check_image(store.fetch(uri), max_pixels, min_side)
    except ImageError as exc:
        return ImageResult(uri, exc.reason, exc.message)
    return ImageResult(
        uri,
        None,
        "",
        info.format,
        info.width,
        info.height,
        info.exif_orientation,
        info.mode,
    )


def check_uris(uris: Sequence[str | None], settings: Settings) -> list[ImageResult]:
    """One result per URI, in order, over `settings.workers` processes.

    Processes, not threads: decoding holds the GIL for part of its time. Workers are spawned
    (not forked: the caller may hold threads, e.g. boto3's or Airflow's), each builds its store
    and S3 client once and gets URIs in chunks. Small batches run in-process.

    A daemonic process may start no child (a task of a Celery `prefork` worker, the compose
    stack's executor, is one): there the same chunks go to threads. Each thread's initializer
    sets the one module store, so they share an equivalent one: it is read-only but for its
    lazily made boto3 client, which is thread-safe. Measured on 2 cores, 2 threads check 1.6x
    the photos of one (Pillow's decoder lets go of the GIL for most of its time).
    """
    uris = list(uris)
    workers = min(settings.workers, -(-len(uris) // _CHUNK))
    if workers <= 1 or len(uris) < _IN_PROCESS_BELOW:
        return _in_process(uris, settings)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    chunks = [uris[i : i + _CHUNK] for i in range(0, len(uris), _CHUNK)]
    init = {"initializer": _init_worker, "initargs": (settings,)}
    if multiprocessing.current_process().daemon:
        log.info("daemonic process (a Celery prefork task): checking images in %d threads", workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="image-check", **init)
    else:
        # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (OOM kill, a crash
        # in a codec) breaks the executor with an error instead of hanging the task forever.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **init)
    try:
        with pool:
            return [r for part in pool.map(_check_chunk, chunks) for r in part]
    except BrokenProcessPool as exc:
        log.warning(
            "image worker pool broke (%s); checking %d images in-process",
            exc,
            len(uris),
        )
        return _in_process(uris, settings)


def _in_process(uris: list[str | None], settings: Settings) -> list[ImageResult]:
    store = _store(settings)
    return [check_uri(store, u, settings.max_image_pixels, settings.min_image_side) for u in uris]


def _store(settings: Settings) -> ImageStore:
    return ImageStore.from_settings(settings)


_worker: tuple[ImageStore, int, int] | None = None


def _init_worker(settings: Settings) -> None:
    global _worker
    _worker = (_store(settings), settings.max_image_pixels, settings.min_image_side)


def _check_chunk(uris: list[str | None]) -> list[ImageResult]:
    assert _worker is not None, "worker not initialised"
    store, max_pixels, min_side = _worker
    return [check_uri(store, u, max_pixels, min_side) for u in uris]
