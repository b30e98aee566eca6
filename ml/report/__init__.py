"""The weekly report: the lake (clean, quarantine, labels, features) and MLflow (runs, versions,
decisions) -> `reports/week=YYYY-Www/` (HTML, charts, report.json) -> an email and an MLflow run."""
