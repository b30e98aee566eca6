"""The README is the newcomer's contract: its two commands, and every setting documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ml.config import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["make demo", "make test"]
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("set ")
    ]
    assert any(line.endswith("make test") for line in ci), ci


def test_every_setting_is_in_the_configuration_table():
    missing = [
        ENV_PREFIX + f.name.upper()
        for f in dataclasses.fields(Settings)
        if f.name != "extra" and f"`{ENV_PREFIX}{f.name.upper()}" not in README
    ]
    assert not missing, f"document these in README.md's configuration table: {missing}"
