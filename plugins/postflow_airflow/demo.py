"""`make demo`: demo posts into MySQL, then `posts_etl` through real Airflow for a few days.

Everything lands under `.postflow/` (lake, photos, Airflow home with a sqlite metadata DB).
The pipeline reads MySQL through a SELECT-only account created here with a fresh random
password, handed to Airflow as the `posts_mysql` connection, as production would.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("POSTFLOW_STATE_DIR", REPO / ".postflow")).resolve()


def _airflow_env() -> None:
    """Point Airflow at an isolated home before it is first imported."""
    home = STATE / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "POSTFLOW_LAKE": str(STATE / "lake"),
        "POSTFLOW_IMAGE_ROOT": str(STATE / "images"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _reader_account(admin) -> object:
    """A SELECT-only account on posts (what the pipeline needs, nothing more)."""
    from ml.source import MySQLTarget

    user, password = "postflow_reader", secrets.token_urlsafe(18)
    conn = admin.connect()
    try:
        cur = conn.cursor()
        for host in ("127.0.0.1", "localhost"):
            cur.execute(
                f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY %s", (password,)
            )
            cur.execute(f"ALTER USER '{user}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT SELECT ON `{admin.database}`.`posts` TO '{user}'@'{host}'")
        conn.commit()
    finally:
        conn.close()
    return MySQLTarget(admin.host, admin.port, user, password, admin.database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument(
        "--end",
        type=date.fromisoformat,
        default=datetime.now(UTC).date(),
        help="exclusive end day (default: today UTC, so the last day shown is yesterday)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    _airflow_env()

    from ml.config import Settings
    from ml.source import MySQLTarget, SourceError, create_schema

    settings = Settings.load()
    admin = MySQLTarget.parse(settings.mysql_uri)
    print(f"postflow demo: MySQL {admin.describe()}, state in {STATE}")
    try:
        create_schema(admin)
        reader = _reader_account(admin)
    except SourceError as exc:
        print(
            f"\npostflow demo: MySQL is not reachable: {exc}\n"
            "Point the demo at a server you can create a database on, e.g.\n"
            "  POSTFLOW_MYSQL_URI=mysql://root:PASS@db.example:3306/postflow make demo\n"
            "(in Airflow, the pipeline reads the `posts_mysql` connection instead).",
            file=sys.stderr,
        )
        return 2

    from ml.demo_data import generate

    t0 = time.monotonic()
    truth = generate(
        settings, posts=args.posts, days=args.days, end=args.end, seed=args.seed, replace=True
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
        # A manual run with logical date D+1 reads the complete day D (see dags/posts_etl.py).
        logical = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        print(f"posts_etl for {day} ...", flush=True)
        run = dag.test(logical_date=logical)
        if str(run.state) != "success":
            failed.append(str(day))
    return _summary(settings, days, failed)


def _summary(settings, days: list[date], failed: list[str]) -> int:
    from ml.lake import Lake

    lake = Lake.from_settings(settings)
    print("\n" + "=" * 78)
    print(f"{'day':<12}{'rows in':>9}{'clean':>8}{'quarantined':>13}  reasons")
    totals = {"rows_in": 0, "clean": 0, "quarantined": 0}
    for day in days:
        clean = lake.read_manifest("posts_clean", day)
        quar = lake.read_manifest("quarantine", day)
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
    print(f"validation:  {lake.uri('posts_clean', 'ds=' + str(days[-1]), 'validation-*.json')}")
    print(f"airflow:     {os.environ['AIRFLOW_HOME']} (task logs under logs/)")
    print(json.dumps({"days": [str(d) for d in days], **totals, "failed_days": failed}))
    if failed:
        print(f"posts_etl FAILED for {failed}: see the task logs above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
