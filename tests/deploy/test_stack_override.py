"""deploy/stack-test/compose.override.yaml, read as data: `make stack-test` may swap a third-party
image for a stand-in built here, and nothing else. So the commands, entrypoints, environment,
health checks and one-shots that run in the stack test are the ones users run."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = REPO / "deploy/stack-test/compose.override.yaml"
STAND_INS = REPO / "deploy/stack-test/Dockerfile"


def override_violations(override: dict, compose: dict) -> list[str]:
    """What the override does beyond replacing a third-party service's `image`/`build`."""
    problems = [f"top-level key {k!r}" for k in override if k != "services"]
    services = compose["services"]
    for name, svc in (override.get("services") or {}).items():
        if name not in services:
            problems.append(f"{name}: a service the compose file does not have")
            continue
        if "build" in services[name]:
            problems.append(f"{name}: postflow's own image, the real one runs in the test")
        extra = set(svc or {}) - {"image", "build"}
        if extra:
            problems.append(f"{name}: changes {sorted(extra)}, not only image/build")
    return problems


def stand_in_stages() -> set[str]:
    return {
        line.split()[-1]
        for line in STAND_INS.read_text().splitlines()
        if line.startswith("FROM ") and " AS " in line
    }


def test_the_override_changes_only_images_of_third_party_services():
    override = yaml.safe_load(OVERRIDE.read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    assert override_violations(override, compose) == []
    third_party = {n for n, s in compose["services"].items() if "build" not in s}
    assert set(override["services"]) == third_party, "every third-party image gets a stand-in"
    stages = stand_in_stages()
    for name, svc in override["services"].items():
        image = svc["image"]
        assert image.startswith("postflow-stacktest-"), name
        assert image.split(":")[0].removeprefix("postflow-stacktest-") in stages, name


def test_the_check_catches_commands_environment_and_added_services():
    """The checker itself, on overrides that do what the stack test must not."""
    compose = {
        "services": {
            "s3": {"image": "ghcr.io/versity/versitygw:v1.7.0"},
            "mine": {"build": {"context": "."}, "image": "postflow-airflow:1"},
        }
    }
    ok = {"services": {"s3": {"image": "postflow-stacktest-s3:1"}}}
    assert override_violations(ok, compose) == []
    for bad in (
        {"s3": {"image": "x", "command": ["moto_server"]}},
        {"s3": {"image": "x", "entrypoint": ["python", "s3_init.py"]}},
        {"s3": {"image": "x", "environment": {"A": "1"}}},
        {"s3": {"image": "x", "healthcheck": {"test": ["CMD", "true"]}}},
        {"s3-init": {"image": "x"}},
        {"mine": {"image": "x"}},
    ):
        assert override_violations({"services": bad}, compose), bad
