"""`make stack-test`: the compose stack built, started and driven as a user would, on a machine
that can pull no image.

    python -m tools.stack_test [--keep-up] [--posts N]

1. Machine: installs Debian's docker.io, docker-compose and debootstrap when missing; starts
   `dockerd` (overlay2, MTU 1400) unless one answers already, and at the end stops it by its PID,
   deletes the nft tables and the network links (`docker0`) it added and puts `ip_forward` back.
   The stack's containers, network and volumes go with `down -v`; built images stay (the next
   run's cache).
2. Images: a Debian bookworm base from debootstrap (rootfs cached under .postflow/stack/), a
   wheelhouse from requirements/constraints.txt (`pip wheel`, cached there too) served to the
   builds over loopback, then the Dockerfile's targets with nothing changed but build args
   (PYTHON_BASE, pip's PIP_NO_INDEX/PIP_FIND_LINKS, RESNET50_WEIGHTS=none: no ImageNet weights
   can be fetched here), and deploy/stack-test/'s stand-ins for the third-party images.
3. The stack: docker-compose.yaml + deploy/stack-test/compose.override.yaml, a generated .env
   (random secrets, free loopback ports), `up -d`, every service healthy and one-shots done.
4. As a user, through published loopback ports only: log in to the Airflow REST API, backfill
   posts_etl for the three seeded days, wait for retrain (asset-triggered) to run its ML steps on
   the ML worker and register a champion in MLflow (basic auth), trigger weekly_report and read
   its email back from the mail catcher (inline charts, a presigned link that resolves), list the
   lake's partitions in S3. Then `down -v`. A failure prints the failing service's logs.

Figures (build times, time to healthy, end-to-end time, image sizes) are printed and written to
figures.json in the state folder, .postflow/stack/ (POSTFLOW_STACK_DIR moves it).
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from tools.up import api, get_token

REPO = Path(__file__).resolve().parents[1]
# the cache (rootfs, wheelhouse), build logs, the generated .env and figures
STATE = Path(os.environ.get("POSTFLOW_STACK_DIR", REPO / ".postflow" / "stack")).resolve()
DOCKER = "/usr/bin/docker"  # Debian's client: the first `docker` on PATH may lack BuildKit
PROJECT = "postflow-stacktest"
VERSION = "stacktest"
MIRROR = "http://deb.debian.org/debian"
BASE_IMAGE = "postflow-base:bookworm"
BASE_PACKAGES = "python3.11,python3.11-venv,python3-venv,python3-pip,python3,libmariadb3,libgomp1"
BASE_PACKAGES += ",ca-certificates"
TARGETS = ("airflow", "ml-worker", "mlflow")
STAND_INS = ("postgres", "mysql", "redis", "s3", "mailpit")
ONE_SHOTS = {"airflow-init", "mysql-seed", "s3-init"}
COMPOSE_FILES = ("docker-compose.yaml", "deploy/stack-test/compose.override.yaml")


class StackFailure(RuntimeError):
    """The stack did not do what a user expects; `services` are the ones whose logs tell why."""

    def __init__(self, message: str, services: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.services = services


def log(msg: str) -> None:
    print(f"[stack-test {datetime.now():%H:%M:%S}] {msg}", flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


def out(cmd: list[str]) -> str:
    return run(cmd, capture_output=True, text=True).stdout


@contextmanager
def timed(figures: dict, name: str):
    start = time.monotonic()
    yield
    figures[name] = round(time.monotonic() - start, 1)
    log(f"{name}: {figures[name]} s")


# -- the machine --------------------------------------------------------------------------------


def install_packages() -> None:
    missing = [
        p
        for p in ("docker.io", "docker-compose", "debootstrap")
        if run(["dpkg", "-s", p], capture_output=True, check=False).returncode != 0
    ]
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL)


def nft_tables() -> set[str]:
    text = run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in text.splitlines() if line.startswith("table ")}


@contextmanager
def docker_daemon(keep: bool = False):
    """A Docker engine for the run: the one that answers, else a `dockerd` of ours, stopped by
    its PID afterwards with the nft tables it added deleted and ip_forward as it was (`keep`:
    left running, for a stack kept up; the next run uses it)."""
    if run([DOCKER, "info"], capture_output=True, check=False).returncode == 0:
        log("using the Docker engine that is already running (left running)")
        yield
        return
    tables, forward = nft_tables(), Path("/proc/sys/net/ipv4/ip_forward").read_text()
    links = net_links()
    STATE.mkdir(parents=True, exist_ok=True)
    logfile = (STATE / "dockerd.log").open("ab")
    proc = subprocess.Popen(
        ["dockerd", "--storage-driver=overlay2", "--mtu", "1400"],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            if run([DOCKER, "info"], capture_output=True, check=False).returncode == 0:
                break
            if proc.poll() is not None:
                raise StackFailure(
                    f"dockerd exited with {proc.returncode}: {STATE / 'dockerd.log'}"
                )
            time.sleep(0.5)
        log(f"dockerd started (pid {proc.pid})")
        yield
    finally:
        if keep:
            log(f"dockerd left running (pid {proc.pid}): kill {proc.pid} stops it")
        else:
            stop_dockerd(proc, tables, forward, links)


def net_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def stop_dockerd(proc: subprocess.Popen, tables: set[str], forward: str, links: set[str]) -> None:
    """Stop it, then undo what it did to the host: nft tables, `ip_forward`, and the bridge
    `docker0` (and any `br-*`) that dockerd leaves behind when it exits."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for table in sorted(nft_tables() - tables):
        run(["nft", "delete", *table.split()])  # "table ip nat"
    for link in sorted(net_links() - links):
        run(["ip", "link", "delete", link], check=False)  # a veth may go with its bridge
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    left = sorted(nft_tables() - tables) + sorted(net_links() - links)
    if left:
        raise StackFailure(f"what dockerd added to the host is still there: {left}")
    log(f"dockerd stopped; nft tables, network links, ip_forward ({forward.strip()}) as before")


@contextmanager
def wheelhouse_server(figures: dict):
    """The lock's wheels (cached) over http on loopback, for `pip install --no-index`."""
    house = STATE / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    reqs = out([sys.executable, "requirements/extras.py", "airflow", "ml", "mlflow-server"]).split()
    reqs += ["moto[server]", "aiosmtpd", "boto3"]  # the stand-ins
    # Debian's Python is 3.11.2: redis needs async-timeout there (python_full_version < 3.11.3),
    # which a newer host Python resolves without
    reqs += ["async-timeout"]
    lock = (REPO / "requirements/constraints.txt").read_bytes()
    stamp = hashlib.sha256(lock + "\n".join(reqs).encode()).hexdigest()
    if (house / ".stamp").exists() and (house / ".stamp").read_text() == stamp:
        log(f"wheelhouse cached ({len(list(house.glob('*.whl')))} wheels)")
    else:
        with timed(figures, "wheelhouse_s"):
            pip = [sys.executable, "-m", "pip", "wheel", "-q", "-c", "requirements/constraints.txt"]
            with (STATE / "wheelhouse.log").open("w") as fh:
                run([*pip, "-w", str(house), *reqs], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        (house / ".stamp").write_text(stamp)
    # a fixed address: PIP_FIND_LINKS is a build arg, part of the install layers' cache key
    port = int(os.environ.get("POSTFLOW_WHEELHOUSE_PORT", "18765"))
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=house,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{port}/"), 30, "the wheelhouse server")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait()


def base_image(figures: dict) -> None:
    """postflow-base:bookworm: debootstrap (rootfs cached) then `docker import`."""
    if run([DOCKER, "image", "inspect", BASE_IMAGE], capture_output=True, check=False).returncode:
        rootfs = STATE / "rootfs"
        stamp = f"{MIRROR} {BASE_PACKAGES}"
        if not (rootfs / ".postflow-stamp").exists() or (
            (rootfs / ".postflow-stamp").read_text() != stamp
        ):
            shutil.rmtree(rootfs, ignore_errors=True)
            with timed(figures, "debootstrap_s"):
                run(
                    ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}"]
                    + ["bookworm", str(rootfs), MIRROR],
                    stdout=subprocess.DEVNULL,
                )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (rootfs / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            (rootfs / ".postflow-stamp").write_text(stamp)
        with timed(figures, "import_base_s"):
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            run([DOCKER, "import", "-", BASE_IMAGE], stdin=tar.stdout, stdout=subprocess.DEVNULL)
            tar.wait()


def build_images(figures: dict, wheels: str) -> None:
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    common = ["--network", "host", "--build-arg", f"PYTHON_BASE={BASE_IMAGE}"]
    common += ["--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"PIP_FIND_LINKS={wheels}"]
    jobs = [(t, f"postflow-{t}:{VERSION}", ".", t) for t in TARGETS]
    jobs += [(t, f"postflow-stacktest-{t}:{VERSION}", "deploy/stack-test", t) for t in STAND_INS]
    for name, tag, context, target in jobs:
        extra = ["--build-arg", "RESNET50_WEIGHTS=none"] if name == "ml-worker" else []
        logfile = STATE / f"build-{name}.log"
        with timed(figures, f"build_{name}_s"), logfile.open("w") as fh:
            done = run(
                [DOCKER, "build", "--progress", "plain", *common, *extra]
                + ["--target", target, "-t", tag, context],
                cwd=REPO,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode:
            print(logfile.read_text()[-6000:], file=sys.stderr)
            raise StackFailure(f"docker build --target {target} failed (log: {logfile})")
        size = json.loads(out([DOCKER, "image", "inspect", tag]))[0]["Size"]
        figures[f"size_{name}_mb"] = round(size / 1e6)
    # the images these tags held before: nothing refers to them any more
    run([DOCKER, "image", "prune", "-f"], stdout=subprocess.DEVNULL)


# -- the stack ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_env(posts: int) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = re.split(r"\s+#", value, maxsplit=1)[0].strip()
    for key, value in env.items():
        if value == "change-me":
            env[key] = secrets.token_hex(16)
    ports = {k: free_port() for k in ("AIRFLOW_PORT", "MLFLOW_PORT", "MAILPIT_PORT", "S3_PORT")}
    env |= {k: str(v) for k, v in ports.items()}
    env |= {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "POSTFLOW_VERSION": VERSION,
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_BASE_URL": f"http://127.0.0.1:{ports['AIRFLOW_PORT']}",
        "S3_PUBLIC_ENDPOINT": f"http://127.0.0.1:{ports['S3_PORT']}",
        "DEMO_POSTS": str(posts),
    }
    path = STATE / "stack.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{k}={v}\n" for k, v in env.items())
    return env


def compose_cmd(*args: str) -> list[str]:
    cmd = ["docker-compose", "-p", PROJECT, "--env-file", str(STATE / "stack.env")]
    for f in COMPOSE_FILES:
        cmd += ["-f", f]
    return [*cmd, *args]


def compose(*args: str, check: bool = True, capture: bool = False) -> str:
    done = run(compose_cmd(*args), cwd=REPO, check=check, capture_output=capture, text=True)
    return done.stdout if capture else ""


def containers() -> dict[str, dict]:
    ids = compose("ps", "-a", "-q", capture=True).split()
    if not ids:
        return {}
    out_ = {}
    for c in json.loads(subprocess.check_output([DOCKER, "inspect", *ids])):
        service = c["Config"]["Labels"].get("com.docker.compose.service", c["Name"])
        out_[service] = c
    return out_


def wait_healthy(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states, bad, pending = containers(), [], []
        for name, c in states.items():
            st = c["State"]
            health = (st.get("Health") or {}).get("Status")
            if name in ONE_SHOTS:
                if st["Status"] == "exited" and st["ExitCode"] != 0:
                    bad.append(name)
                elif st["Status"] != "exited":
                    pending.append(name)
            elif st["Status"] in {"exited", "dead"} or health == "unhealthy":
                bad.append(name)
            elif health is None and st["Status"] == "running":
                pass  # no health check (s3: s3-init waits for it over S3)
            elif health != "healthy":
                pending.append(name)
        if bad:
            raise StackFailure(f"services failed: {bad}", tuple(bad))
        if states and not pending:
            return
        if time.monotonic() > deadline:
            raise StackFailure(f"not healthy after {timeout_s:.0f} s: {pending}", tuple(pending))
        time.sleep(5)


def print_logs(services: tuple[str, ...]) -> None:
    for service in services or ("airflow-scheduler", "airflow-worker", "airflow-ml-worker"):
        print(f"\n===== logs of {service} (last 150 lines) =====", file=sys.stderr, flush=True)
        compose("logs", "--no-color", "--tail", "150", service, check=False)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout_s: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackFailure(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every)


# -- the Helm chart's command forms -------------------------------------------------------------

# What the official chart's templates run in the `airflow` image, exactly (chart/templates/
# _helpers.yaml and the workers' defaults): exec probes inside the running containers, and the
# init container and component forms through the image's entrypoint.
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
CHART_PROBES = {
    "airflow-scheduler": "CONNECTION_CHECK_MAX_COUNT=0 AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR exec "
    "/entrypoint \\\nairflow jobs check --job-type SchedulerJob --local\n",
    "airflow-triggerer": "CONNECTION_CHECK_MAX_COUNT=0 AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR exec "
    "/entrypoint \\\nairflow jobs check --job-type TriggererJob --local\n",
    "airflow-dag-processor": "CONNECTION_CHECK_MAX_COUNT=0 AIRFLOW__LOGGING__LOGGING_LEVEL=ERROR "
    "exec /entrypoint \\\nairflow jobs check --local --job-type DagProcessorJob\n",
    "airflow-worker": "CONNECTION_CHECK_MAX_COUNT=0 exec /entrypoint python -m celery --app "
    f"{CELERY_APP} inspect ping -d celery@$(hostname)",
    "airflow-ml-worker": "CONNECTION_CHECK_MAX_COUNT=0 exec /entrypoint python -m celery --app "
    f"{CELERY_APP} inspect ping -d celery@$(hostname)",
}
CHART_RUNS = [
    # the wait-for-airflow-migrations init container of every component
    ("airflow-scheduler", ["airflow", "db", "check-migrations", "--migration-wait-timeout=60"]),
    # a component's args (here with a command that exits)
    ("airflow-ml-worker", ["bash", "-c", "exec airflow version"]),
    ("airflow-worker", ["python", "-Wignore", "-c", "import airflow, sys; sys.exit(0)"]),
]


def check_chart_forms() -> None:
    """The images under the chart's commands and probes, against this stack's DB and broker."""
    for service, probe in CHART_PROBES.items():
        done = run(
            compose_cmd("exec", "-T", service, "sh", "-c", probe),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise StackFailure(f"chart probe of {service} failed: {done.stdout}{done.stderr}")
    for service, args in CHART_RUNS:
        done = run(
            compose_cmd("run", "--rm", "--no-deps", "-T", service, *args),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise StackFailure(f"chart form {args} in {service}: {done.stdout}{done.stderr}")
    log(f"chart forms: {len(CHART_PROBES)} probes and {len(CHART_RUNS)} commands pass")


# -- the user's path ----------------------------------------------------------------------------


class Airflow:
    """The Airflow REST API on its published port, logged in as the FAB admin."""

    def __init__(self, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['AIRFLOW_PORT']}"
        self.token = get_token(self.base, "admin", env["AIRFLOW_ADMIN_PASSWORD"])

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        status, data = api(self.base, self.token, method, path, body)
        if status not in ok:
            raise StackFailure(f"{method} {path}: {status} {str(data)[:500]}")
        return data

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def queued_events(self, dag_id: str) -> int:
        """Asset events waiting for a run of `dag_id` (not yet a run: at max_active_runs the
        scheduler defers creating it)."""
        return self.call("GET", f"/api/v2/dags/{dag_id}/assets/queuedEvents")["total_entries"]

    def wait_runs(
        self, dag_id: str, n: int, timeout_s: float, *, drain_events: bool = False
    ) -> list[dict]:
        """At least `n` runs, all finished (`drain_events`: and no asset event still waiting to
        start one); fails (with the failed tasks' logs) on a failed one."""

        def finished() -> list[dict] | None:
            runs = self.runs(dag_id)
            failed = [r for r in runs if r["state"] == "failed"]
            if failed:
                self.print_failed_tasks(dag_id, failed[0]["dag_run_id"])
                raise StackFailure(f"{dag_id} run {failed[0]['dag_run_id']} failed")
            if len(runs) >= n and all(r["state"] == "success" for r in runs):
                if not drain_events or self.queued_events(dag_id) == 0:
                    return runs
            return None

        return wait_for(finished, timeout_s, f"{n} successful {dag_id} run(s)", every=10)

    def tasks(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200"
        return self.call("GET", path)["task_instances"]

    def print_failed_tasks(self, dag_id: str, run_id: str) -> None:
        for ti in self.tasks(dag_id, run_id):
            if ti["state"] not in {"failed", "upstream_failed"}:
                continue
            path = (
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
                f"/logs/{max(ti['try_number'], 1)}?map_index={ti['map_index']}&full_content=true"
            )
            status, body = api(self.base, self.token, "GET", path)
            text = json.dumps(body)[-4000:] if status == 200 else f"{status}"
            print(
                f"\n===== {dag_id}.{ti['task_id']} ({ti['state']}) =====\n{text}", file=sys.stderr
            )


def drive(env: dict[str, str], figures: dict) -> None:
    af = Airflow(env)
    log("logged in to the Airflow REST API as admin (FAB)")
    for dag_id in ("posts_etl", "retrain", "weekly_report"):
        wait_for(
            lambda d=dag_id: api(af.base, af.token, "GET", f"/api/v2/dags/{d}")[0] == 200,
            300,
            f"the DAG {dag_id} to be parsed",
        )
        if dag_id != "weekly_report":  # unpaused once its week's run exists (below)
            af.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    # the seed's demo posts were updated on the three days before today (UTC); a backfill's
    # range is of logical dates, inclusive, and a posts_etl run's logical date is the day it reads
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=k) for k in (3, 2, 1)]
    body = {
        "dag_id": "posts_etl",
        "from_date": f"{days[0]}T00:00:00Z",
        "to_date": f"{days[-1]}T00:00:00Z",
        "reprocess_behavior": "none",
        "max_active_runs": 3,
    }
    with timed(figures, "backfill_posts_etl_s"):
        af.call("POST", "/api/v2/backfills", body)
        runs = af.wait_runs("posts_etl", 3, 1800)
    read = sorted(r["data_interval_start"][:10] for r in runs)
    if read != [str(d) for d in days]:
        raise StackFailure(f"the backfill read the days {read}, not {days}")
    log("posts_etl backfilled for " + ", ".join(map(str, days)))
    check_lake(env, days)  # nothing lost, before anything reads the days

    # every posts_clean event of the backfill starts a retrain run or waits for one (retrain has
    # max_active_runs=1): done when the runs succeeded and no event is left
    with timed(figures, "retrain_s"):
        runs = af.wait_runs("retrain", 1, 3600, drain_events=True)
    log(f"retrain: {len(runs)} run(s) for the backfill's {len(days)} posts_clean events")
    ml_host = containers()["airflow-ml-worker"]["Config"]["Hostname"]
    for ti in af.tasks("retrain", runs[-1]["dag_run_id"]):
        if ti["task_id"] in {"embed_posts", "train_model"}:
            if (ti["queue"], ti["hostname"]) != ("ml", ml_host):
                raise StackFailure(f"{ti['task_id']} ran on {ti['hostname']} ({ti['queue']})")
    champion = mlflow_champion(env)
    log(f"retrain ran on the ML worker; champion: version {champion['version']}")

    week_start = monday(days[-1])
    trigger = {
        "logical_date": f"{week_start}T06:00:00Z",
        "data_interval_start": f"{week_start}T06:00:00Z",
        "data_interval_end": f"{week_start + timedelta(days=7)}T06:00:00Z",
        "conf": {},
    }
    with timed(figures, "weekly_report_s"):
        # The week's run is created while the DAG is still paused, then the DAG is unpaused. On a
        # Monday after 06:00 UTC this week is the interval the scheduler would create on unpause
        # (catchup=False): unpaused first, it made that run itself, at once and before any data,
        # and this POST failed with 409 (same logical date). Now the scheduler finds the run and
        # skips it. Other days it also creates last week's run, which must succeed too.
        af.call("POST", "/api/v2/dags/weekly_report/dagRuns", trigger)
        af.call("PATCH", "/api/v2/dags/weekly_report", {"is_paused": False})
        af.wait_runs("weekly_report", 1, 1200)
    check_report_email(env, week_start)
    check_lake(env, days, ("features",))


def monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def mlflow_champion(env: dict[str, str]) -> dict:
    url = f"http://127.0.0.1:{env['MLFLOW_PORT']}/api/2.0/mlflow/registered-models/alias"
    url += "?name=post-engagement&alias=champion"
    auth = f"{env['MLFLOW_ADMIN_USERNAME']}:{env['MLFLOW_ADMIN_PASSWORD']}".encode()
    req = urllib.request.Request(url, headers={"Authorization": b"Basic " + base64.b64encode(auth)})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["model_version"]
    except urllib.error.HTTPError as exc:
        raise StackFailure(f"no champion in MLflow: {exc.code} {exc.read()[:300]!r}") from exc


def check_report_email(env: dict[str, str], week_start: date) -> None:
    """The report's email, read back from the mail catcher: every `cid:` image of the HTML is an
    inline image part (PNG charts, JPEG thumbnails), and the presigned link opens the archived
    report."""
    base = f"http://127.0.0.1:{env['MAILPIT_PORT']}"
    week = f"{week_start.isocalendar().year}-W{week_start.isocalendar().week:02d}"

    def find() -> str | None:
        with urllib.request.urlopen(base + "/api/v1/messages", timeout=10) as resp:
            msgs = json.load(resp)["messages"]
        found = [m for m in msgs if f"weekly report {week}" in m["Subject"]]
        return found[0] if found else None

    summary = wait_for(find, 120, f"the report email of {week}")
    msg_id = summary["ID"]
    # the stand-in records whether the sender logged in: smtp_default's login was used
    if summary.get("Authenticated") is False:
        raise StackFailure("report email: sent without the SMTP login of smtp_default")
    with urllib.request.urlopen(f"{base}/api/v1/message/{msg_id}/raw", timeout=10) as resp:
        msg = email.message_from_bytes(resp.read(), policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    inline = {
        p["Content-ID"].strip("<>")
        for p in msg.walk()
        if p.get_content_maintype() == "image" and p["Content-ID"]
    }
    cids = set(re.findall(r'src="cid:([^"]+)"', html))
    if not cids or not cids <= inline:
        raise StackFailure(f"report email: cid images {sorted(cids)} vs inline {sorted(inline)}")
    charts = {c.split(".", 1)[0] for c in cids}
    missing = {"label_histogram", "model_history", "confusion_matrix", "data_quality"} - charts
    if missing or "no champion" in msg["Subject"]:
        raise StackFailure(f"report email {msg['Subject']!r} lacks the charts {sorted(missing)}")
    links = re.findall(r'href="(' + re.escape(env["S3_PUBLIC_ENDPOINT"]) + r'[^"]+)"', html)
    if not links:
        raise StackFailure("report email: no link signed for POSTFLOW_S3_PUBLIC_ENDPOINT")
    link = links[0].replace("&amp;", "&")
    with urllib.request.urlopen(link, timeout=30) as resp:
        page = resp.read().decode("utf-8", "replace")
    if resp.status != 200 or "<html" not in page.lower():
        raise StackFailure(f"report link {link[:120]}...: {resp.status}")
    shown = ", ".join(sorted(c for c in charts if not c.startswith("post_")))
    log(f"report email {msg['Subject']!r}: {len(cids)} inline images ({shown}), link opens")


def mysql_counts(env: dict[str, str], days: list[date]) -> dict[str, int]:
    """Posts per day of `updated_at` in the source, read with the `mysql` client of the MySQL
    image (its documented use: `docker exec ... mysql`), as root: what each day's extract had
    to return."""
    sql = "".join(
        f"SELECT '{d}', COUNT(*) FROM posts WHERE updated_at >= '{d}' "
        f"AND updated_at < '{d + timedelta(days=1)}';"
        for d in days
    )
    text = compose(
        "exec", "-T", "-e", f"MYSQL_PWD={env['MYSQL_ROOT_PASSWORD']}", "mysql",
        "mysql", "-uroot", "-N", "-B", "-e", sql, env["MYSQL_DATABASE"],
        capture=True,
    )  # fmt: skip
    counts = dict(line.split("\t") for line in text.strip().splitlines())
    return {day: int(n) for day, n in counts.items()}


ETL_DATASETS = ("posts_raw", "posts_clean", "quarantine")


def check_lake(
    env: dict[str, str], days: list[date], datasets: tuple[str, ...] = ETL_DATASETS
) -> None:
    """Each day's partitions of `datasets` are in the bucket; for posts_etl's, nothing was lost
    on the way: posts_raw holds as many rows as MySQL has posts updated that day, and each of them
    is in posts_clean or in quarantine (the manifests' row counts)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{env['S3_PORT']}",
        region_name="us-east-1",
        aws_access_key_id=env["POSTFLOW_S3_ACCESS_KEY"],
        aws_secret_access_key=env["POSTFLOW_S3_SECRET_KEY"],
    )
    bucket = env["LAKE_BUCKET"]
    missing, rows = [], {}
    for dataset in datasets:
        for d in days:
            key = f"lake/{dataset}/ds={d}/_manifest.json"
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.ClientError:
                missing.append(key)
                continue
            rows[dataset, str(d)] = int(json.loads(body)["rows"])
    if missing:
        raise StackFailure(f"lake partitions missing in s3://{bucket}: {missing}")
    if datasets != ETL_DATASETS:
        log(f"lake partitions {', '.join(datasets)} for {len(days)} days are in s3://{bucket}")
        return
    source = mysql_counts(env, days)
    lost = {
        day: {"mysql": n, "raw": rows["posts_raw", day], "clean": rows["posts_clean", day],
              "quarantine": rows["quarantine", day]}
        for day, n in source.items()
        if not n == rows["posts_raw", day] == rows["posts_clean", day] + rows["quarantine", day]
    }  # fmt: skip
    if lost or sorted(source) != [str(d) for d in days] or not all(source.values()):
        raise StackFailure(f"lake rows do not add up to MySQL's posts per day: {lost or source}")
    counts = ", ".join(
        f"{day} {n} = {rows['posts_clean', day]} clean + {rows['quarantine', day]} quarantined"
        for day, n in source.items()
    )
    log(f"lake partitions for {len(days)} days are in s3://{bucket}; MySQL vs lake: {counts}")


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.stack_test", description=__doc__)
    p.add_argument("--posts", type=int, default=1200, help="demo posts the seed generates")
    p.add_argument("--keep-up", action="store_true", help="leave the stack running at the end")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("stack-test needs root (apt-get, dockerd)", file=sys.stderr)
        return 2
    STATE.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    start = time.monotonic()
    rc = 0
    install_packages()
    # dockerd's start and its stop (with its check that the host is as before) fail the run too
    try:
        with ExitStack() as stack:
            stack.enter_context(docker_daemon(keep=args.keep_up))
            base_image(figures)
            wheels = stack.enter_context(wheelhouse_server(figures))
            with timed(figures, "build_all_s"):
                build_images(figures, wheels)
            env = write_env(args.posts)
            # what an interrupted run left: its volumes hold the secrets of another .env
            compose("down", "-v", "--remove-orphans", "-t", "10", check=False, capture=True)
            started = False
            try:
                with timed(figures, "up_to_healthy_s"):
                    started = True
                    compose("up", "-d", "--no-build")
                    wait_healthy(1200)
                with timed(figures, "chart_forms_s"):
                    check_chart_forms()
                with timed(figures, "end_to_end_s"):
                    drive(env, figures)
            except StackFailure as exc:
                print(f"\nFAILED: {exc}", file=sys.stderr)
                print_logs(exc.services)
                rc = 1
            except Exception as exc:  # a broken step: the services' logs tell why
                print(f"\nFAILED: {exc!r}", file=sys.stderr)
                print_logs(tuple(n for n, c in containers().items() if c["State"]["ExitCode"]))
                rc = 1
            finally:
                if started and not args.keep_up:
                    with timed(figures, "down_s"):
                        compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
                elif started:
                    files = " ".join(f"-f {f}" for f in COMPOSE_FILES)
                    log(
                        f"stack left up; take it down with: docker-compose -p {PROJECT} "
                        f"--env-file {STATE / 'stack.env'} {files} down -v"
                    )
    except (StackFailure, OSError, subprocess.CalledProcessError) as exc:
        print(f"\nFAILED: {exc!r}", file=sys.stderr)
        rc = 1
    figures["total_s"] = round(time.monotonic() - start, 1)
    (STATE / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    log("figures: " + json.dumps(figures))
    log("PASSED" if rc == 0 else "FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
