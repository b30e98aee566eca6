"""
### retrain — features for the new days, a new model, and a champion only when it is better

Starts when `posts_etl` reconciles a day (the `posts_clean` asset; each event names its day). A
manual trigger names its days instead: `{"days": ["2026-11-20"]}`. Either way a run also embeds
every clean day that has no features yet: a backfill's events need not each start a run (at
max_active_runs Airflow defers the run and may fold or drop events), so its last run catches up.

1. `plan_retrain` — the days, their shards and the training window (`train_window_days` ending
   at the newest day it embeds).
2. `embed_posts` — one mapped task per (day, shard): `python -m ml embed --ds D --shard i/N`
   in a GPU pod (`step_runner=kubernetes`) or a local subprocess (the default here). Posts whose
   content already has features are not recomputed.
3. `merge_features` — the shards of each day become `features/ds=D`.
4. `check_source` — a sample of the window's posts re-read from MySQL: a comment count that moved
   without `updated_at` is a finding; too many and `train_model` refuses the window (its labels
   rest on `updated_at` moving).
5. `train_model` — PCA + MLP and its baselines on the window; logged to MLflow and registered
   as `post-engagement` alias `challenger`.
6. `promote_model` — challenger and champion scored on the same test split; `champion` moves
   only when the gate passes. Both scores and the decision are tags on the version.

The MLflow run of a task is one click away: the task's "MLflow run" link.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task
from postflow_airflow.assets import POSTS_CLEAN
from postflow_airflow.notify import failure_notifier
from postflow_airflow.steps import ml_step, ml_step_mapped


@dag(
    schedule=[POSTS_CLEAN],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # asset events queue up; two trainings never race for the alias
    doc_md=__doc__,
    tags=["postflow", "ml"],
    params={
        "days": Param(
            [],
            type="array",
            items={"type": "string", "format": "date"},
            description="Days (YYYY-MM-DD) to embed and train up to, for a manual run.",
        )
    },
    default_args={
        "owner": "data-ml",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "on_failure_callback": failure_notifier(),
    },
)
def retrain():
    @task
    def plan_retrain(**context) -> list[list[str]]:
        """Days from the triggering posts_clean events (or params): one item per (day, shard);
        the merge and train arguments and the window go to XCom under their own keys."""
        from postflow_airflow import retrain_plan

        from ml.config import Settings
        from ml.lake.partitions import Lake

        settings = Settings.load()
        days = retrain_plan.days_from_context(context)
        plan = retrain_plan.plan_retrain(days, settings, Lake.from_settings(settings))
        for key in ("days", "merge", "train", "window"):
            context["ti"].xcom_push(key=key, value=plan[key])
        return plan["embed"]

    plan = plan_retrain()
    embed = ml_step_mapped("embed_posts", "embed", plan)
    merge = ml_step("merge_features", "embed", plan["merge"], gpu=False)
    window = "{{{{ ti.xcom_pull(task_ids='plan_retrain', key='window')[{}] }}}}"
    window_args = ["--start", window.format(0), "--end", window.format(1)]
    check = ml_step("check_source", "check-source", window_args, gpu=False)
    train = ml_step("train_model", "train", plan["train"])
    version = ["--version", "{{ ti.xcom_pull(task_ids='train_model')['version'] }}"]
    promote = ml_step("promote_model", "promote", version + window_args, gpu=False)
    embed >> merge >> check >> train >> promote


retrain()
