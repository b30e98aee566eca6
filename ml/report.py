"""`python -m ml report`: the weekly model report, archived in the lake, emailed, logged to MLflow.

Three steps, each runnable alone and each keyed by an ISO week (`2026-W47`, Monday to Sunday UTC):

1. `build_report`: gather the week's numbers (`ml.report_data`), draw the charts
   (`ml.report_charts`), render the HTML (`ml/templates/report.html.j2`) and archive everything to
   `<lake>/reports/week=YYYY-Www/`: `report.json` (every number), one PNG per chart,
   `report.html` (self-contained: images as data: URIs, readable from a time-limited link),
   `report.txt`, and `_manifest.json` written last with each file's sha256. Re-running a week
   replaces its report.
2. `send_report`: read the archived report back (checksums verified), render the email from it
   (HTML with the charts as inline `cid:` parts, a plain-text alternative, a fresh time-limited
   link to the archived HTML when the lake is on S3) and send it with smtplib. It never rebuilds:
   a mail failure is retried on the same archived report, which it cannot lose.
3. `log_report`: log the archived report and its key numbers to MLflow as a run of the
   experiment (tags `postflow.kind=weekly_report`, `postflow.week`), replacing the week's run.

Airflow passes the `smtp_default` connection in as `SmtpParams`; `ml` never imports Airflow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import posixpath
import re
import smtplib
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from ml.labels import bin_names
from ml.report_charts import Chart
from ml.weeks import Week

log = logging.getLogger(__name__)

DATASET = "reports"
MANIFEST = "_manifest.json"
TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs last at most 7 days
CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

__all__ = [
    "ArchivedReport",
    "SmtpParams",
    "Week",
    "WeeklyReport",
    "build_report",
    "log_report",
    "send_report",
]


@dataclass(frozen=True)
class SmtpParams:
    host: str = "127.0.0.1"
    port: int = 25
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False  # SMTP over TLS from the first byte (port 465)
    starttls: bool = False  # plain connection upgraded with STARTTLS (port 587)
    timeout: float = 30.0


@dataclass
class WeeklyReport:
    """A built report: the numbers and the charts, before archiving."""

    week: Week
    data: dict[str, Any]
    charts: list[Chart]


@dataclass
class ArchivedReport:
    """A report as read back from the lake."""

    week: Week
    uri: str
    data: dict[str, Any]
    images: dict[str, bytes]  # chart name -> PNG
    html: str
    text: str


# -- rendering ----------------------------------------------------------------------------------


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.1%}"


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


def render_html(
    data: dict[str, Any],
    images: dict[str, str],
    link: dict[str, Any] | None = None,
    archive_uri: str = "",
) -> str:
    """The report as HTML; `images` maps chart name -> img src (`cid:...` or `data:...`)."""
    charts = {c["name"]: c for c in data.get("charts", []) if c["name"] in images}
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            report=data,
            charts=charts,
            images=images,
            link=link,
            archive_uri=archive_uri,
            bins=bin_names(data["labels"]["edges"]),
        )
    )


def render_text(data: dict[str, Any], link: dict[str, Any] | None = None) -> str:
    """The plain-text alternative: every number of the HTML, as aligned text."""
    r, out = data, []
    bins = bin_names(r["labels"]["edges"])
    out.append(f"postflow weekly report {r['week']}")
    out.append(f"Monday {r['start']} to Sunday {r['end']} (UTC), model {r['registered_model']}")
    if link:
        out.append(f"Full report: {link.get('url') or ''} ({link['text']})")
    out.append("")
    for f in r["flags"]:
        out.append(f"DRIFT: {f}")
    for n in r["notes"]:
        out.append(f"NOTE: {n}")
    e, champ = r["evaluation"], r["champion"]
    q = r["quality"]["totals"]
    out += [
        "",
        "Summary",
        f"  champion: {'v' + champ['version'] if champ else 'none'}",
        f"  champion test accuracy: {_num(e['accuracy']) if e else 'n/a'}",
        f"  champion test macro-F1: {_num(e['macro_f1']) if e else 'n/a'}",
        f"  posts ingested / clean / quarantined: {q['ingested']} / {q['clean']} / "
        f"{q['quarantined']}",
        "",
        f"1. Labels of the training window {r['labels']['window'][0]} to "
        f"{r['labels']['window'][1]} ({r['labels']['rows']} labelled posts)",
        f"  {'comments':<10}{'train':>8}{'val':>8}{'test':>8}",
    ]
    for i, b in enumerate(bins):
        lab = r["labels"]
        out.append(f"  {b:<10}{lab['train'][i]:>8}{lab['val'][i]:>8}{lab['test'][i]:>8}")
    out += ["", f"2. Model versions over the last {r['history']['weeks']} weeks (test split)"]
    if not r["history"]["versions"]:
        out.append("  none")
    for v in r["history"]["versions"]:
        out.append(
            f"  v{v['version']:<4} data to {v['date']}  accuracy {_num(v['mlp']['accuracy'])}  "
            f"macro-F1 {_num(v['mlp']['macro_f1'])}  majority {_num(v['majority']['accuracy'])}/"
            f"{_num(v['majority']['macro_f1'])}  logistic {_num(v['logistic']['accuracy'])}/"
            f"{_num(v['logistic']['macro_f1'])}"
            + ("  CHAMPION" if v["champion"] else f"  {v['promotion'] or ''}")
        )
    out += ["", "3. Champion on the current test split"]
    if e:
        out.append(f"  source: {e['source_text']}")
        out.append(
            f"  n {e['n']}  accuracy {_num(e['accuracy'])}  balanced accuracy "
            f"{_num(e['balanced_accuracy'])}  macro-F1 {_num(e['macro_f1'])}"
        )
        out.append("  confusion matrix (rows true, columns predicted):")
        for i, row in enumerate(e["confusion_matrix"]):
            name = bins[i] if i < len(bins) else str(i)
            cells = " ".join(f"{c:>6}" for c in row)
            out.append(f"  {name:<10}{cells}   recall {_num(e['per_class_recall'][i])}")
    else:
        out.append("  none")
    out += ["", "4. Data quality", f"  {'day':<12}{'ingested':>9}{'clean':>8}{'quar.':>7}  reasons"]
    for d in r["quality"]["days"]:
        if d["status"] == "missing":
            out.append(f"  {d['ds']:<12}  no data")
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items()) or "-"
        out.append(
            f"  {d['ds']:<12}{d['ingested'] or 0:>9}{d['clean'] or 0:>8}{d['quarantined'] or 0:>7}"
            f"  {reasons}  ({d['status']})"
        )
    out.append(f"  {'week':<12}{q['ingested']:>9}{q['clean']:>8}{q['quarantined']:>7}")
    dr = r["drift"]
    out += [
        "",
        f"5. Drift against {dr['reference_source']} ({dr['reference_window'][0]} to "
        f"{dr['reference_window'][1]}), threshold PSI {dr['threshold']}",
    ]
    if dr["labels"]:
        lab = dr["labels"]
        out.append(f"  labels PSI {_num(lab['psi'], 4)}")
        for i, b in enumerate(bins):
            out.append(
                f"  {b:<10} training {_pct(lab['reference_share'][i]):>7}  week "
                f"{_pct(lab['week_share'][i]):>7}  PSI {_num(lab['psi_per_bin'][i], 4)}"
            )
    else:
        out.append("  labels: nothing to compare")
    for name, d in dr["embeddings"].items():
        out.append(
            f"  {name} embeddings: PSI norm {_num(d['psi_norm'], 4)}, PSI 1st component "
            f"{_num(d['psi_pc1'], 4)}, cosine of means {_num(d['mean_cosine'], 4)}"
        )
    out += ["", "6. Promotion decisions"]
    if not r["decisions"]:
        out.append("  none")
    for d in r["decisions"]:
        out.append(
            f"  v{d['version']} {d['promotion']}: challenger macro-F1 "
            f"{_num(d['challenger_macro_f1'])}, champion macro-F1 {_num(d['champion_macro_f1'])}"
            + (f" (v{d['champion_version']})" if d["champion_version"] else "")
            + (f" - {d['decision_reason']}" if d["decision_reason"] else "")
        )
    if champ:
        win = " to ".join(champ["window"]) if champ["window"] else "unknown"
        rows = "unknown" if champ["rows"] is None else int(champ["rows"])
        out.append(
            f"  champion v{champ['version']} trained on {win}, {rows} rows, image weights "
            f"{champ['image_weights'] or 'unknown'}, code {champ['code_version'] or 'unknown'}"
        )
    return "\n".join(out) + "\n"


# -- build and archive --------------------------------------------------------------------------


def _lake(settings: Any):
    from ml.lake import Lake

    return Lake.from_settings(settings)


def _client(settings: Any):
    from ml.registry import connect

    return connect(settings)


def build(
    settings: Any,
    week: Week,
    *,
    lake: Any = None,
    client: Any = None,
    now: datetime | None = None,
    **collect_kwargs: Any,
) -> WeeklyReport:
    """Gather the numbers and draw the charts of `week` (no side effects)."""
    from ml.report_charts import draw_all
    from ml.report_data import collect

    lake = lake or _lake(settings)
    client = client or _client(settings)
    data = collect(settings, lake, client, week, now=now, **collect_kwargs)
    t0 = time.perf_counter()
    charts = draw_all(data)
    data["timings_s"]["charts"] = round(time.perf_counter() - t0, 3)
    data["charts"] = [
        {"name": c.name, "title": c.title, "alt": c.alt, "file": f"{c.name}.png"} for c in charts
    ]
    return WeeklyReport(week, data, charts)


def report_dir(lake: Any, week: Week) -> str:
    return posixpath.join(lake.base, DATASET, f"week={week.label}")


def report_uri(lake: Any, week: Week) -> str:
    return lake.uri(DATASET, f"week={week.label}")


def _data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()


def _write(lake: Any, path: str, data: bytes) -> None:
    meta = None
    if lake.is_s3:
        meta = {"Content-Type": CONTENT_TYPES.get(posixpath.splitext(path)[1], "binary/octet")}
    with lake.fs.open_output_stream(path, compression=None, metadata=meta) as fh:
        fh.write(data)


def archive(lake: Any, report: WeeklyReport) -> str:
    """Write the report to `reports/week=YYYY-Www/`, manifest last; returns the folder's URI."""
    import pyarrow.fs as pafs

    from ml.lake import code_version

    base = report_dir(lake, report.week)
    uri = report_uri(lake, report.week)
    if not lake.is_s3:  # on S3 a "directory" would be an empty marker object
        lake.fs.create_dir(base, recursive=True)
    t0 = time.perf_counter()
    html = render_html(
        report.data, {c.name: _data_uri(c.png) for c in report.charts}, None, uri
    ).encode()
    text = render_text(report.data).encode()
    report.data["timings_s"]["render"] = round(time.perf_counter() - t0, 3)
    files: dict[str, bytes] = {f"{c.name}.png": c.png for c in report.charts}
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
    )


def report_link(lake: Any, week: Week, expiry_s: int) -> dict[str, Any]:
    """A time-limited https link to the archived `report.html` on S3; for a local lake, its
    file:// URI (readable only on that machine, and the email says so)."""
    uri = report_uri(lake, week) + "/report.html"
    if not lake.is_s3:
        return {
            "url": uri,
            "text": "a local lake: this path opens only on the machine that holds it",
            "expires_at": None,
        }
    import boto3

    bucket, _, key = posixpath.join(report_dir(lake, week), "report.html").partition("/")
    expiry = max(60, min(int(expiry_s), MAX_PRESIGN_S))
    s3 = boto3.client("s3", endpoint_url=lake.s3_endpoint or None, region_name=lake.region)
    url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": key, "ResponseContentType": "text/html; charset=utf-8"},
        ExpiresIn=expiry,
    )
    until = datetime.now(UTC) + timedelta(seconds=expiry)
    return {
        "url": url,
        "text": f"link valid until {until:%Y-%m-%d %H:%M} UTC; {uri}",
        "expires_at": until.isoformat(timespec="seconds"),
    }


# -- email --------------------------------------------------------------------------------------


def recipients_of(text: str) -> list[str]:
    return [a for a in (s.strip() for s in re.split(r"[,;]", text or "")) if a]


def content_id(name: str, week: Week) -> str:
    return f"{name}.{week.label}@postflow"


def subject_of(data: dict[str, Any]) -> str:
    parts = [f"postflow weekly report {data['week']}"]
    e, champ = data["evaluation"], data["champion"]
    if champ and e:
        parts.append(
            f"champion v{champ['version']} accuracy {_num(e['accuracy'])}, "
            f"macro-F1 {_num(e['macro_f1'])}"
        )
    elif champ:
        parts.append(f"champion v{champ['version']}, not evaluated")
    else:
        parts.append("no champion")
    t = data["quality"]["totals"]
    parts.append(f"{t['ingested']} posts" if t["days_with_data"] else "no data")
    subject = ": ".join(parts[:2]) + "; " + "; ".join(parts[2:])
    if data["flags"]:
        subject = "[drift] " + subject
    return subject


def build_email(
    archived: ArchivedReport,
    sender: str,
    recipients: list[str],
    link: dict[str, Any] | None = None,
) -> EmailMessage:
    """multipart/alternative: text/plain, then multipart/related (text/html + inline PNGs, each
    with the Content-ID its `<img src="cid:...">` names)."""
    week = archived.week
    cids = {n: content_id(n, week) for n in archived.images}
    html = render_html(archived.data, {n: f"cid:{c}" for n, c in cids.items()}, link, archived.uri)
    msg = EmailMessage()
    msg["Subject"] = subject_of(archived.data)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=f"report.{week.label}", domain="postflow")
    msg["X-Postflow-Week"] = week.label
    msg.set_content(render_text(archived.data, link))
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[1]
    alt = {c["name"]: c for c in archived.data.get("charts", [])}
    for name, png in archived.images.items():
        html_part.add_related(
            png,
            maintype="image",
            subtype="png",
            cid=f"<{cids[name]}>",
            filename=f"{name}.png",
            disposition="inline",
            headers=[f"Content-Description: {alt.get(name, {}).get('title', name)}"],
        )
    return msg


def send_email(msg: EmailMessage, smtp: SmtpParams) -> dict[str, Any]:
    """Send with smtplib; raises on any SMTP error (the caller retries)."""
    from_addr = msg["From"]
    to_addrs = recipients_of(msg["To"])
    cls = smtplib.SMTP_SSL if smtp.ssl else smtplib.SMTP
    kwargs: dict[str, Any] = {"timeout": smtp.timeout}
    if smtp.ssl:
        kwargs["context"] = ssl.create_default_context()
    with cls(smtp.host, smtp.port, **kwargs) as client:
        if smtp.starttls and not smtp.ssl:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if smtp.user:
            client.login(smtp.user, smtp.password or "")
        refused = client.send_message(msg, from_addr=from_addr, to_addrs=to_addrs)
    if refused:
        log.warning("recipients refused by %s:%s: %s", smtp.host, smtp.port, refused)
    return {
        "message_id": msg["Message-ID"],
        "recipients": [a for a in to_addrs if a not in refused],
        "refused": {a: str(v) for a, v in refused.items()},
        "subject": msg["Subject"],
    }


# -- MLflow -------------------------------------------------------------------------------------


def report_metrics(data: dict[str, Any]) -> dict[str, float]:
    """The headline numbers, as MLflow metrics."""
    out: dict[str, float] = {}
    t = data["quality"]["totals"]
    out.update(
        {
            "report_posts_ingested": t["ingested"],
            "report_posts_clean": t["clean"],
            "report_posts_quarantined": t["quarantined"],
            "report_model_versions": len(data["history"]["versions"]),
            "report_decisions": len(data["decisions"]),
        }
    )
    e = data["evaluation"]
    if e:
        for k in ("accuracy", "balanced_accuracy", "macro_f1"):
            if e.get(k) is not None:
                out[f"report_champion_test_{k}"] = e[k]
    if data["drift"]["labels"]:
        out["report_label_psi"] = data["drift"]["labels"]["psi"]
    for name, d in data["drift"]["embeddings"].items():
        out[f"report_{name}_embedding_psi"] = d["psi"]
    return {k: float(v) for k, v in out.items() if v is not None}


def log_archived(settings: Any, archived: ArchivedReport, client: Any = None) -> str:
    """One MLflow run per week (an earlier run of the same week is deleted): tags, headline
    metrics, and the archived files under the artifact folder `report/`."""
    import tempfile

    from mlflow.entities import Metric

    from ml.registry import experiment_id

    client = client or _client(settings)
    exp_id = experiment_id(client, settings)
    week = archived.week.label
    old = client.search_runs(
        [exp_id],
        filter_string=f"tags.`postflow.kind` = 'weekly_report' and tags.`postflow.week` = '{week}'",
    )
    for r in old:
        client.delete_run(r.info.run_id)
    champ = archived.data["champion"]
    run = client.create_run(
        exp_id,
        run_name=f"weekly-report-{week}",
        tags={
            "postflow.kind": "weekly_report",
            "postflow.week": week,
            "postflow.report_uri": archived.uri,
            "postflow.champion_version": champ["version"] if champ else "",
            "postflow.code_version": archived.data["code_version"],
        },
    )
    run_id = run.info.run_id
    now_ms = int(time.time() * 1000)
    metrics = [Metric(k, v, now_ms, 0) for k, v in report_metrics(archived.data).items()]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="postflow-report-") as tmp:
        root = Path(tmp)
        (root / "report.json").write_text(json.dumps(archived.data, indent=2))
        (root / "report.html").write_text(archived.html)
        (root / "report.txt").write_text(archived.text)
        for name, png in archived.images.items():
            (root / f"{name}.png").write_bytes(png)
        client.log_artifacts(run_id, tmp, "report")
    client.set_terminated(run_id)
    return run_id


# -- the three steps ----------------------------------------------------------------------------


def build_report(settings: Any, week: Week | str, **kwargs: Any) -> dict[str, Any]:
    """Build and archive the report of `week`; returns references (for XCom), not data."""
    week = Week.parse(week) if isinstance(week, str) else week
    lake = kwargs.pop("lake", None) or _lake(settings)
    t0 = time.perf_counter()
    report = build(settings, week, lake=lake, **kwargs)
    uri = archive(lake, report)
    return {
        "week": week.label,
        "uri": uri,
        "charts": [c.name for c in report.charts],
        "notes": report.data["notes"],
        "flags": report.data["flags"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def send_report(
    settings: Any, week: Week | str, smtp: SmtpParams, recipients: list[str] | None = None
) -> dict[str, Any]:
    """Email the archived report of `week` (read back from the lake, never rebuilt)."""
    from ml.config import ConfigError

    week = Week.parse(week) if isinstance(week, str) else week
    to = recipients if recipients is not None else recipients_of(settings.report_recipients)
    if not to:
        raise ConfigError("no report recipients: set POSTFLOW_REPORT_RECIPIENTS (comma-separated)")
    lake = _lake(settings)
    archived = read_archive(lake, week)
    link = report_link(lake, week, settings.report_link_expiry_s)
    msg = build_email(archived, settings.report_sender, to, link)
    out = send_email(msg, smtp)
    log.info("sent weekly report %s to %s via %s:%s", week, out["recipients"], smtp.host, smtp.port)
    return out | {"week": week.label, "uri": archived.uri}


def log_report(settings: Any, week: Week | str, client: Any = None) -> dict[str, Any]:
    week = Week.parse(week) if isinstance(week, str) else week
    archived = read_archive(_lake(settings), week)
    run_id = log_archived(settings, archived, client)
    return {"week": week.label, "run_id": run_id, "experiment": settings.mlflow_experiment}


# -- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml report",
        description="Build the weekly model report, archive it to the lake, log it to MLflow "
        "and (with --send) email it.",
    )
    p.add_argument("--week", default=None, help="ISO week YYYY-Www (default: last complete week)")
    p.add_argument(
        "--steps",
        default="build,log",
        help="comma-separated subset of build,log,send, run in that order (default build,log)",
    )
    p.add_argument("--send", action="store_true", help="also send the email (adds step send)")
    p.add_argument("--to", default=None, help="recipients (default: POSTFLOW_REPORT_RECIPIENTS)")
    p.add_argument("--smtp-host", default="127.0.0.1")
    p.add_argument("--smtp-port", type=int, default=25)
    p.add_argument("--smtp-user", default=None)
    p.add_argument(
        "--smtp-password-env",
        default="POSTFLOW_SMTP_PASSWORD",
        help="environment variable holding the SMTP password (never a command-line argument)",
    )
    p.add_argument("--smtp-ssl", action="store_true", help="SMTP over TLS (port 465)")
    p.add_argument("--smtp-starttls", action="store_true", help="upgrade with STARTTLS")
    p.add_argument("--smtp-timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    from ml.config import Settings

    settings = Settings.load()
    week = Week.parse(args.week) if args.week else Week.last_complete()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if args.send and "send" not in steps:
        steps.append("send")
    unknown = set(steps) - {"build", "log", "send"}
    if unknown:
        p.error(f"unknown step(s) {sorted(unknown)}")
    out: dict[str, Any] = {"week": week.label}
    if "build" in steps:
        out["build"] = build_report(settings, week)
    if "log" in steps:
        out["log"] = log_report(settings, week)
    if "send" in steps:
        smtp = SmtpParams(
            host=args.smtp_host,
            port=args.smtp_port,
            user=args.smtp_user,
            password=os.environ.get(args.smtp_password_env),
            ssl=args.smtp_ssl,
            starttls=args.smtp_starttls,
            timeout=args.smtp_timeout,
        )
        to = recipients_of(args.to) if args.to else None
        out["send"] = send_report(settings, week, smtp, to)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
