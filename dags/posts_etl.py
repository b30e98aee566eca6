"""
### posts_etl — the posts of one UTC day, validated and sanitised into the lake

Reads `[data_interval_start, data_interval_end)` on `posts.updated_at` from the `posts_mysql`
connection, writes `posts_raw/ds=D`, validates it with the Great Expectations suite in
`expectations/` and sanitises captions and photos as mapped tasks over id ranges of the day
(`POSTFLOW_VALIDATE_SHARDS`, 0 = one per `POSTFLOW_VALIDATE_SHARD_ROWS` rows), merges the shards
into `posts_clean/ds=D` and `quarantine/ds=D` (every bad row with a reason), then reconciles:
every extracted row is in exactly one of the two, or the run fails. A failed shard retries
alone. A reconciled day updates the `posts_clean` asset, which starts `retrain`.

Backfill from the UI (Trigger → Backfill) or `airflow backfill create --dag-id posts_etl
--from-date 2026-11-01 --to-date 2026-11-03`: each run reads its own day; re-running a day
replaces its partitions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task
from postflow_airflow.assets import POSTS_CLEAN
from postflow_airflow.notify import failure_notifier
from postflow_airflow.settings import execution_timeout, task_settings, window_of


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
        from ml.ingest.etl import extract

        return extract(task_settings(), window_of(context))

    @task
    def plan_shards(extracted: dict, **context) -> list[dict]:
        """How many validate shards the day's extract needs (POSTFLOW_VALIDATE_SHARDS)."""
        from ml.ingest.shards import plan

        n = plan(task_settings(), window_of(context))["shards"]
        return [{"shard": i, "shards": n} for i in range(n)]

    @task(map_index_template="{{ task.op_kwargs['shard']['shard'] }}")
    def validate_posts(shard: dict, **context) -> dict:
        """Great Expectations + sanitisers on one id range of posts_raw → staged parts."""
        from ml.ingest.shards import validate_shard

        return validate_shard(task_settings(), window_of(context), shard["shard"], shard["shards"])

    @task
    def merge_posts(planned: list[dict], **context) -> dict:
        """The staged shards → one posts_clean/ds=D and one quarantine/ds=D manifest."""
        from ml.ingest.shards import merge

        return merge(task_settings(), window_of(context), len(planned))

    @task(outlets=[POSTS_CLEAN])
    def reconcile_posts(merged: dict, **context) -> dict:
        """Fail loudly unless raw ids == clean ids + quarantined ids."""
        from ml.ingest.etl import reconcile

        result = reconcile(task_settings(), window_of(context))
        # retrain reads the day from the event, so a backfill's events each name their day.
        context["outlet_events"][POSTS_CLEAN].extra = {"ds": result["ds"]}
        return result

    planned = plan_shards(extract_posts())
    merged = merge_posts(planned)
    validate_posts.expand(shard=planned) >> merged
    reconcile_posts(merged)


posts_etl()
