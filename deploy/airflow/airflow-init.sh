#!/usr/bin/env bash
# Airflow one-shot, in the image as /opt/postflow/airflow-init.sh (compose's airflow-init, the
# Helm chart's migration job): migrate the metadata DB (Airflow's tables, then the FAB auth
# manager's), then the FAB users `admin` (role Admin) and `viewer` (role Viewer, read-only) with
# the passwords AIRFLOW_ADMIN_PASSWORD / AIRFLOW_VIEWER_PASSWORD (.env, or a Secret); a second
# run resets those passwords. Connections need no step: posts_mysql and smtp_default are
# AIRFLOW_CONN_* environment variables of every Airflow service.
set -euo pipefail
airflow db migrate
airflow fab-db migrate
user() {  # NAME ROLE PASSWORD
  if airflow users list --output plain | awk '{print $2}' | grep -qx "$1"; then
    airflow users reset-password --username "$1" --password "$3"
  else
    airflow users create --username "$1" --role "$2" --password "$3" \
      --firstname "$1" --lastname postflow --email "$1@postflow.invalid"
  fi
}
user admin Admin "$AIRFLOW_ADMIN_PASSWORD"
user viewer Viewer "$AIRFLOW_VIEWER_PASSWORD"
echo "airflow-init: metadata DB migrated; FAB users admin, viewer"
