"""Weekly report: seconds to build + archive + send one report over 12 weeks of model history.

Setup (not timed): a local lake with `--posts-per-day` posts a day over the report week and the
28-day training window before it (posts_raw/posts_clean/quarantine manifests and 2432-d fp16
features), an MLflow sqlite store with one model version a day for 12 weeks (84 versions with
their runs' metrics and tags), the last one a real model trained here, logged and registered by
`ml.learn.registry` and made champion (so the confusion matrix is a live evaluation), and an
aiosmtpd server on loopback.

Timed: `build_report` (lake + MLflow queries, live evaluation, drift, charts, HTML, archive) and
`send_report` (read the archive back, render the email, send over SMTP), twice: the first run
pays the imports a fresh task process pays (mlflow, matplotlib, torch), the second is warm.
Baseline in the same run: the bare minimum of a weekly email, the week's manifests read and
their numbers sent as plain text.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import tempfile
import time
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path

import numpy as np

WEEK = "2026-W47"


def _seed_mlflow(settings, lake, week, days_of_history: int, train_days: list[str]) -> None:
    from mlflow.entities import Metric

    from ml.learn import dataset as DS
    from ml.learn import model as M
    from ml.learn import registry
    from ml.learn import train as T

    client = registry.connect(settings)
    exp_id = registry.experiment_id(client, settings)
    name = settings.registered_model
    client.create_registered_model(name)
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    first = week.last_day - timedelta(days=days_of_history - 1)
    for i in range(days_of_history - 1):
        day = first + timedelta(days=i)
        start = day - timedelta(days=27)
        run = client.create_run(
            exp_id,
            run_name=f"train-{day}",
            tags={
                "postflow.window": f"{start}..{day}",
                "postflow.image_weights": "imagenet",
                "postflow.code_version": "bench",
            },
        )
        f1 = 0.3 + 0.1 * rng.random()
        metrics = {"rows": 28_000.0, "split_train_rows": 16_800.0, "split_test_rows": 5_600.0}
        for model, base in (("mlp", f1), ("majority", 0.03), ("logistic", f1 - 0.05)):
            for split in ("val", "test"):
                metrics[f"{model}_{split}_accuracy"] = base + 0.15
                metrics[f"{model}_{split}_balanced_accuracy"] = base + 0.02
                metrics[f"{model}_{split}_macro_f1"] = base
        client.log_batch(run.info.run_id, [Metric(k, v, now, 0) for k, v in metrics.items()])
        promoted = rng.random() < 0.3
        tags = {
            "postflow.promotion": "promoted" if promoted else "rejected",
            "postflow.decision_reason": "bench",
            "postflow.challenger_macro_f1": f"{f1:.6f}",
            "postflow.champion_macro_f1": "0.350000",
            "postflow.decided_at": f"{day + timedelta(days=1)}T03:00:00+00:00",
        }
        client.create_model_version(
            name, source=f"{lake.root}/none", run_id=run.info.run_id, tags=tags
        )
    # the last version: a real model, trained, logged and registered, then made champion
    data = DS.load_dataset(lake, train_days[0], train_days[-1], horizon_days=1)
    result = T.run_training(data, M.TrainConfig(max_epochs=5, device="cpu"))
    run_id = registry.log_training(result, settings, ds=train_days[-1])
    version = registry.register_challenger(run_id, settings)
    client.set_registered_model_alias(name, "champion", str(version))
    client.set_model_version_tag(name, str(version), "postflow.promotion", "promoted")


def _smtp():
    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    received: list[bytes] = []

    class Collect:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope.content)
            return "250 OK"

    port = free_port()
    controller = Controller(Collect(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port, received


def _baseline(settings, lake, week, port: int) -> float:
    """Manifests of the week read, their numbers emailed as plain text."""
    from ml.lake.schema import DATASET_CLEAN, DATASET_QUARANTINE

    t0 = time.perf_counter()
    lines = []
    for ds in week.days:
        m = lake.read_manifest(DATASET_CLEAN, ds)
        q = lake.read_manifest(DATASET_QUARANTINE, ds)
        if m and q:
            lines.append(f"{ds} {m['source_rows']} {m['rows']} {q['rows']}")
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = f"bare {week}", settings.report_sender, "a@x.org"
    msg.set_content("\n".join(lines))
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.send_message(msg)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench report")
    parser.add_argument("--posts-per-day", type=int, default=1000)
    parser.add_argument("--weeks", type=int, default=12)
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ml.config import Settings
    from ml.lake.partitions import Lake
    from ml.report.archive import read_archive
    from ml.report.mail import SmtpParams
    from ml.report.weekly import build_report, send_report
    from ml.weeks import Week
    from tests.ml.report.test_report import write_synthetic_days

    week = Week.parse(WEEK)
    tmp = Path(tempfile.mkdtemp(prefix="postflow-bench-report-"))
    settings = Settings.load(
        {
            "lake": str(tmp / "lake"),
            "image_root": str(tmp / "images"),  # none there: the mistakes say "no photo"
            "mlflow_uri": f"sqlite:///{tmp}/mlflow.db",
            "label_horizon_days": 1,  # the last day's posts wait for their horizon
            "report_weeks": args.weeks,
        },
        environ={"POSTFLOW_CONFIG": ""},
    )
    lake = Lake.from_settings(settings)
    lake.check()
    t0 = time.perf_counter()
    start = date.fromisoformat(week.days[0]) - timedelta(days=settings.train_window_days)
    days = [(start + timedelta(days=i)).isoformat() for i in range(settings.train_window_days + 7)]
    write_synthetic_days(lake, days, args.posts_per_day, seed=0)
    _seed_mlflow(settings, lake, week, 7 * args.weeks, days[-3:])
    controller, port, received = _smtp()
    print(
        f"setup: {len(days)} days x {args.posts_per_day} posts, {7 * args.weeks} model "
        f"versions, in {time.perf_counter() - t0:.0f}s (load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores)"
    )
    smtp = SmtpParams(port=port)
    rows = []
    try:
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            built = build_report(settings, week)
            t1 = time.perf_counter()
            send_report(settings, week, smtp)
            t2 = time.perf_counter()
            rows.append((label, t1 - t0, t2 - t1, t2 - t0))
        base = min(_baseline(settings, lake, week, port) for _ in range(3))
    finally:
        controller.stop()
    data = read_archive(lake, week).data
    assert len(received) == 5 and len(data["history"]["versions"]) == 7 * args.weeks
    assert data["evaluation"]["source"] == "live", data["evaluation"]
    for label, b, s, total in rows:
        print(f"{label}: build+archive {b:.2f}s, send {s:.2f}s, total {total:.2f}s")
    print(
        "warm build breakdown (s): " + ", ".join(f"{k} {v}" for k, v in data["timings_s"].items())
    )
    print(f"charts {len(built['charts'])}, email {len(received[1]) / 1024:.0f} KiB")
    total = rows[1][3]
    print(
        f"RESULT report_build_send_s={total:.2f} cold={rows[0][3]:.2f} "
        f"bare_text_email_s={base:.3f} ratio={total / base:.0f}x"
    )
    return {"report_build_send_s": total, "cold_s": rows[0][3], "bare_text_email_s": base}


if __name__ == "__main__":
    main()
