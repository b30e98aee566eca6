"""Failure notifications: every task of every DAG carries the SMTP notifier, and a DAG made to
fail (posts_etl against a MySQL port where nothing listens) emails a real SMTP server the DAG,
task, logical date, try number, error and log link."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def callbacks(task) -> list:
    cbs = task.on_failure_callback
    return list(cbs) if isinstance(cbs, list | tuple) else [cbs] if cbs else []


def test_every_task_of_every_dag_notifies_on_failure(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    monkeypatch.setenv("POSTFLOW_ALERT_RECIPIENTS", "oncall@example.com")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert {"posts_etl", "weekly_report"} <= set(bag.dags)
    for dag in bag.dags.values():
        for task in dag.tasks:
            notifiers = [c for c in callbacks(task) if isinstance(c, SmtpNotifier)]
            assert len(notifiers) == 1, f"{dag.dag_id}.{task.task_id} has no failure email"
            n = notifiers[0]
            assert n.smtp_conn_id == "smtp_default" and n.to == ["oncall@example.com"]
            for field in ("ti.dag_id", "ti.task_id", "logical_date", "ti.try_number"):
                assert field in n.html_content, field
            assert "ti.log_url" in n.html_content


@pytest.mark.integration
def test_failed_dag_emails_its_task_date_try_and_log(
    airflow_db, smtp_server, monkeypatch, tmp_path
):
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import free_port

    dead = free_port()  # nothing listens here
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_POSTS_MYSQL", f"mysql://reader:x@127.0.0.1:{dead}/posts")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    monkeypatch.setenv("POSTFLOW_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("POSTFLOW_ALERT_RECIPIENTS", "oncall@example.com, lead@example.com")
    monkeypatch.setenv("POSTFLOW_REPORT_SENDER", "postflow@example.com")

    dag = DagBag(dag_folder=str(REPO / "dags" / "posts_etl.py")).dags["posts_etl"]
    for task in dag.tasks:  # fail at once instead of after minutes of retries
        task.retries = 0
    run = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    assert str(run.state) == "failed"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["extract_posts"] == "failed"
    downstream = ["plan_shards", "validate_posts", "merge_posts", "reconcile_posts"]
    assert {states[t] for t in downstream} == {"upstream_failed"}

    (sent,) = smtp_server.wait_for(1)  # one email: only the task that ran and failed sends
    assert sent["mail_from"] == "postflow@example.com"
    assert sent["rcpt_tos"] == ["oncall@example.com", "lead@example.com"]
    msg = email.message_from_bytes(sent["data"], policy=policy.default)
    assert msg["Subject"] == (
        "[postflow] posts_etl.extract_posts failed (2026-11-21 00:00:00+00:00, try 1)"
    )
    html = msg.get_body(("html",)).get_content()
    cells = dict(re.findall(r"<tr><td>([^<]+)</td>\s*<td>(.*?)</td></tr>", html, re.S))
    assert cells["DAG"] == "<strong>posts_etl</strong>"
    assert cells["Task"] == "<strong>extract_posts</strong>"
    assert cells["Logical date"] == "2026-11-21 00:00:00+00:00"
    assert cells["Try"] == "1 of 1" and cells["Run"] == run.run_id
    assert str(dead) in cells["Error"]  # the error says which server could not be reached
    log_url = (
        "http://airflow.example:8080/dags/posts_etl/runs/"
        f"{run.run_id.replace(':', '%3A').replace('+', '%2B')}/tasks/extract_posts?try_number=1"
    )
    assert f'<a href="{log_url}">' in html
