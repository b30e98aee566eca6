"""`make demo`: demo posts into MySQL, then the whole pipeline through real Airflow.

1. `posts_etl` for each demo day (validated, sanitised, quarantined with reasons);
2. `retrain` over those days (embed on CPU, train, register in MLflow, promotion gate);
3. `weekly_report` for the week of the last day, mailed to a local SMTP catcher whose messages
   are saved as `.eml` files.

Everything lands under `.postflow/` (lake, photos, MLflow sqlite store and artifacts, Airflow
home with a sqlite metadata DB, outbox). The pipeline reads MySQL through a SELECT-only account
created here with a fresh random password, handed to Airflow as the `posts_mysql` connection,
as production would.

Demo defaults, each overridable by its environment variable: POSTFLOW_IMAGE_WEIGHTS=none
(ResNet50 with RANDOM weights: ImageNet weights cannot be downloaded on an offline machine; the
MLflow runs are tagged so) and POSTFLOW_LABEL_HORIZON_DAYS=2 (the label is the count 2 days after
posting: generated counts are final by then; production predicts 7 days). The table moves
forward a day before each day's
`posts_etl`, so a post whose comments grew has a snapshot per day and young counts stay out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ml.demo.posts import DEMO_LABEL_HORIZON_DAYS
from ml.lake.schema import DATASET_CLEAN, DATASET_FEATURES, DATASET_QUARANTINE
from tools.airflow_env import REPO, STATE, airflow_env, pipeline_env

READER_USER = "postflow_reader"


def _airflow_env() -> None:
    """Point Airflow at an isolated home before it is first imported (values already set win)."""
    home = STATE / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        **airflow_env(home, logging_level="WARNING"),
        # quiet, but the steps' progress lines (posts/s, ETA) still reach the terminal
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "postflow.progress=INFO",
        **pipeline_env(STATE),
        "POSTFLOW_IMAGE_WEIGHTS": "none",
        "POSTFLOW_LABEL_HORIZON_DAYS": str(DEMO_LABEL_HORIZON_DAYS),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The demo is a newcomer's first screen: third-party warnings (Airflow's and its
        # libraries' deprecations, MLflow's hints) and MLflow's artifact download bars stay off
        # it, in this process and in every step it starts. The tests keep showing warnings.
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if os.environ["PYTHONWARNINGS"] == "ignore":
        warnings.simplefilter("ignore")
        # Airflow turns its own deprecation warnings back on at import unless the interpreter
        # was given warning options (`sys.warnoptions`, as `-W` or PYTHONWARNINGS at start set).
        sys.warnoptions.append("ignore")


def reader_account(admin):
    """The local stack's SELECT-only account on posts (what the pipeline needs, nothing more):
    `postflow_reader` on the loopback hosts, with a fresh random password each time.
    Returns its MySQLTarget."""
    from ml.ingest.source import create_reader_account

    return create_reader_account(admin, READER_USER, secrets.token_urlsafe(18))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument(
        "--end",
        type=date.fromisoformat,
        default=datetime.now(UTC).date(),
        help="exclusive end day (default: today UTC, so the last day shown is yesterday)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--etl-only", action="store_true", help="stop after posts_etl (no retrain, no report)"
    )
    args = parser.parse_args(argv)
    _airflow_env()

    from ml.config import Settings
    from ml.ingest.source import MySQLTarget, SourceError, create_schema

    settings = Settings.load()
    admin = MySQLTarget.parse(settings.mysql_uri)
    print(f"postflow demo: MySQL {admin.describe()}, state in {STATE}")
    try:
        create_schema(admin)
        reader = reader_account(admin)
    except SourceError as exc:
        print(
            f"\npostflow demo: MySQL is not reachable: {exc}\n"
            "Point the demo at a server you can create a database on, e.g.\n"
            "  POSTFLOW_MYSQL_URI=mysql://root:PASS@db.example:3306/postflow make demo\n"
            "(in Airflow, the pipeline reads the `posts_mysql` connection instead).",
            file=sys.stderr,
        )
        return 2

    from ml.demo.seed import advance, generate

    t0 = time.monotonic()
    first_day = args.end - timedelta(days=args.days)
    truth = generate(
        settings, args.posts, args.days, args.end, args.seed, replace=True, as_of=first_day
    )
    print(
        f"demo data: {args.posts} posts over {args.days} days ending {args.end} "
        f"in {time.monotonic() - t0:.1f}s (bad rows planted: {len(truth.get('bad', {}))})"
    )

    print("initialising the Airflow metadata DB ...")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True
    )
    os.environ["AIRFLOW_CONN_POSTS_MYSQL"] = reader.uri()

    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(REPO / "dags"))
    if dagbag.import_errors:
        print(f"DAG import errors: {dagbag.import_errors}", file=sys.stderr)
        return 1
    dag = dagbag.dags["posts_etl"]
    days = [args.end - timedelta(days=n) for n in range(args.days, 0, -1)]
    failed = []
    for day in days:
        if day != first_day:  # the table as it stood at the end of `day`
            advance(settings, truth, day)
        # A manual run with logical date D+1 reads the complete day D (see dags/posts_etl.py).
        logical = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        print(f"posts_etl for {day} ...", flush=True)
        run = dag.test(logical_date=logical)
        if str(run.state) != "success":
            failed.append(str(day))
    rc = _summary(settings, days, failed)
    if rc or args.etl_only:
        return rc
    settings = Settings.load()
    rc = _retrain(dagbag, settings, days, truth.get("bayes_accuracy"))
    return rc or _weekly_report(dagbag, settings, days[-1])


def _retrain(dagbag, settings, days: list[date], bayes: float | None) -> int:
    from ml.lake.partitions import Lake

    if settings.image_weights == "none":
        print(
            "\n!!! retrain: ResNet50 with RANDOM weights (POSTFLOW_IMAGE_WEIGHTS=none): ImageNet "
            "weights cannot be downloaded here. Point POSTFLOW_IMAGE_WEIGHTS at a resnet50 .pth "
            "file for real image features. !!!"
        )
    print(
        f"retrain for {days[0]}..{days[-1]} (embedding on CPU takes a few minutes; progress "
        "lines with posts/s and ETA follow) ..."
    )
    t0 = time.monotonic()
    run = dagbag.dags["retrain"].test(run_conf={"days": [str(d) for d in days]})
    if str(run.state) != "success":
        print("retrain FAILED: see the task logs above", file=sys.stderr)
        return 1
    lake = Lake.from_settings(settings)
    feats = [lake.read_manifest(DATASET_FEATURES, d) or {} for d in days]
    print("=" * 78)
    print(
        f"features:    {sum(f.get('rows', 0) for f in feats)} posts embedded "
        f"({lake.uri('features')}) in {time.monotonic() - t0:.0f}s for the whole retrain"
    )
    try:
        _print_model(settings, bayes)
    except Exception as exc:  # the run succeeded; a summary must not turn it into a failure
        print(f"model:       (summary unavailable: {exc})")
    return 0


def _print_model(settings, bayes: float | None) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(settings.mlflow_uri, settings.mlflow_uri)
    name = settings.registered_model
    latest = client.get_model_version_by_alias(name, "challenger")
    try:  # the gate may refuse the first model (e.g. below its own logistic baseline)
        champion = f"champion is v{client.get_model_version_by_alias(name, 'champion').version}"
    except MlflowException:
        champion = "no champion yet"
    run = client.get_run(latest.run_id).data
    m = run.metrics
    print(f"target:      {run.params.get('target', '(not recorded)')}")
    print(
        f"model:       {name} v{latest.version} ({latest.tags.get('postflow.promotion')}: "
        f"{latest.tags.get('postflow.decision_reason')}); {champion}"
    )
    print(
        f"test macro-F1: MLP {m['mlp_test_macro_f1']:.3f} | logistic "
        f"{m['logistic_test_macro_f1']:.3f} | majority {m['majority_test_macro_f1']:.3f}"
        f"   (MLP accuracy {m['mlp_test_accuracy']:.3f})"
    )
    conf = f"{settings.promotion_confidence:.0%}"

    def interval(tag: str) -> str:
        raw = latest.tags.get(tag)
        return "-" if not raw else "[{:.3f}, {:.3f}]".format(*json.loads(raw))

    print(
        f"gate:        {conf} intervals over repost groups: challenger macro-F1 "
        f"{interval('postflow.challenger_macro_f1_ci')}, MLP - logistic "
        f"{interval('postflow.baseline_gap_ci')}; a later challenger needs its gain over the "
        f"champion above the margin {settings.promotion_margin:g} at {conf}"
    )
    if bayes:
        print(
            f"best achievable accuracy on these posts (Bayes, from the generator): {bayes:.3f}; "
            f"the MLP reaches {m['mlp_test_accuracy'] / bayes:.0%} of it"
        )
    print(f"mlflow:      {settings.mlflow_uri}  (browse it with `make up`)")


def _weekly_report(dagbag, settings, last_day: date) -> int:
    from ml.weeks import Week

    week = Week.of(datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC))
    # A manual run whose logical date is the Monday 06:00 after the week reports on that week.
    run_after = datetime.combine(week.start, datetime.min.time(), UTC) + timedelta(days=7, hours=6)
    outbox = STATE / "outbox"
    print(f"weekly_report for {week} ...", flush=True)
    with _mail_catcher(outbox) as conn_json:
        os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = conn_json
        run = dagbag.dags["weekly_report"].test(logical_date=run_after)
    if str(run.state) != "success":
        print("weekly_report FAILED: see the task logs above", file=sys.stderr)
        return 1
    mails = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)
    from ml.lake.partitions import Lake

    print("=" * 78)
    print(f"report:      {Lake.from_settings(settings).uri('reports', f'week={week}')}")
    if mails:
        print(f"email:       {mails[-1]}  (open it in any mail client)")
    return 0


class _mail_catcher:
    """A real SMTP server on loopback that saves each message it accepts as an .eml file."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def __enter__(self) -> str:
        import socket

        from aiosmtpd.controller import Controller

        self.outbox.mkdir(parents=True, exist_ok=True)
        outbox = self.outbox

        class Save:
            async def handle_DATA(self, server, session, envelope):
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                (outbox / f"{stamp}.eml").write_bytes(envelope.original_content or b"")
                return "250 saved"

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.controller = Controller(Save(), hostname="127.0.0.1", port=port)
        self.controller.start()
        extra = {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 0}
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra})

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def _summary(settings, days: list[date], failed: list[str]) -> int:
    from ml.lake.partitions import Lake

    lake = Lake.from_settings(settings)
    print("\n" + "=" * 78)
    print(f"{'day':<12}{'rows in':>9}{'clean':>8}{'quarantined':>13}  reasons")
    totals = {"rows_in": 0, "clean": 0, "quarantined": 0}
    for day in days:
        clean = lake.read_manifest(DATASET_CLEAN, day)
        quar = lake.read_manifest(DATASET_QUARANTINE, day)
        if clean is None or quar is None:
            print(f"{day!s:<12} no partitions (run failed)")
            continue
        row = {"rows_in": clean["source_rows"], "clean": clean["rows"], "quarantined": quar["rows"]}
        for k in totals:
            totals[k] += row[k]
        reasons = ", ".join(f"{k} {v}" for k, v in quar.get("reasons", {}).items()) or "-"
        print(f"{day!s:<12}{row['rows_in']:>9}{row['clean']:>8}{row['quarantined']:>13}  {reasons}")
    print(f"{'total':<12}{totals['rows_in']:>9}{totals['clean']:>8}{totals['quarantined']:>13}")
    print("=" * 78)
    print(f"lake:        {lake.uri()}  (posts_raw/, posts_clean/, quarantine/ by ds=)")
    print(f"validation:  {lake.uri(DATASET_CLEAN, 'ds=' + str(days[-1]), 'validation-*.json')}")
    print(f"airflow:     {os.environ['AIRFLOW_HOME']} (task logs under logs/)")
    print(json.dumps({"days": [str(d) for d in days], **totals, "failed_days": failed}))
    if failed:
        print(f"posts_etl FAILED for {failed}: see the task logs above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
