"""Build `ml.config.Settings` inside a task: environment/file settings, then Airflow connections.

The `posts_mysql` connection, when defined, wins over POSTFLOW_MYSQL_URI, so credentials live
in Airflow's secrets backend and reach `ml` only in the task process (Airflow masks the password
in task logs).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.config import Settings
    from ml.etl import Window

log = logging.getLogger(__name__)

POSTS_MYSQL_CONN_ID = "posts_mysql"


def task_settings(mysql_conn_id: str = POSTS_MYSQL_CONN_ID) -> Settings:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from ml.config import Settings
    from ml.source import MySQLTarget

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


def window_of(context: dict[str, Any]) -> Window:
    """The run's data interval: what a scheduled run or a backfill run must read."""
    from ml.etl import Window

    start: datetime = context["data_interval_start"]
    end: datetime = context["data_interval_end"]
    return Window(start, end)
