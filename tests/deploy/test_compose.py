"""docker-compose.yaml, read as data: the Compose Specification's JSON schema (and Debian's
docker-compose 1.29 when installed), the wiring between services, settings from .env only, no
secret in the file. `make stack-test` (tools/stack_test.py) starts it for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ml.config import Settings
from tests.deploy.test_dockerfile import parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, $NAME; $$ escapes
VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|\$(\w+)")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|JWT|TOKEN|PRIVATE", re.I)
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"]
AIRFLOW_SERVICES += ["airflow-triggerer", "airflow-worker", "airflow-ml-worker"]
# compose's own variables, read from .env but not referenced in the file
COMPOSE_VARIABLES = {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}
ONE_SHOTS = {"airflow-init", "mysql-seed", "s3-init"}
# what a real deployment brings itself (the app's MySQL, an SMTP relay): profile `demo`
DEMO = {"mysql", "mysql-seed", "mailpit"}
# long-running third-party services without a compose health check, and why
NO_COMPOSE_HEALTHCHECK = {
    "s3": "a check would run a program inside the image: s3-init waits for it over S3",
    "mailpit": "the image's own HEALTHCHECK (Mailpit's Dockerfile: /mailpit readyz)",
}
# the servers' own client tools, as their images document them for health checks
HEALTH_TOOLS = {"pg_isready", "mysqladmin", "redis-cli"}


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (`# comment` after an unquoted value)."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if value[:1] in {'"', "'"}:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        out[key.strip()] = value
    return out


def interpolate(node, env: dict[str, str]):
    """Compose's variable interpolation over a loaded YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = env.get(name)
        if op in {":-", "-"}:
            unset = value is None or (op == ":-" and value == "")
            return interpolate(arg, env) if unset else value
        if op in {":?", "?"}:
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"{name} is required: {arg}")
            return value
        return value or ""

    return VAR.sub(sub, node)


def variables(node) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference in the values of a YAML tree."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in variables(value)]
    if isinstance(node, list):
        return [v for value in node for v in variables(value)]
    if not isinstance(node, str):
        return []
    out = []
    for m in VAR.finditer(node):
        if m.group(0) != "$$":
            out.append((m.group(1) or m.group(4), m.group(2), m.group(3) or ""))
            out += variables(m.group(3) or "")
    return out


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The file as compose sees it with .env.example as .env."""
    return interpolate(raw, read_env_file())


def _compose_schema() -> dict | None:
    """The Compose Specification's JSON schema, as the check-jsonschema package vendors it."""
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "builtin_schemas/vendor/compose-spec.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_matches_the_compose_specification_schema(compose):
    import jsonschema

    schema = _compose_schema()
    if schema is None:
        pytest.skip(
            "the Compose Specification schema comes from the check-jsonschema package "
            "(builtin_schemas/vendor/compose-spec.json), which is not installed"
        )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_structure(compose):
    """What the schema would catch first, checked without it."""
    assert set(compose) <= {"name", "services", "volumes", "networks", "secrets", "configs"} | {
        k for k in compose if k.startswith("x-")
    }
    keys = {"image", "build", "command", "entrypoint", "environment", "volumes", "ports"}
    keys |= {"healthcheck", "depends_on", "restart", "init", "profiles", "stop_grace_period"}
    for name, svc in compose["services"].items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name), name
        assert set(svc) <= keys, (name, set(svc) - keys)
        assert isinstance(svc.get("environment", {}), dict), name
        for key in ("command", "entrypoint"):
            assert isinstance(svc.get(key, []), list), f"{name}.{key}: exec form"
        hc = svc.get("healthcheck")
        if hc:
            assert hc["test"][0] in {"CMD", "CMD-SHELL"}, name
            assert set(hc) <= {"test", "interval", "timeout", "retries", "start_period"}
        assert svc.get("restart", "no") in {"no", "always", "unless-stopped", "on-failure"}


def test_every_service_has_an_image_or_a_dockerfile_target(compose):
    _, stages = parse_dockerfile((REPO / "Dockerfile").read_text())
    names = {s.name for s in stages}
    for name, svc in compose["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert svc["build"]["context"] == "."
            assert svc["build"]["target"] in names, (name, svc["build"]["target"])
            assert svc["image"].startswith("postflow-" + svc["build"]["target"] + ":"), name
        elif "image" in svc:
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(compose):
    services = compose["services"]
    completed, healthy = set(), set()
    for name, svc in services.items():
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert dep != name
            cond = how["condition"]
            if cond == "service_started":  # s3-init waits for S3 itself, over S3
                assert (name, dep) == ("s3-init", "s3"), (name, dep)
                continue
            assert cond in {"service_healthy", "service_completed_successfully"}, (name, cond)
            (completed if cond == "service_completed_successfully" else healthy).add(dep)
    assert not completed & healthy
    assert completed <= ONE_SHOTS
    for name, svc in services.items():
        if name in ONE_SHOTS:
            assert svc.get("restart") == "no" and "healthcheck" not in svc, name
        elif name in NO_COMPOSE_HEALTHCHECK:
            assert "healthcheck" not in svc and name not in healthy, name
            assert svc.get("restart") == "unless-stopped", name
        else:
            assert "healthcheck" in svc, f"{name} runs for good but has no healthcheck"
            assert svc.get("restart") == "unless-stopped", name


def test_depends_on_has_no_cycle(compose):
    services = compose["services"]

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*path, name))

    for name in services:
        visit(name, ())


def test_volumes_are_named_and_declared_and_bind_mounts_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes", []):
            source, target, *mode = spec.split(":")
            assert target.startswith("/"), (name, spec)
            if source.startswith((".", "/")):
                assert source.startswith("./"), f"{name}: host paths only from the repo"
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
                assert mode == ["ro"], f"{name}: repo files are mounted read-only"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_every_variable_is_documented_in_env_example_and_used(raw):
    env = read_env_file()
    names = {name for name, _, _ in variables(raw)}
    assert names <= set(env), f"not in .env.example: {sorted(names - set(env))}"
    unused = set(env) - names - COMPOSE_VARIABLES
    assert not unused, f"in .env.example but unused: {sorted(unused)}"


def test_no_secret_in_the_compose_file(raw):
    env = read_env_file()
    for name, op, _ in variables(raw):
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} must be required (${{{name}:?...}}), no default"
            assert env[name] == "change-me", f".env.example: {name} is a placeholder"
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) and not key.endswith(("_FILE", "_PATH")):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (name, key, value)
        for item in svc.get("command", []) + [json.dumps(svc.get("environment", {}))]:
            for m in re.finditer(r"://([^/:@\s\"]+):([^@/\s\"]+)@", str(item)):
                assert m.group(2).startswith("${"), f"{name}: literal password in a URI"


def test_ports_are_published_on_loopback_only(compose):
    published = {}
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            host_ip, host_port, container_port = str(spec).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {spec} listens beyond this machine"
            assert host_port not in published, f"port {host_port} twice"
            published[host_port] = name
    assert {published[p] for p in published} == {
        "airflow-apiserver",
        "mlflow",
        "mailpit",
        "s3",
    }
    for name in ("postgres", "mysql"):
        assert "ports" not in compose["services"][name], f"{name} stays inside the network"


def test_airflow_services_share_one_configuration(compose):
    envs = [compose["services"][s]["environment"] for s in AIRFLOW_SERVICES]
    assert all(e == envs[0] for e in envs), "scheduler, API server ... must agree (JWT secret!)"
    init = compose["services"]["airflow-init"]["environment"]
    assert {k: init[k] for k in envs[0]} == envs[0]
    assert {k for k in init if k not in envs[0]} == {
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_VIEWER_PASSWORD",
    }, "login passwords only where the password file is written"


def test_airflow_uses_fab_auth_and_the_celery_executor(compose):
    env = compose["services"]["airflow-apiserver"]["environment"]
    manager = env["AIRFLOW__CORE__AUTH_MANAGER"]
    assert manager == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    module, _, name = manager.rpartition(".")
    assert getattr(importlib.import_module(module), name).__name__ == name, "importable"
    assert not {k for k in env if "SIMPLE_AUTH_MANAGER" in k}
    init = (REPO / "deploy/airflow/airflow-init.sh").read_text()
    assert compose["services"]["airflow-init"]["command"] == [
        "bash",
        "/opt/postflow/airflow-init.sh",
    ]
    assert "airflow fab-db migrate" in init
    assert "user admin Admin" in init and "user viewer Viewer" in init
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://airflow:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:")
    redis = compose["services"]["redis"]
    assert redis["environment"]["REDISCLI_AUTH"] == read_env_file()["REDIS_PASSWORD"]
    password = redis["environment"]["REDISCLI_AUTH"]
    assert redis["command"] == ["redis-server", "--requirepass", password]


def test_ml_steps_run_on_the_ml_worker(compose):
    """Celery routes the ML steps (POSTFLOW_ML_QUEUE) to the one worker whose image has torch;
    the other worker serves the default queue."""
    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["POSTFLOW_STEP_RUNNER"] == "local" and env["POSTFLOW_ML_QUEUE"] == "ml"
    worker, ml = services["airflow-worker"], services["airflow-ml-worker"]
    assert worker["command"] == ["celery", "worker"]
    assert worker["image"].startswith("postflow-airflow:")
    cmd = ml["command"]
    assert cmd[:2] == ["celery", "worker"] and cmd[cmd.index("--queues") + 1] == "ml"
    assert ml["build"]["target"] == "ml-worker"
    assert ml["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert "celery_executor.app inspect ping" in ml["healthcheck"]["test"][1]
    # the GPU reservation is documented next to the worker
    text = COMPOSE.read_text()
    assert "#         - driver: nvidia" in text and "#           capabilities: [gpu]" in text


def test_connections_and_postflow_settings(compose):
    env = compose["services"]["airflow-scheduler"]["environment"]
    mysql = json.loads(env["AIRFLOW_CONN_POSTS_MYSQL"])
    assert mysql["conn_type"] == "mysql" and mysql["host"] == "mysql"
    assert (mysql["port"], mysql["schema"]) == (3306, "postflow")
    assert mysql["login"] == read_env_file()["POSTFLOW_READER_USER"] != "root"
    seed = compose["services"]["mysql-seed"]["environment"]
    assert seed["POSTFLOW_READER_USER"] == mysql["login"]
    assert seed["POSTFLOW_READER_PASSWORD"] == mysql["password"]
    smtp = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert (smtp["conn_type"], smtp["host"], smtp["port"]) == ("smtp", "mailpit", 1025)
    assert smtp["login"] and smtp["password"] == read_env_file()["SMTP_PASSWORD"]
    assert smtp["extra"]["timeout"] > 0 and smtp["extra"]["retry_limit"] > 0

    known = {f"POSTFLOW_{f.name.upper()}" for f in fields(Settings)} | {"POSTFLOW_CONFIG"}
    for name, svc in compose["services"].items():
        extra = {"POSTFLOW_READER_USER", "POSTFLOW_READER_PASSWORD"}  # seed script's own
        unknown = {k for k in svc.get("environment", {}) if k.startswith("POSTFLOW_")}
        assert unknown - known - extra == set(), (name, unknown - known - extra)
    assert env["POSTFLOW_LAKE"].startswith("s3://")
    assert env["POSTFLOW_S3_ENDPOINT"] == "http://s3:7070" == seed["POSTFLOW_S3_ENDPOINT"]
    s3 = compose["services"]["s3"]
    (port,) = s3["ports"]
    assert env["POSTFLOW_S3_PUBLIC_ENDPOINT"] == f"http://localhost:{port.split(':')[1]}", (
        "the report link is signed for the S3 port published on this machine"
    )
    assert env["POSTFLOW_MLFLOW_URI"] == "http://mlflow:5000"
    assert env["POSTFLOW_IMAGE_ROOT"] == seed["POSTFLOW_IMAGE_ROOT"]
    Settings.load(environ={k: v for k, v in env.items() if k.startswith("POSTFLOW_")})


def test_mlflow_has_basic_auth_and_a_postgres_store(compose):
    mlflow = compose["services"]["mlflow"]
    cmd = mlflow["command"]
    assert cmd[0] == "server"
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://mlflow:")
    assert cmd[cmd.index("--artifacts-destination") + 1].startswith("s3://")
    hosts = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in hosts, "Airflow reaches MLflow as mlflow:5000"
    ini = REPO / "deploy/compose/mlflow-basic-auth.ini"
    assert "admin_password" not in ini.read_text().replace("# admin_password", "")
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"


def test_scripts_the_services_run_are_valid(compose):
    import ast

    ast.parse((REPO / "deploy/compose/seed_mysql.py").read_text())
    ast.parse((REPO / "deploy/compose/s3_init.py").read_text())
    for path in (REPO / "deploy/airflow/airflow-init.sh", REPO / "deploy/compose/postgres-init.sh"):
        script = path.name
        assert path.read_text().startswith("#!"), script
        assert os.access(path, os.X_OK), f"{script} is executable"
        assert "set -e" in path.read_text(), script


def test_interpolation_follows_compose_rules():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A} ${B:-x} ${EMPTY:-d} ${EMPTY-d} $$HOME ${B:-${A}}", env) == (
        "1 x d  $HOME 1"
    )
    with pytest.raises(KeyError):
        interpolate("${EMPTY:?must be set}", env)


def test_s3_server_is_a_maintained_image_set_up_over_s3_from_our_image(compose):
    services = compose["services"]
    s3 = services["s3"]
    # v1.7.0: the newest tag seen upstream (DESIGN.md); v1.8.0 was pinned once and does not exist
    assert s3["image"] == "ghcr.io/versity/versitygw:v1.7.0"
    assert not [s for s in services.values() if "minio" in s.get("image", "")], "no MinIO images"
    env = s3["environment"]
    # the image's docker-entrypoint.sh: VGW_BACKEND (+ VGW_BACKEND_ARG) when given no arguments
    assert (env["VGW_BACKEND"], env["VGW_BACKEND_ARG"]) == ("posix", "/data")
    assert "command" not in s3 and "entrypoint" not in s3
    airflow = services["airflow-worker"]["environment"]
    assert env["ROOT_ACCESS_KEY"] == airflow["AWS_ACCESS_KEY_ID"]
    assert env["ROOT_SECRET_KEY"] == airflow["AWS_SECRET_ACCESS_KEY"]
    init = services["s3-init"]
    assert init["image"].startswith("postflow-airflow:") and init["build"]["target"] == "airflow"
    assert init["depends_on"] == {"s3": {"condition": "service_started"}}
    assert init["entrypoint"] == ["python", "/opt/postflow/compose/s3_init.py"]
    buckets = init["environment"]["S3_BUCKETS"].split()
    lake, images = airflow["POSTFLOW_LAKE"], airflow["POSTFLOW_IMAGE_ROOT"]
    mlflow_dest = services["mlflow"]["command"]
    dest = mlflow_dest[mlflow_dest.index("--artifacts-destination") + 1]
    for uri in (lake, images, dest):
        assert uri.split("/")[2] in buckets, uri
    assert init["environment"]["S3_ENDPOINT"] == airflow["POSTFLOW_S3_ENDPOINT"]
    assert (
        services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]
        == init["environment"]["S3_ENDPOINT"]
    )


def test_third_party_images_are_used_only_through_their_documented_interface(compose):
    """No entrypoint of theirs replaced, no program inside them called but the server's own client
    in a health check, every one-shot in postflow's image."""
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        assert "entrypoint" not in svc, name
        assert name not in ONE_SHOTS, f"{name}: one-shots run in postflow's image"
        if "command" in svc:  # the server's own arguments, as its image documents them
            assert name == "redis" and svc["command"][0] == "redis-server", name
        hc = svc.get("healthcheck")
        if hc:
            program = hc["test"][1].split()[0]
            assert program in HEALTH_TOOLS, f"{name}: health check runs {program}"


def test_demo_services_are_a_profile_nothing_else_needs(compose):
    services = compose["services"]
    for name, svc in services.items():
        assert (svc.get("profiles") == ["demo"]) == (name in DEMO), name
        if name not in DEMO:
            assert not set(svc.get("depends_on", {})) & DEMO, f"{name} needs a demo service"
    assert "demo" in read_env_file()["COMPOSE_PROFILES"].split(","), ".env.example: demo on"


def test_real_services_come_from_env_without_editing_the_file(raw):
    """The app's MySQL, an SMTP relay with login and STARTTLS, another S3 and MLflow: .env only."""
    env = read_env_file() | {
        "MYSQL_HOST": "db.example.com",
        "MYSQL_PORT": "3307",
        "MYSQL_DATABASE": "app",
        "SMTP_HOST": "smtp.example.com",
        "SMTP_PORT": "587",
        "SMTP_USER": "relay-user",
        "SMTP_PASSWORD": "relay-secret",
        "SMTP_DISABLE_TLS": "false",
        "S3_ENDPOINT": "https://s3.example.com",
        "MLFLOW_URI": "https://mlflow.example.com",
        "COMPOSE_PROFILES": "",
    }
    services = interpolate(raw, env)["services"]
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        e = services[name]["environment"]
        mysql = json.loads(e["AIRFLOW_CONN_POSTS_MYSQL"])
        assert (mysql["host"], mysql["port"], mysql["schema"]) == ("db.example.com", 3307, "app")
        smtp = json.loads(e["AIRFLOW_CONN_SMTP_DEFAULT"])
        assert (smtp["host"], smtp["port"]) == ("smtp.example.com", 587)
        assert (smtp["login"], smtp["password"]) == ("relay-user", "relay-secret")
        assert smtp["extra"]["disable_tls"] is False
        assert e["POSTFLOW_S3_ENDPOINT"] == "https://s3.example.com"
        assert e["POSTFLOW_MLFLOW_URI"] == "https://mlflow.example.com"
    assert services["s3-init"]["environment"]["S3_ENDPOINT"] == "https://s3.example.com"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.example.com"


def test_workers_get_time_for_a_warm_shutdown(compose):
    def seconds(value: str) -> int:
        m = re.fullmatch(r"(\d+)(s|m|h)", value)
        assert m, value
        return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]

    services = compose["services"]
    assert seconds(services["airflow-worker"]["stop_grace_period"]) >= 60
    assert seconds(services["airflow-ml-worker"]["stop_grace_period"]) >= 600


def test_debians_docker_compose_accepts_the_file(tmp_path):
    """Debian 12 ships docker-compose 1.29 (compose v1): it must read this file too."""
    import shutil
    import subprocess

    exe = shutil.which("docker-compose")
    assert exe is not None, (
        "docker-compose (Debian's package) is not installed: `make test` installs it "
        "(scripts/system-deps.sh docker-compose)"
    )
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    run = subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    services = set(run.stdout.split())
    assert set(yaml.safe_load(COMPOSE.read_text())["services"]) == services
