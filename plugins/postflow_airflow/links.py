"""Operator extra link from an `ml` step's task to the MLflow run it logged.

Airflow 3 computes operator links on the worker when the task finishes (the task runner calls
`get_link` and stores the URL as an XCom under the link's `xcom_key`); the UI reads that XCom.
So the link needs no plugin registration: listing it in `operator_extra_links` is enough, and
registering it through an `AirflowPlugin` would make the API server call `get_link` itself,
where the Task SDK's XCom client is not available.

A step result (its return_value XCom) points at a run with `experiment_id` and `run_id`, at the
top level or under an `mlflow` key; `mlflow_run_id`/`mlflow_experiment_id` are accepted too.
The UI root is `Settings.mlflow_ui_url`, else an http(s) `mlflow_uri`, else the step's `run_url`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

RETURN_KEY = "return_value"


def mlflow_ui_base(mlflow_ui_url: str, mlflow_uri: str) -> str:
    """The MLflow UI root: `mlflow_ui_url`, else an http(s) tracking URI without credentials;
    "" when there is no UI to point at (a sqlite or file tracking store)."""
    url = mlflow_ui_url or mlflow_uri
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return ""
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never put user:password into a link
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_run_ids(result: Any) -> tuple[str, str] | None:
    """(experiment_id, run_id) named by a step result, or None."""
    if not isinstance(result, Mapping):
        return None
    for scope in (result.get("mlflow"), result):
        if not isinstance(scope, Mapping):
            continue
        run = scope.get("mlflow_run_id") or scope.get("run_id")
        experiment = scope.get("mlflow_experiment_id") or scope.get("experiment_id")
        if run and experiment:
            return str(experiment), str(run)
    return None


def mlflow_run_url(result: Any, mlflow_ui_url: str, mlflow_uri: str) -> str:
    ids = mlflow_run_ids(result)
    base = mlflow_ui_base(mlflow_ui_url, mlflow_uri)
    if ids is None:
        return ""
    if not base:  # the step may know a UI the Airflow side does not (its own run_url)
        url = result.get("run_url")
        parts = urlsplit(url if isinstance(url, str) else "")
        if parts.scheme not in {"http", "https"}:
            return ""
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    experiment, run = (quote(x, safe="") for x in ids)
    return f"{base}/#/experiments/{experiment}/runs/{run}"


class MLflowRunLink(BaseOperatorLink):
    """ "MLflow run": the run named by the task's return_value, in the MLflow UI."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from ml.config import Settings

        result = XCom.get_value(ti_key=ti_key, key=RETURN_KEY)
        settings = Settings.load()
        return mlflow_run_url(result, settings.mlflow_ui_url, settings.mlflow_uri)
