"""`weekly_report` through real Airflow (`dag.test()`) on demo data made by the earlier steps:
demo posts in MariaDB → `posts_etl` (Airflow) into a lake on a moto S3 endpoint → features
(synthetic: they stand in for the GPU embed step) → `python -m ml train` and `python -m ml
promote` against a real `mlflow server` → the report, archived on S3, emailed to a real SMTP
server (aiosmtpd), parsed with `email`, and rendered in headless Chromium."""

from __future__ import annotations

import contextlib
import email
import io
import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path

import numpy as np
import pytest

from ml.config import Settings
from ml.lake.partitions import Lake
from ml.weeks import Week
from tests.conftest import MySQLDatabase, demo_days, etl_days, load_dag
from tools import synthetic

WEEK = Week(2026, 47)  # Monday 2026-11-16 .. Sunday 2026-11-22
# three days: a post is labelled at a 1-day horizon, so a window's last day waits for the next
DAYS = [date(2026, 11, 16), date(2026, 11, 17), date(2026, 11, 18)]
EMPTY_WEEK = Week(2026, 40)


def interval_start(week: Week) -> datetime:
    """The data interval of the run that reports on `week` starts on its Monday, 06:00 UTC."""
    return datetime.combine(week.start, datetime.min.time(), UTC) + timedelta(hours=6)


def run_after(week: Week) -> datetime:
    """When that run starts: the next Monday, 06:00 UTC. A manual run (`dag.test`) with this
    logical date gets the interval that ends then, as the scheduled run does."""
    return interval_start(week) + timedelta(days=7)


def write_features(lake: Lake, day: str, seed: int) -> int:
    """Features for the posts of `posts_clean/ds=day`: class means in a 16-d subspace plus
    noise (tools.synthetic; one class geometry for all days), so that a small model learns
    something. One post in ten looks like a post of another bin (its features are drawn for
    that bin): the champion gets those wrong, confidently, and the report has mistakes to show.
    Returns the number of rows."""
    from ml.learn.bins import bin_labels

    # in id order: a post's features must not depend on the partition's row order
    clean = lake.read_partition("posts_clean", day, columns=["id", "comment_count"]).sort_by("id")
    ids = clean["id"].to_numpy()
    y = np.asarray(bin_labels(clean["comment_count"].to_numpy())).reshape(-1)
    rng = np.random.default_rng(seed)
    odd = rng.random(len(y)) < 0.1
    looks_like = y.copy()
    looks_like[odd] = (y[odd] + rng.integers(1, 8, int(odd.sum()))) % 8
    X, _ = synthetic.class_features(
        len(ids), seed, y=looks_like, sep=1.5, space_seed=0, dtype=np.float64
    )
    synthetic.write_features(lake, day, ids, X)
    return len(ids)


def cli_json(main, argv: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def world(airflow_db, s3_server, mlflow_server, tmp_path_factory):
    """Two days of demo posts through posts_etl, features, and two model versions trained,
    registered and put through the promotion gate, all inside WEEK."""
    from ml.learn import promote
    from ml.learn import train as T

    tmp = tmp_path_factory.mktemp("weekly")
    db = MySQLDatabase()
    tag = uuid.uuid4().hex[:8]
    env = {
        "AIRFLOW_CONN_POSTS_MYSQL": db.reader.uri(),
        "POSTFLOW_MYSQL_URI": "mysql://wrong@127.0.0.1:1/unused",  # the connection wins
        "POSTFLOW_LAKE": f"s3://{s3_server.bucket()}/lake",
        "POSTFLOW_S3_ENDPOINT": s3_server.endpoint,
        "POSTFLOW_IMAGE_ROOT": str(tmp / "images"),
        "POSTFLOW_IMAGE_WORKERS": "2",
        "POSTFLOW_MLFLOW_URI": mlflow_server.uri,
        "POSTFLOW_MLFLOW_EXPERIMENT": f"report-{tag}",
        "POSTFLOW_REGISTERED_MODEL": f"report-{tag}",
        "POSTFLOW_LABEL_HORIZON_DAYS": "1",
        "POSTFLOW_TRAIN_WINDOW_DAYS": "7",
        "POSTFLOW_REPORT_RECIPIENTS": "ml-team@example.com, lead@example.com",
        "POSTFLOW_REPORT_SENDER": "postflow@example.com",
    }
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        settings = Settings.load()
        demo_days(settings.replace(mysql_uri=db.admin.uri()), DAYS, posts=900, seed=5)
        etl_days(DAYS)
        lake = Lake.from_settings(settings)
        for i, day in enumerate(DAYS):
            write_features(lake, str(day), seed=10 + i)
        d1, d2, d3 = (str(d) for d in DAYS)
        runs = []
        for start, end, epochs in ((d1, d2, "30"), (d1, d3, "30")):
            trained = cli_json(
                T.main,
                [
                    "--start",
                    start,
                    "--end",
                    end,
                    "--ds",
                    end,
                    "--max-epochs",
                    epochs,
                    "--device",
                    "cpu",
                ],
            )
            decision = cli_json(
                promote.main,
                ["--version", str(trained["version"]), "--start", start, "--end", end],
            )
            runs.append({"trained": trained, "decision": decision})
        yield {"settings": settings, "lake": lake, "runs": runs, "env": env, "tmp": tmp}
    finally:
        mp.undo()
        db.drop()


def s3_objects(s3_server, lake: Lake, week: Week) -> dict[str, bytes]:
    bucket, _, prefix = lake.base.partition("/")
    s3 = s3_server.client()
    key = f"{prefix}/reports/week={week.label}/"
    out = {}
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", []):
        out[o["Key"][len(key) :]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def report_emails(smtp_server, n: int = 1) -> list[email.message.EmailMessage]:
    got = smtp_server.wait_for(n)
    return [
        email.message_from_bytes(m["data"], policy=policy.default)
        for m in got
        if b"X-Postflow-Week" in m["data"]
    ]


def chromium_images(html: str, folder: Path, name: str) -> tuple[dict[str, int], Path]:
    """Open the HTML in headless Chromium: a screenshot, and each image's naturalWidth after
    the load event (0 = broken). A control image with a missing file is added to the probed
    copy: its width must come back 0, proving the probe sees broken images."""
    chromium = shutil.which("chromium")
    assert chromium, "headless Chromium (Debian package `chromium`) is needed for this test"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    page = folder / f"{name}.html"
    page.write_text(html)
    probe = folder / f"{name}.probe.html"
    control = f'<img id="control" src="{(folder / "missing.png").as_uri()}" alt="control">'
    script = (
        "<script>window.addEventListener('load', () => {"
        " for (const i of document.images) i.setAttribute('data-w', String(i.naturalWidth));"
        " document.body.setAttribute('data-probed', String(document.images.length)); });"
        "</script>"
    )
    probe.write_text(html.replace("</body>", control + script + "</body>"))
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "data-probed=" in dom, dom[-2000:]
    widths = {}
    for tag in re.findall(r"<img\b[^>]*>", dom):
        src = re.search(r'src="([^"]*)"', tag).group(1)
        widths[src] = int(re.search(r'data-w="(\d+)"', tag).group(1))
    assert widths.pop((folder / "missing.png").as_uri()) == 0, "the probe must see a broken image"
    shot = folder / f"{name}.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=800,3600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    return widths, shot


def test_schedule_gives_whole_weeks_monday_to_monday():
    """Scheduled and backfill runs get [Monday 06:00, next Monday 06:00) UTC; the report is
    the ISO week of the interval's start."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    dag = load_dag("weekly_report")
    timetable = coerce_to_core_timetable(dag.timetable)
    start = interval_start(WEEK)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(start - timedelta(days=7), start),
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=True),
    )
    assert (info.data_interval.start, info.data_interval.end) == (start, run_after(WEEK))
    assert info.logical_date == start and start.weekday() == 0
    assert Week.of(info.data_interval.start) == WEEK
    manual = timetable.infer_manual_data_interval(run_after=run_after(WEEK))
    assert (manual.start, manual.end) == (start, run_after(WEEK))
    assert not dag.catchup and dag.max_active_runs == 1
    assert [t.task_id for t in dag.topological_sort()][0] == "build_report"
    assert dag.get_task("send_report").upstream_task_ids == {"build_report"}
    assert dag.get_task("send_report").retries > dag.get_task("build_report").retries


@pytest.mark.integration
def test_weekly_report_dag_archives_emails_and_logs(world, smtp_server, s3_server, monkeypatch):
    from ml.learn import registry
    from ml.report.weekly import report_metrics

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_json())
    settings, lake = world["settings"], world["lake"]
    dag = load_dag("weekly_report")
    run = dag.test(logical_date=run_after(WEEK))
    assert str(run.state) == "success"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == dict.fromkeys(["build_report", "send_report", "log_report"], "success")
    assert (run.data_interval_start, run.data_interval_end) == (
        interval_start(WEEK),
        run_after(WEEK),
    )

    # the archive on the S3 endpoint, complete and matching its manifest
    objects = s3_objects(s3_server, lake, WEEK)
    manifest = json.loads(objects["_manifest.json"])
    # besides the manifest's files: the manifest, and the record of who got the mail
    assert set(objects) - {"_sent.json"} == set(manifest["files"]) | {"_manifest.json"}
    import hashlib

    for name, meta in manifest["files"].items():
        assert hashlib.sha256(objects[name]).hexdigest() == meta["sha256"], name
    data = json.loads(objects["report.json"])
    assert data["week"] == "2026-W47" and data["start"] == "2026-11-16"

    # the numbers are the lake's and the registry's
    q = data["quality"]
    assert [d["status"] != "missing" for d in q["days"]] == [True, True, True] + [False] * 4
    ingested = sum(lake.read_manifest("posts_raw", str(d))["rows"] for d in DAYS)
    clean = sum(lake.read_manifest("posts_clean", str(d))["rows"] for d in DAYS)
    assert q["totals"]["ingested"] == ingested and q["totals"]["clean"] == clean
    assert q["totals"]["quarantined"] == ingested - clean > 0
    decisions = [r["decision"] for r in world["runs"]]
    champion = "2" if decisions[1]["promoted"] else "1"
    assert decisions[0]["promoted"], decisions[0]["reason"]
    assert data["champion"]["version"] == champion
    assert [v["version"] for v in data["history"]["versions"]] == ["1", "2"]
    assert [d["version"] for d in data["decisions"]] == ["1", "2"]
    assert data["decisions"][1]["challenger_macro_f1"] == pytest.approx(
        decisions[1]["challenger_macro_f1"], abs=1e-6
    )
    assert data["champion"]["image_weights"] == "none"
    e = data["evaluation"]
    assert e["source"] == "live" and e["n"] == sum(data["labels"]["test"]) > 0
    client = registry.connect(settings)
    run_2 = client.get_run(world["runs"][1]["trained"]["run_id"])
    assert sum(data["labels"]["test"]) == run_2.data.metrics["split_test_rows"]  # same window:
    assert sum(data["labels"]["train"]) == run_2.data.metrics["split_train_rows"]  # same split
    if champion == "2":  # the registered family's test score (MLP or logistic)
        assert e["macro_f1"] == pytest.approx(run_2.data.metrics["model_test_macro_f1"], abs=1e-6)

    # learning curves of the newest version (v2), from its run's metric history
    lc = data["curves"]
    assert lc["version"] == "2" and lc["run_id"] == run_2.info.run_id
    assert len(lc["epochs"]) == run_2.data.metrics["epochs"] > 1
    history = client.get_metric_history(run_2.info.run_id, "val_loss")
    assert lc["val_loss"] == pytest.approx([m.value for m in sorted(history, key=lambda m: m.step)])
    assert lc["best_epoch"] == run_2.data.metrics["best_epoch"]
    # error analysis: confused pairs from the live matrix, mistakes with the demo's photos
    er = data["errors"]
    cm = np.asarray(e["confusion_matrix"])
    assert er["errors"] == cm.sum() - np.trace(cm) > 0 and er["pairs"] and er["mistakes"]
    assert all(m["true"] != m["predicted"] for m in er["mistakes"])
    # each mistake shows its post's sanitised caption and photo from posts_clean; a post kept
    # without a caption (the demo plants some) shows "" here and "(no caption)" in the email
    from ml.report.explain import short_caption

    posts = {}
    for d in DAYS:
        cols = ["id", "caption", "image_uri", "updated_at"]
        part = lake.read_partition("posts_clean", str(d), columns=cols).sort_by("updated_at")
        posts.update({(str(d), r["id"]): r for r in part.to_pylist()})  # latest snapshot wins
    for m in er["mistakes"]:
        row = posts[(m["ds"], m["post_id"])]
        assert (m["caption"], m["image_uri"]) == (short_caption(row["caption"]), row["image_uri"])
    thumbs = [m["thumbnail"] for m in er["mistakes"] if m["thumbnail"]]
    assert thumbs and set(manifest["thumbnails"]) == set(thumbs)
    # drift: the week against the four weeks before it
    assert data["drift"]["reference_window"] == ["2026-10-19", "2026-11-15"]

    # the email, as the SMTP server received it
    (raw,) = [m for m in smtp_server.wait_for(1) if b"X-Postflow-Week: 2026-W47" in m["data"]]
    assert sorted(raw["rcpt_tos"]) == ["lead@example.com", "ml-team@example.com"]
    assert raw["mail_from"] == "postflow@example.com"
    msg = email.message_from_bytes(raw["data"], policy=policy.default)
    assert msg["Subject"].startswith(("postflow weekly report 2026-W47", "[drift] postflow"))
    assert f"champion v{champion} accuracy {e['accuracy']:.3f}" in msg["Subject"]
    assert msg["To"] == "ml-team@example.com, lead@example.com"
    assert msg.get_content_type() == "multipart/alternative"
    text_part, related = msg.get_payload()
    assert text_part.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    html = html_part.get_content()
    by_cid = {p["Content-ID"].strip("<>"): p for p in images}
    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert cids and sorted(cids) == sorted(by_cid), "every inline image referenced and present"
    assert "http" not in " ".join(re.findall(r'<img[^>]*src="([^"]+)"', html))
    ext = {"image/png": "png", "image/jpeg": "jpg"}
    for cid, part in by_cid.items():
        name = cid.split(".")[0]
        assert part.get_content_type() == ("image/jpeg" if name in thumbs else "image/png")
        assert part.get_content_disposition() == "inline"
        archived = objects[f"{name}.{ext[part.get_content_type()]}"]
        assert part.get_content() == archived, "the email's image is the archived one"
        assert re.search(rf'src="cid:{re.escape(cid)}"[^>]*alt="[^"]{{20,}}"', html)
    assert len(by_cid) == len(data["charts"]) + len(thumbs)
    text = text_part.get_content()
    for number in (
        f"posts ingested / clean / quarantined: {ingested} / {clean} / {ingested - clean}",
        f"accuracy {e['accuracy']:.3f}",
        f"macro-F1 {e['macro_f1']:.3f}",
        f"n {e['n']}",
    ):
        assert number in text, number
    assert f"{ingested} / {clean} / {ingested - clean}" in html

    # the time-limited link in the email opens the archived HTML
    link = re.search(r'<a href="([^"]+)"[^>]*>Full report in the lake', html).group(1)
    link = link.replace("&amp;", "&")
    assert "X-Amz-Expires=" in link or "Expires=" in link
    with urllib.request.urlopen(link, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == objects["report.html"]

    # the email renders offline in Chromium with every image loaded
    folder = world["tmp"] / "render"
    folder.mkdir(exist_ok=True)
    for cid, part in by_cid.items():
        (folder / f"{cid}.{ext[part.get_content_type()]}").write_bytes(part.get_content())
    suffix = {cid: ext[part.get_content_type()] for cid, part in by_cid.items()}
    local = re.sub(
        r'src="cid:([^"]+)"',
        lambda m: f'src="{(folder / m[1]).as_uri()}.{suffix[m[1]]}"',
        html,
    )
    widths, shot = chromium_images(local, folder, "email")
    assert len(widths) == len(cids) and all(w > 0 for w in widths.values()), widths
    print(f"\nscreenshot of the emailed report: {shot}")

    # logged to MLflow, once per week: a re-run replaces the week's run
    from ml.report.weekly import log_report

    log_report(settings, WEEK)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs(
        [exp.experiment_id], "tags.`postflow.week` = '2026-W47'", max_results=10
    )
    assert len(runs) == 1 and runs[0].data.tags["postflow.kind"] == "weekly_report"
    assert runs[0].data.metrics == pytest.approx(report_metrics(data))
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/report.html", "report/report.json"} <= logged


@pytest.mark.integration
def test_mail_failure_keeps_the_archived_report(world, smtp_server, s3_server):
    from ml.report.mail import SmtpParams
    from ml.report.weekly import build_report, send_report
    from tests.conftest import free_port

    settings, lake = world["settings"], world["lake"]
    week = WEEK.shift(-1)  # a second week: no interference with the DAG test's archive
    built = build_report(settings, week)
    before = s3_objects(s3_server, lake, week)
    with pytest.raises(OSError):  # nothing listens: connection refused
        send_report(settings, week, SmtpParams(port=free_port(), timeout=5))
    assert s3_objects(s3_server, lake, week) == before and built["uri"].endswith(week.label)
    out = send_report(settings, week, SmtpParams(port=smtp_server.port))  # the retry
    assert out["recipients"] == ["ml-team@example.com", "lead@example.com"]
    (msg,) = report_emails(smtp_server)
    assert msg["X-Postflow-Week"] == week.label


@pytest.mark.integration
def test_empty_week_without_champion(world, smtp_server, s3_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_json())
    monkeypatch.setenv("POSTFLOW_REGISTERED_MODEL", f"never-registered-{uuid.uuid4().hex[:6]}")
    run = load_dag("weekly_report").test(logical_date=run_after(EMPTY_WEEK))
    assert str(run.state) == "success"
    data = json.loads(s3_objects(s3_server, world["lake"], EMPTY_WEEK)["report.json"])
    assert data["week"] == "2026-W40" and data["champion"] is None and data["charts"] == []
    assert data["quality"]["totals"]["ingested"] == 0
    (msg,) = report_emails(smtp_server)
    assert msg["Subject"] == "postflow weekly report 2026-W40: no champion; no data"
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    for body in (html, text):
        assert "Empty week: no posts were ingested from 2026-09-28 to 2026-10-04" in body
        assert "No champion: no model had been promoted" in body
    assert "<img" not in html
