#!/usr/bin/env bash
# Airflow one-shot: migrate the metadata DB, then write SimpleAuthManager's password file (a
# volume shared with the API server) from .env. Connections need no step: posts_mysql and
# smtp_default are AIRFLOW_CONN_* environment variables of every Airflow service.
set -euo pipefail
airflow db migrate
python - <<'PY'
import json
import os

users = [u.split(":")[0] for u in os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
passwords = {u: os.environ[f"AIRFLOW_{u.upper()}_PASSWORD"] for u in users}
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    fh.write(json.dumps(passwords) + "\n")
print(f"airflow-init: passwords of {', '.join(users)} in {path}")
PY
