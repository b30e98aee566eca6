"""Build `ml.config.Settings` inside a task: environment/file settings, then Airflow connections.

The `posts_mysql` connection, when defined, wins over POSTFLOW_MYSQL_URI, so credentials live
in Airflow's secrets backend and reach `ml` only in the task process (Airflow masks the password
in task logs).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.config import Settings
    from ml.ingest.etl import Window

log = logging.getLogger(__name__)

POSTS_MYSQL_CONN_ID = "posts_mysql"
# Settings that may carry credentials: never an env literal in a pod spec (they come from the
# Secret there), masked by Airflow in the local task's log.
SECRET_SETTINGS = frozenset({"mysql_uri", "mlflow_uri"})
# Settings of the Airflow side only (a pod launches no pods), by env prefix.
RUNNER_ENV_PREFIXES = ("POSTFLOW_STEP_RUNNER", "POSTFLOW_K8S_", "POSTFLOW_ML_QUEUE")


def task_settings(mysql_conn_id: str = POSTS_MYSQL_CONN_ID) -> Settings:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from ml.config import Settings
    from ml.ingest.source import MySQLTarget

    settings = Settings.load()
    try:
        from airflow.providers.mysql.hooks.mysql import MySqlHook

        conn = MySqlHook.get_connection(mysql_conn_id)
    except AirflowNotFoundException:
        log.info("no Airflow connection %r: using POSTFLOW_MYSQL_URI", mysql_conn_id)
        return settings
    target = MySQLTarget.from_airflow_connection(conn)
    log.info("source from Airflow connection %r: %s", mysql_conn_id, target.describe())
    return settings.replace(mysql_uri=target.uri())


def execution_timeout(setting: str) -> timedelta | None:
    """A task's `execution_timeout` from a `*_timeout_s` setting (0: none), read when the DAG file
    is parsed: a hung task fails and frees its worker slot instead of holding it for good."""
    from ml.config import Settings

    seconds = int(getattr(Settings.load(), setting))
    return timedelta(seconds=seconds) if seconds > 0 else None


def window_of(context: dict[str, Any]) -> Window:
    """The run's data interval: what a scheduled run or a backfill run must read."""
    from ml.ingest.etl import Window

    start: datetime = context["data_interval_start"]
    end: datetime = context["data_interval_end"]
    return Window(start, end)


def settings_env(settings: Settings, *, secrets: bool = True) -> dict[str, str]:
    """Settings as `POSTFLOW_*` variables that `Settings.load()` reads back to equal values
    (all but `extra`, which has no variable)."""
    from ml.config import ENV_PREFIX

    env = {}
    for f in dataclasses.fields(settings):
        if f.name == "extra" or (not secrets and f.name in SECRET_SETTINGS):
            continue
        value = getattr(settings, f.name)
        if value is None:
            value = ""
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[ENV_PREFIX + f.name.upper()] = str(value)
    return env
