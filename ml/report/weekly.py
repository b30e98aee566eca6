"""`python -m ml report`: the weekly model report, archived in the lake, emailed, logged to MLflow.

Three steps, each runnable alone and each keyed by an ISO week (`ml.weeks.Week`, `2026-W47`,
Monday to Sunday UTC), so that Airflow can retry each one without redoing the others:

1. `build_report`: gather the week's numbers (`ml.report.data`), fetch the thumbnails of the
   champion's mistakes (`ml.report.explain`), draw the charts (`ml.report.charts`), render them
   (`ml.report.render`) and archive everything to `<lake>/reports/week=YYYY-Www/`
   (`ml.report.archive`). Re-running a week replaces its report.
2. `send_report`: read the archived report back (checksums verified) and email it
   (`ml.report.mail`). It never rebuilds: a mail failure is retried on the same archived
   report, which it cannot lose.
3. `log_report`: log the archived report and its key numbers to MLflow as a run of the
   experiment (tags `postflow.kind=weekly_report`, `postflow.week`), replacing the week's run.

This module holds the steps, the MLflow run of a report and the CLI; the jobs they chain live in
the modules named above. Airflow passes the `smtp_default` connection in as
`ml.report.mail.SmtpParams`; `ml` never imports Airflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ml.config import ConfigError, Settings, addresses
from ml.ingest.images import ImageStore
from ml.lake.partitions import Lake
from ml.learn.registry import FINAL_METRICS, connect, experiment_id
from ml.report.archive import MANIFEST as ARCHIVE_MANIFEST
from ml.report.archive import (
    ArchivedReport,
    WeeklyReport,
    archive,
    read_archive,
    report_dir,
)
from ml.report.charts import draw_all
from ml.report.data import collect
from ml.report.explain import thumbnails
from ml.report.mail import SmtpParams, build_email, report_link, send_email
from ml.weeks import Week

log = logging.getLogger(__name__)

__all__ = [
    "SmtpParams",
    "Week",
    "build",
    "build_report",
    "log_report",
    "main",
    "send_report",
]


# -- build --------------------------------------------------------------------------------------


def build(
    settings: Any,
    week: Week,
    *,
    lake: Any = None,
    client: Any = None,
    now: datetime | None = None,
    images: ImageStore | None = None,
    **collect_kwargs: Any,
) -> WeeklyReport:
    """Gather the numbers, fetch the mistakes' thumbnails and draw the charts of `week` (no
    side effects)."""
    lake = lake or Lake.from_settings(settings)
    client = client or connect(settings)
    data = collect(settings, lake, client, week, now=now, **collect_kwargs)
    t0 = time.perf_counter()
    thumbs: dict[str, bytes] = {}
    if data["errors"] and data["errors"]["mistakes"]:
        store = images or ImageStore.from_settings(settings)  # confined and bounded reads
        thumbs = thumbnails(store, data["errors"]["mistakes"])
    data["timings_s"]["thumbnails"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    charts = draw_all(data)
    data["timings_s"]["charts"] = round(time.perf_counter() - t0, 3)
    data["charts"] = [
        {"name": c.name, "title": c.title, "alt": c.alt, "file": f"{c.name}.png"} for c in charts
    ]
    return WeeklyReport(week, data, charts, thumbs)


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
        for k in FINAL_METRICS:
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
    from mlflow.entities import Metric

    client = client or connect(settings)
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
        for name, jpeg in archived.thumbnails.items():
            (root / f"{name}.jpg").write_bytes(jpeg)
        client.log_artifacts(run_id, tmp, "report")
    client.set_terminated(run_id)
    return run_id


# -- the three steps ----------------------------------------------------------------------------


def build_report(settings: Any, week: Week | str, **kwargs: Any) -> dict[str, Any]:
    """Build and archive the report of `week`; returns references (for XCom), not data."""
    week = Week.parse(week) if isinstance(week, str) else week
    lake = kwargs.pop("lake", None) or Lake.from_settings(settings)
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
    settings: Any,
    week: Week | str,
    smtp: SmtpParams | Callable[[EmailMessage], dict[str, Any]],
    recipients: list[str] | None = None,
) -> dict[str, Any]:
    """Email the archived report of `week` (read back from the lake, never rebuilt), with
    smtplib (`SmtpParams`) or a sender taking the message (Airflow: the SMTP provider's hook)."""
    week = Week.parse(week) if isinstance(week, str) else week
    to = recipients if recipients is not None else addresses(settings.report_recipients)
    if not to:
        raise ConfigError("no report recipients: set POSTFLOW_REPORT_RECIPIENTS (comma-separated)")
    lake = Lake.from_settings(settings)
    archived = read_archive(lake, week)
    sent = SentLog(lake, week)
    pending = [a for a in to if a not in sent.delivered]
    if not pending:  # a retry after a send whose task failed later: never mail twice
        log.info("weekly report %s already sent to %s", week, to)
        return {"recipients": [], "already_sent": to, "week": week.label, "uri": archived.uri}
    link = report_link(lake, week, settings.report_link_expiry_s, settings.s3_public_endpoint)
    msg = build_email(archived, settings.report_sender, pending, link)
    out = smtp(msg) if callable(smtp) else send_email(msg, smtp)
    sent.record(out["recipients"])
    if out["refused"]:  # e.g. greylisting (451): the retry mails these, and only these
        raise SendIncomplete(
            f"weekly report {week} mailed to {out['recipients']} but refused for "
            f"{out['refused']}; a retry sends it to those only"
        )
    log.info("sent weekly report %s to %s", week, out["recipients"])
    return out | {"week": week.label, "uri": archived.uri}


class SendIncomplete(RuntimeError):
    """Some recipients refused the report (the others got it): retry for the rest."""


class SentLog:
    """Who already got this version of a week's report: `_sent.json` next to the archive,
    keyed by the archive manifest's checksum (a rebuilt report is a new version, mailed anew;
    the rebuild deletes the file). Makes `send_report` safe to retry: nobody is mailed twice."""

    NAME = "_sent.json"

    def __init__(self, lake: Lake, week: Week) -> None:
        import hashlib
        import posixpath

        self.lake, base = lake, report_dir(lake, week)
        self.path = posixpath.join(base, self.NAME)
        with lake.fs.open_input_stream(posixpath.join(base, ARCHIVE_MANIFEST)) as fh:
            self.version = hashlib.sha256(fh.read()).hexdigest()
        self.delivered: list[str] = []
        try:
            with lake.fs.open_input_stream(self.path) as fh:
                old = json.loads(fh.read())
        except (FileNotFoundError, OSError):
            old = {}
        if old.get("archive_sha256") == self.version:
            self.delivered = list(old["delivered"])

    def record(self, recipients: list[str]) -> None:
        self.delivered += [a for a in recipients if a not in self.delivered]
        body = {"archive_sha256": self.version, "delivered": self.delivered}
        with self.lake.fs.open_output_stream(self.path) as fh:
            fh.write(json.dumps(body).encode())


def log_report(settings: Any, week: Week | str, client: Any = None) -> dict[str, Any]:
    week = Week.parse(week) if isinstance(week, str) else week
    archived = read_archive(Lake.from_settings(settings), week)
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
        to = addresses(args.to) if args.to else None
        out["send"] = send_report(settings, week, smtp, to)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
