"""
### weekly_report — the model report of one ISO week, archived in the lake and emailed

Runs on Mondays at 06:00 UTC for the week that just ended. Each run's data interval is
`[Monday 06:00, next Monday 06:00)` UTC; the report covers the ISO week of the interval's start,
i.e. the seven daily partitions Monday to Sunday (the six hours let the week's last `posts_etl`
and `retrain` runs land). To report on a past week, backfill it (Trigger → Backfill, or `airflow
backfill create --dag-id weekly_report --from-date 2026-11-16 --to-date 2026-11-17`); re-running
a week replaces its report.

- `build_report`: label histograms, model versions over the last weeks, learning curves of the
  newest version, the champion's confusion matrix on the current test split and where it errs
  (confused bins; its most confident mistakes with photo thumbnail and caption), data quality,
  drift against the four weeks before and promotion decisions → PNG charts, JPEG thumbnails and
  HTML, archived to `<lake>/reports/week=YYYY-Www/`; returns that URI.
- `send_report`: reads the archived report back and emails it through the SMTP provider's hook
  (the `smtp_default` connection's TLS/SSL, timeout and retries) to POSTFLOW_REPORT_RECIPIENTS.
  It retries on its own: a mail failure never loses or rebuilds the report.
- `log_report`: logs the archived report to MLflow (one run per week, replaced on re-run).

Details: `ml/report/weekly.py` (`python -m ml report --week 2026-W47 --send` runs it without
Airflow).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task
from postflow_airflow.notify import failure_notifier


@dag(
    schedule=CronDataIntervalTimetable("0 6 * * 1", timezone="UTC"),
    start_date=datetime(2026, 1, 5, 6, tzinfo=UTC),  # a Monday
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["postflow", "ml", "report"],
    default_args={
        "owner": "data-ml",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "on_failure_callback": failure_notifier(),
    },
)
def weekly_report():
    @task
    def build_report(**context) -> dict:
        """Gather, draw, render and archive the week's report; returns references only."""
        from ml.config import Settings
        from ml.report.weekly import build_report
        from ml.weeks import Week

        return build_report(Settings.load(), Week.of(context["data_interval_start"]))

    @task(
        retries=6,
        retry_delay=timedelta(minutes=5),
        retry_exponential_backoff=True,
        max_retry_delay=timedelta(hours=1),
    )
    def send_report(built: dict) -> dict:
        """Email the archived report through the SMTP provider's hook and `smtp_default`."""
        from postflow_airflow.notify import send_message

        from ml.config import Settings
        from ml.report.weekly import send_report

        return send_report(Settings.load(), built["week"], send_message)

    @task
    def log_report(built: dict) -> dict:
        """Log the archived report and its headline numbers to MLflow."""
        from ml.config import Settings
        from ml.report.weekly import log_report

        return log_report(Settings.load(), built["week"])

    built = build_report()
    send_report(built)
    log_report(built)


weekly_report()
