"""The lake: Parquet partitions under one root, a local folder or `s3://bucket/prefix`.

A partition `<root>/<dataset>/ds=YYYY-MM-DD/` is exactly the files its `_manifest.json` lists.
Writers put new files under a run-unique name and commit by writing the manifest last (an
atomic rename locally, an atomic PUT on S3), then delete the files of the version they replaced.
So a reader never sees half a partition, and re-running a date replaces it whole. Two writers of
the same partition at once never delete each other's files (the last manifest wins, whole);
files of a crashed writer (never listed) are removed by a later commit once they are
`ORPHAN_GRACE_S` old, so a slow writer still running is never robbed.
"""

from __future__ import annotations

import functools
import json
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ml import __version__

MANIFEST = "_manifest.json"
SCHEMA_VERSION = 1
ORPHAN_GRACE_S = 3600  # unlisted files untouched this long belong to a crashed writer


class LakeError(RuntimeError):
    """The lake is misconfigured or unreachable."""


def ds_str(ds: date | datetime | str) -> str:
    if isinstance(ds, datetime):
        return ds.date().isoformat()
    if isinstance(ds, date):
        return ds.isoformat()
    return date.fromisoformat(ds).isoformat()


def make_filesystem(root: str, s3_endpoint: str | None = None, region: str = "us-east-1"):
    """(filesystem, base path) for a lake root or an image root."""
    if root.startswith("s3://"):
        kwargs: dict[str, Any] = {"region": region}
        if s3_endpoint:
            scheme = "http" if s3_endpoint.startswith("http://") else "https"
            kwargs["endpoint_override"] = s3_endpoint.split("://", 1)[-1]
            kwargs["scheme"] = scheme
            kwargs["allow_bucket_creation"] = False
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=5)
        return pafs.S3FileSystem(**kwargs), root[len("s3://") :].rstrip("/")
    if "://" in root and not root.startswith("file://"):
        raise LakeError(f"unsupported lake root {root!r}: use a folder or s3://bucket/prefix")
    path = Path(root.removeprefix("file://")).expanduser().resolve()
    return pafs.LocalFileSystem(), path.as_posix()


@dataclass
class Lake:
    root: str
    s3_endpoint: str | None = None
    region: str = "us-east-1"
    fs: pafs.FileSystem = field(init=False, repr=False)
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.fs, self.base = make_filesystem(self.root, self.s3_endpoint, self.region)

    @classmethod
    def from_settings(cls, settings: Any) -> Lake:
        return cls(settings.lake, settings.s3_endpoint, settings.s3_region)

    @property
    def is_s3(self) -> bool:
        return isinstance(self.fs, pafs.S3FileSystem)

    def check(self) -> None:
        """Fail early with a clear message when the lake cannot be written."""
        try:
            if self.is_s3:
                bucket = self.base.split("/", 1)[0]
                info = self.fs.get_file_info(bucket)
                if info.type == pafs.FileType.NotFound:
                    raise LakeError(f"S3 bucket {bucket!r} of lake {self.root!r} does not exist")
            else:
                Path(self.base).mkdir(parents=True, exist_ok=True)
        except LakeError:
            raise
        except OSError as exc:
            raise LakeError(f"lake {self.root!r} is not usable: {exc}") from exc

    def uri(self, *parts: str) -> str:
        path = posixpath.join(self.base, *parts)
        return ("s3://" + path) if self.is_s3 else ("file://" + path)

    def partition_path(self, dataset: str, ds: date | datetime | str) -> str:
        return posixpath.join(self.base, dataset, f"ds={ds_str(ds)}")

    def partition_uri(self, dataset: str, ds: date | datetime | str) -> str:
        return self.uri(dataset, f"ds={ds_str(ds)}")

    # -- reading -------------------------------------------------------------------------------

    def read_manifest(self, dataset: str, ds: date | datetime | str) -> dict[str, Any] | None:
        path = posixpath.join(self.partition_path(dataset, ds), MANIFEST)
        try:
            with self.fs.open_input_stream(path) as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "does not exist" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise

    def partitions(self, dataset: str, since: str = "") -> list[str]:
        """Committed partition dates of a dataset, sorted; `since`: only those from that day on
        (the older ones' manifests are not read: one request each on S3)."""
        selector = pafs.FileSelector(posixpath.join(self.base, dataset), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            name = posixpath.basename(info.path)
            if (
                info.type == pafs.FileType.Directory
                and name.startswith("ds=")
                and name[3:] >= since
            ):
                if self.read_manifest(dataset, name[3:]) is not None:
                    out.append(name[3:])
        return sorted(out)

    def partition_files(self, dataset: str, ds: date | datetime | str) -> list[str]:
        """Paths (in `self.fs`) of the Parquet files of a committed partition; [] when the
        partition is not committed. Readers that filter or sample rows start here."""
        manifest = self.read_manifest(dataset, ds)
        if manifest is None:
            return []
        base = self.partition_path(dataset, ds)
        return [posixpath.join(base, f) for f in manifest["files"]]

    def read_partition(
        self, dataset: str, ds: date | datetime | str, columns: list[str] | None = None
    ) -> pa.Table:
        manifest = self.read_manifest(dataset, ds)
        if manifest is None:
            raise FileNotFoundError(f"no committed partition {self.partition_uri(dataset, ds)}")
        base = self.partition_path(dataset, ds)
        schema = _schema_from_manifest(manifest)
        tables = [
            pq.read_table(posixpath.join(base, f), columns=columns, filesystem=self.fs)
            for f in manifest["files"]
        ]
        if not tables:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables(tables)

    def iter_batches(
        self,
        dataset: str,
        ds: date | datetime | str,
        batch_rows: int = 250_000,
        columns: list[str] | None = None,
    ) -> Iterator[pa.Table]:
        """Stream a committed partition in bounded batches (memory ~ batch_rows rows)."""
        manifest = self.read_manifest(dataset, ds)
        if manifest is None:
            raise FileNotFoundError(f"no committed partition {self.partition_uri(dataset, ds)}")
        base = self.partition_path(dataset, ds)
        for name in manifest["files"]:
            with self.fs.open_input_file(posixpath.join(base, name)) as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                    yield pa.Table.from_batches([batch])

    def read_artifact(self, dataset: str, ds: date | datetime | str, name: str) -> bytes:
        path = posixpath.join(self.partition_path(dataset, ds), name)
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    # -- writing -------------------------------------------------------------------------------

    @contextmanager
    def writer(
        self,
        dataset: str,
        ds: date | datetime | str,
        schema: pa.Schema,
        distinct_columns: tuple[str, ...] = (),
    ) -> Iterator[PartitionWriter]:
        """Stream tables into a new version of a partition; committed when the block exits.

        `distinct_columns` are written without dictionary encoding (values nearly all unique).
        """
        w = PartitionWriter(self, dataset, ds_str(ds), schema, distinct_columns)
        try:
            yield w
            w.commit()
        except BaseException as exc:
            if w.manifest is None:  # not committed: the previous version stays whole
                w.abort()
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                # disk full, endpoint gone...: one clear error naming the partition
                state = (
                    "committed; some replaced files not removed"
                    if w.manifest
                    else "not committed; the previous version stays readable"
                )
                raise LakeError(
                    f"writing {self.partition_uri(dataset, ds)} failed ({state}): {exc}"
                ) from exc
            raise


def _schema_from_manifest(manifest: dict[str, Any]) -> pa.Schema:
    import base64

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["schema_ipc"])))


class PartitionWriter:
    """One partition version being written. Use through `Lake.writer`."""

    def __init__(
        self,
        lake: Lake,
        dataset: str,
        ds: str,
        schema: pa.Schema,
        distinct_columns: tuple[str, ...] = (),
    ) -> None:
        self.lake, self.dataset, self.ds, self.schema = lake, dataset, ds, schema
        unknown = set(distinct_columns) - set(schema.names)
        if unknown:
            raise ValueError(f"distinct_columns not in the schema: {sorted(unknown)}")
        self.use_dictionary: bool | list[str] = (
            [n for n in schema.names if n not in distinct_columns] if distinct_columns else True
        )
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self.dir = lake.partition_path(dataset, ds)
        self.data_file = f"part-{self.run_id}.parquet"
        self.rows = 0
        self.meta: dict[str, Any] = {}
        # called with no argument right before the manifest is written; raising aborts the
        # commit (a writer that must not commit on top of changed inputs sets it)
        self.precondition: Callable[[], None] | None = None
        self.artifacts: list[str] = []
        self.adopted: list[str] = []  # files copied in whole (`adopt`)
        self.manifest: dict[str, Any] | None = None
        self._writer: pq.ParquetWriter | None = None
        self._closed = False
        lake.fs.create_dir(self.dir, recursive=True)

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                posixpath.join(self.dir, self.data_file),
                self.schema,
                filesystem=self.lake.fs,
                compression="zstd",
                use_dictionary=self.use_dictionary,
            )
        self._writer.write_table(table, row_group_size=128_000)
        self.rows += table.num_rows

    def adopt(self, path: str, rows: int) -> None:
        """Copy a finished Parquet file of this schema (a shard's staged part) into this version
        under a run-unique name: a server-side copy on S3, no decoding. Listed from the commit."""
        name = f"part-{self.run_id}-{len(self.adopted):04d}.parquet"
        self.adopted.append(name)
        self.lake.fs.copy_file(path, posixpath.join(self.dir, name))
        self.rows += rows

    def write_artifact(self, name: str, data: bytes) -> str:
        """A side file kept with the partition (a validation report, say); replaced on rerun."""
        stem, dot, ext = name.rpartition(".")
        versioned = f"{stem}-{self.run_id}.{ext}" if dot else f"{name}-{self.run_id}"
        with self.lake.fs.open_output_stream(posixpath.join(self.dir, versioned)) as fh:
            fh.write(data)
        self.artifacts.append(versioned)
        return self.lake.uri(self.dataset, f"ds={self.ds}", versioned)

    def finish(self) -> list[str]:
        """Close the data file; returns the files written. Readers see none of them until
        `commit` writes the manifest (a crash between the two leaves the partition as it was)."""
        if self._writer is not None and not self._closed:
            self._writer.close()
            self._closed = True
        return ([self.data_file] if self._writer is not None else []) + self.adopted

    def commit(self) -> dict[str, Any]:
        import base64

        files = self.finish()
        manifest = {
            "dataset": self.dataset,
            "ds": self.ds,
            "rows": self.rows,
            "files": files,
            "artifacts": self.artifacts,
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "run_id": self.run_id,
            "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "schema_ipc": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            **self.meta,
        }
        body = json.dumps(manifest, indent=2, default=str).encode()
        if self.precondition is not None:
            self.precondition()
        final = posixpath.join(self.dir, MANIFEST)
        # read just before replacing it: deleting what it lists can never hit the files of a
        # manifest written after ours (a concurrent writer's), only the version ours replaces
        previous = self.lake.read_manifest(self.dataset, self.ds) or {}
        if self.lake.is_s3:
            with self.lake.fs.open_output_stream(final) as fh:
                fh.write(body)
        else:
            tmp = posixpath.join(self.dir, f".{MANIFEST}.{self.run_id}")
            with self.lake.fs.open_output_stream(tmp) as fh:
                fh.write(body)
            self.lake.fs.move(tmp, final)
        self.manifest = manifest
        replaced = set(previous.get("files", [])) | set(previous.get("artifacts", []))
        self._remove(replaced - set(files) - set(self.artifacts))
        return manifest

    def abort(self) -> None:
        try:
            self.finish()
        except OSError:
            pass  # the file is deleted below anyway (a full disk cannot flush it)
        tmp = f".{MANIFEST}.{self.run_id}"
        for name in [self.data_file, *self.adopted, *self.artifacts, tmp]:
            try:
                self.lake.fs.delete_file(posixpath.join(self.dir, name))
            except (FileNotFoundError, OSError):
                pass

    def _remove(self, replaced: set[str]) -> None:
        """Delete the replaced version's files and crashed writers' leftovers (unlisted and
        untouched for ORPHAN_GRACE_S); a concurrent writer's fresh files are left alone."""
        keep = {MANIFEST, *self.manifest["files"], *self.manifest["artifacts"]}
        cutoff = time.time() - ORPHAN_GRACE_S
        selector = pafs.FileSelector(self.dir, allow_not_found=True)
        for info in self.lake.fs.get_file_info(selector):
            name = posixpath.basename(info.path)
            if info.type != pafs.FileType.File or name in keep:
                continue
            stale = info.mtime is not None and info.mtime.timestamp() < cutoff
            if name in replaced or stale:
                try:
                    self.lake.fs.delete_file(info.path)
                except FileNotFoundError:
                    pass  # another writer removed it first


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
