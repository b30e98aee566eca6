"""The shape of the code base, checked: no module reaches into another's private names, no
module of `ml/` holds more than one stage's worth of code. (The import direction of `ml/` is
import-linter's `layers` contract in pyproject.toml, run by `make test` as `lint-imports`.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("ml", "postflow_airflow", "tools", "bench", "dags")
MAX_MODULE_LINES = 500  # STYLE.md: past about 550 lines a module usually holds two stages


def _production_files() -> list[Path]:
    roots = [REPO / "ml", REPO / "plugins", REPO / "tools", REPO / "bench", REPO / "dags"]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*.py"))


def _own(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in OWN_PACKAGES


def private_imports(path: Path) -> list[str]:
    """`from <own module> import _name` and `<own module alias>._name` in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _own(node.module):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{a.name}")
                elif a.asname or a.name:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _own(a.name):
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for p in _production_files() for hit in private_imports(p)]
    assert found == [], "give what is shared a public name in the module that owns it"


def test_the_check_sees_private_imports(tmp_path):
    probe = REPO / "tools" / "_probe_private_import.py"
    probe.write_text(
        "from ml.features.store import _fixed\nfrom ml import lake\nlake._schema_from_x\n"
    )
    try:
        assert len(private_imports(probe)) == 2
    finally:
        probe.unlink()


PRODUCTION_MODULES = sorted(
    p for root in (REPO / "ml", REPO / "plugins") for p in root.rglob("*.py")
)


@pytest.mark.parametrize("path", PRODUCTION_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_production_modules_hold_one_job(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: split it by job"


STAGES = ("lake", "ingest", "features", "learn", "report", "demo")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_a_package_that_says_what_it_reads_and_leaves(stage):
    init = REPO / "ml" / stage / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
    assert doc, f"ml/{stage}/__init__.py must say what the stage takes in and leaves in the lake"


def test_tests_mirror_the_packages():
    """The test of `ml/<stage>/<module>.py` is found at `tests/ml/<stage>/test_*.py`."""
    tests = REPO / "tests" / "ml"
    stray = [
        p.name for p in tests.glob("test_*.py") if p.name not in {"test_layout.py", "test_docs.py"}
    ]
    assert stray == [], "put the tests of a stage's modules under tests/ml/<stage>/"
    for stage in STAGES:
        assert list((tests / stage).glob("test_*.py")), f"no tests under tests/ml/{stage}/"
