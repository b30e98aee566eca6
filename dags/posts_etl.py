"""
### posts_etl — the posts of one UTC day, validated and sanitised into the lake

Reads `[data_interval_start, data_interval_end)` on `posts.updated_at` from the `posts_mysql`
connection, writes `posts_raw/ds=D`, validates it with the Great Expectations suite in
`expectations/`, sanitises captions and photos into `posts_clean/ds=D` and quarantines every bad
row with a reason in `quarantine/ds=D`, then reconciles: every extracted row is in exactly one of
the two, or the run fails. A reconciled day updates the `posts_clean` asset, which starts
`retrain`.

Backfill from the UI (Trigger → Backfill) or `airflow backfill create --dag-id posts_etl
--from-date 2026-11-01 --to-date 2026-11-03`: each run reads its own day; re-running a day
replaces its partitions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task
from postflow_airflow.assets import POSTS_CLEAN
from postflow_airflow.notify import failure_notifier
from postflow_airflow.settings import execution_timeout


@dag(
    # Interval timetable: logical date = start of the day read, so ds= matches the UI's dates.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=3,
    doc_md=__doc__,
    tags=["postflow", "etl"],
    default_args={
        "owner": "data-ml",
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "on_failure_callback": failure_notifier(),
        "execution_timeout": execution_timeout("etl_timeout_s"),
    },
)
def posts_etl():
    @task
    def extract_posts(**context) -> dict:
        """MySQL → posts_raw/ds=D, in bounded id-range chunks."""
        from postflow_airflow.settings import task_settings, window_of

        from ml.ingest.etl import extract

        return extract(task_settings(), window_of(context))

    @task
    def validate_posts(extracted: dict, **context) -> dict:
        """Great Expectations + sanitisers → posts_clean/ds=D and quarantine/ds=D."""
        from postflow_airflow.settings import task_settings, window_of

        from ml.ingest.etl import clean

        return clean(task_settings(), window_of(context))

    @task(outlets=[POSTS_CLEAN])
    def reconcile_posts(validated: dict, **context) -> dict:
        """Fail loudly unless raw ids == clean ids + quarantined ids."""
        from postflow_airflow.settings import task_settings, window_of

        from ml.ingest.etl import reconcile

        result = reconcile(task_settings(), window_of(context))
        # retrain reads the day from the event, so a backfill's events each name their day.
        context["outlet_events"][POSTS_CLEAN].extra = {"ds": result["ds"]}
        return result

    reconcile_posts(validate_posts(extract_posts()))


posts_etl()
