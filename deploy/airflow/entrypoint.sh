#!/usr/bin/env bash
# /entrypoint of postflow's `airflow` and `ml-worker` images: the contract of the official Airflow
# image, which its Helm chart and compose file rely on (written for postflow, same behaviour):
#
#   /entrypoint bash -c "exec airflow scheduler"   bash (or sh) with the arguments as given
#   /entrypoint python -Wignore -c "..."           python with the arguments as given
#   /entrypoint airflow db check-migrations ...    an Airflow command ("airflow" may be left out:
#   /entrypoint scheduler                          anything else is an `airflow` subcommand)
#
# Before any of them it waits for the metadata DB: `airflow db check` up to
# CONNECTION_CHECK_MAX_COUNT times (default 20; 0 skips the wait, as the chart's probes do),
# CONNECTION_CHECK_SLEEP_TIME seconds apart (default 3); then it fails with the last error. A
# Celery command also waits for the broker's host:port (AIRFLOW__CELERY__BROKER_URL).
set -euo pipefail

log() { echo "entrypoint: $*" >&2; }

wait_for_metadata_db() {
  local max=${CONNECTION_CHECK_MAX_COUNT:-20} pause=${CONNECTION_CHECK_SLEEP_TIME:-3} try=1 err
  ((max > 0)) || return 0
  while ! err=$(airflow db check 2>&1); do
    if ((try >= max)); then
      log "the metadata DB did not answer after ${try} tries:"
      printf '%s\n' "${err}" | tail -n 5 >&2
      exit 1
    fi
    log "waiting for the metadata DB (${try}/${max})"
    try=$((try + 1))
    sleep "${pause}"
  done
}

wait_for_broker() {
  local max=${CONNECTION_CHECK_MAX_COUNT:-20} pause=${CONNECTION_CHECK_SLEEP_TIME:-3}
  local url=${AIRFLOW__CELERY__BROKER_URL:-}
  ((max > 0)) && [[ -n ${url} ]] || return 0
  python - "${url}" "${max}" "${pause}" <<'PY'
import socket, sys, time
from urllib.parse import urlsplit

url, tries, pause = urlsplit(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
default = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}.get(url.scheme)
if not url.hostname or not (url.port or default):
    sys.exit(0)  # a broker without host:port (sqla+..., filesystem): nothing to wait for
for n in range(1, tries + 1):
    try:
        socket.create_connection((url.hostname, url.port or default), timeout=5).close()
        sys.exit(0)
    except OSError as exc:
        if n == tries:
            sys.exit(f"entrypoint: the Celery broker {url.hostname} did not answer: {exc}")
        print(f"entrypoint: waiting for the Celery broker ({n}/{tries})", file=sys.stderr)
        time.sleep(pause)
PY
}

case "${1:-}" in
  bash | sh)
    shell=$1
    shift
    wait_for_metadata_db
    exec "/bin/${shell}" "$@"
    ;;
  python | python3)
    shift
    wait_for_metadata_db
    exec python "$@"
    ;;
esac

# "airflow scheduler" and "scheduler" are the same command
if [[ ${1:-} == airflow ]]; then
  shift
fi
if (($# == 0)); then
  set -- version
fi
if [[ $1 != version ]]; then  # the one command that needs no DB
  wait_for_metadata_db
fi
if [[ $1 == celery ]]; then
  wait_for_broker
fi
exec airflow "$@"
