"""Email from postflow's DAGs: failure notifications, and the weekly report's sender.

Every DAG puts `failure_notifier()` in its `default_args` as `on_failure_callback`, so each task
that fails for good (after its last retry) sends one email through the SMTP provider's
`SmtpNotifier` and the Airflow connection `smtp_default`: DAG, task, logical date, try number,
the error and a link to the task's log. Recipients are POSTFLOW_ALERT_RECIPIENTS, else
POSTFLOW_REPORT_RECIPIENTS (comma-separated), read when the DAG file is parsed.

A task-level callback (default_args) rather than the DAG-level one: it runs in the task's own
process with the task's context (`ti`, `try_number`, `exception`), once per failed task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import EmailMessage

    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from ml.config import Settings

SMTP_CONN_ID = "smtp_default"

# Jinja, rendered by Airflow with the failed task's context.
SUBJECT = (
    "[postflow] {{ ti.dag_id }}.{{ ti.task_id }} failed"
    " ({{ logical_date if logical_date else 'no logical date' }}, try {{ ti.try_number }})"
)
HTML = """\
<html><body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222222;">
<p><strong>postflow task failed</strong> after its last retry.</p>
<table role="presentation" cellpadding="4" cellspacing="0" border="0">
<tr><td>DAG</td><td><strong>{{ ti.dag_id }}</strong></td></tr>
<tr><td>Task</td><td><strong>{{ ti.task_id }}</strong>\
{% if ti.map_index is not none and ti.map_index >= 0 %} [{{ ti.map_index }}]{% endif %}</td></tr>
<tr><td>Logical date</td>\
<td>{{ logical_date if logical_date else 'none (asset-triggered or manual run)' }}</td></tr>
<tr><td>Run</td><td>{{ ti.run_id }}</td></tr>
<tr><td>Try</td><td>{{ ti.try_number }} of {{ ti.max_tries + 1 }}</td></tr>
<tr><td>Host</td><td>{{ ti.hostname }}</td></tr>
<tr><td>Error</td><td><code>{{ exception | default('', true) | string | e }}</code></td></tr>
<tr><td>Log</td><td><a href="{{ ti.log_url }}">{{ ti.log_url }}</a></td></tr>
</table>
</body></html>
"""


def alert_recipients(settings: Settings | None = None) -> list[str]:
    from ml.config import Settings, addresses

    settings = settings or Settings.load()
    return addresses(settings.alert_recipients or settings.report_recipients)


def failure_notifier(to: list[str] | None = None, smtp_conn_id: str = SMTP_CONN_ID) -> SmtpNotifier:
    """The `on_failure_callback` of postflow's tasks (see the module docstring)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from ml.config import Settings

    settings = Settings.load()
    return SmtpNotifier(
        to=to if to is not None else alert_recipients(settings),
        from_email=settings.report_sender,
        smtp_conn_id=smtp_conn_id,
        subject=SUBJECT,
        html_content=HTML,
    )


def send_message(msg: EmailMessage, conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Send a built message (the weekly report) through the SMTP provider's hook, so that the
    connection's settings apply as they do to every Airflow email: SSL unless `disable_ssl`,
    else STARTTLS unless `disable_tls`, `timeout`, login, and `retry_limit` tries to connect and
    to send. Raises on failure, for the task to retry."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from ml.config import addresses

    sender, to = msg["From"], addresses(msg["To"])
    with SmtpHook(smtp_conn_id=conn_id) as hook:  # connects and logs in (get_conn)
        # The hook sends only messages it builds itself (attachments, no inline parts), so the
        # report goes through its logged-in client, with the hook's own retry rule.
        client = hook._smtp_client
        for attempt in range(hook.smtp_retry_limit + 1):
            try:
                refused = client.send_message(msg, from_addr=sender, to_addrs=to)
                break
            except Exception:
                if attempt == hook.smtp_retry_limit:
                    raise
    return {
        "message_id": msg["Message-ID"],
        "recipients": [a for a in to if a not in refused],
        "refused": {a: str(v) for a, v in refused.items()},
        "subject": msg["Subject"],
    }
