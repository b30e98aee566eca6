"""The archived weekly report: the folder `<lake>/reports/week=YYYY-Www/`, written and read back.

The archive is the report of record: `build_report` writes it before anything is sent, and the
email and the MLflow run are made from it, read back with its checksums verified, never rebuilt.
So a mail failure is retried on the same report, and what was mailed is what was archived.

Files: `report.json` (every number), one PNG per chart, one JPEG thumbnail per photo of the error
analysis, `report.html` (self-contained: images as data: URIs, readable from a time-limited link),
`report.txt`, and `_manifest.json` written last with each file's sha256. Re-running a week replaces
its report (stale files are deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ml.lake.partitions import code_version
from ml.lake.schema import DATASET_REPORTS
from ml.report.charts import Chart
from ml.report.render import render_html, render_text
from ml.weeks import Week

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass
class WeeklyReport:
    """A built report: the numbers, the charts and the thumbnails, before archiving."""

    week: Week
    data: dict[str, Any]
    charts: list[Chart]
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # name -> JPEG


@dataclass
class ArchivedReport:
    """A report as read back from the lake."""

    week: Week
    uri: str
    data: dict[str, Any]
    images: dict[str, bytes]  # chart name -> PNG
    html: str
    text: str
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # name -> JPEG


def report_dir(lake: Any, week: Week) -> str:
    return posixpath.join(lake.base, DATASET_REPORTS, f"week={week.label}")


def report_uri(lake: Any, week: Week) -> str:
    return lake.uri(DATASET_REPORTS, f"week={week.label}")


def _data_uri(body: bytes, mime: str = "image/png") -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(body).decode()


def _write(lake: Any, path: str, data: bytes) -> None:
    meta = None
    if lake.is_s3:
        meta = {"Content-Type": CONTENT_TYPES.get(posixpath.splitext(path)[1], "binary/octet")}
    with lake.fs.open_output_stream(path, compression=None, metadata=meta) as fh:
        fh.write(data)


def archive(lake: Any, report: WeeklyReport) -> str:
    """Write the report to `reports/week=YYYY-Www/`, manifest last; returns the folder's URI."""
    import pyarrow.fs as pafs

    base = report_dir(lake, report.week)
    uri = report_uri(lake, report.week)
    if not lake.is_s3:  # on S3 a "directory" would be an empty marker object
        lake.fs.create_dir(base, recursive=True)
    t0 = time.perf_counter()
    images = {c.name: _data_uri(c.png) for c in report.charts}
    images |= {n: _data_uri(b, "image/jpeg") for n, b in report.thumbnails.items()}
    html = render_html(report.data, images, None, uri).encode()
    text = render_text(report.data).encode()
    report.data["timings_s"]["render"] = round(time.perf_counter() - t0, 3)
    files: dict[str, bytes] = {f"{c.name}.png": c.png for c in report.charts}
    files |= {f"{n}.jpg": b for n, b in report.thumbnails.items()}
    files["report.html"] = html
    files["report.txt"] = text
    files["report.json"] = json.dumps(report.data, indent=2, default=str).encode()
    for name, body in files.items():
        _write(lake, posixpath.join(base, name), body)
    manifest = {
        "week": report.week.label,
        "start": report.week.start.isoformat(),
        "end": report.week.last_day.isoformat(),
        "files": {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in files.items()
        },
        "charts": [c.name for c in report.charts],
        "thumbnails": sorted(report.thumbnails),
        "code_version": code_version(),
        "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write(lake, posixpath.join(base, MANIFEST), json.dumps(manifest, indent=2).encode())
    keep = set(files) | {MANIFEST}
    for info in lake.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type == pafs.FileType.File and posixpath.basename(info.path) not in keep:
            lake.fs.delete_file(info.path)
    log.info("archived weekly report %s to %s (%d files)", report.week, uri, len(files))
    return uri


class ArchiveError(RuntimeError):
    """The archived report is missing or does not match its manifest."""


def read_archive(lake: Any, week: Week) -> ArchivedReport:
    base = report_dir(lake, week)

    def read(name: str) -> bytes:
        with lake.fs.open_input_stream(posixpath.join(base, name)) as fh:
            return fh.read()

    try:
        manifest = json.loads(read(MANIFEST))
    except (FileNotFoundError, OSError) as exc:
        raise ArchiveError(
            f"no archived report at {report_uri(lake, week)}: build it first ({exc})"
        ) from exc
    files = {}
    for name, meta in manifest["files"].items():
        body = read(name)
        if hashlib.sha256(body).hexdigest() != meta["sha256"]:
            raise ArchiveError(f"{report_uri(lake, week)}/{name} does not match its manifest")
        files[name] = body
    return ArchivedReport(
        week=week,
        uri=report_uri(lake, week),
        data=json.loads(files["report.json"]),
        images={n: files[f"{n}.png"] for n in manifest["charts"]},
        html=files["report.html"].decode(),
        text=files["report.txt"].decode(),
        thumbnails={n: files[f"{n}.jpg"] for n in manifest.get("thumbnails", [])},
    )
