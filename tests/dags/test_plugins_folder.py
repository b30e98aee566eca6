"""Airflow's plugin loader, in a real Airflow process, does not import postflow_airflow's modules
a second time as top-level modules (`steps`, `settings`, ...): plugins/.airflowignore keeps the
package out of the plugin scan, and the package itself stays importable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.airflow_env import airflow_env

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
PACKAGE = PLUGINS / "postflow_airflow"

# Runs in a fresh interpreter: load plugins with the core (scheduler, API server, DAG processor)
# and the task SDK (workers) managers, then list modules whose file lies in the package under
# a top-level name, and check the package itself imports from this repo.
PROBE = """
import json, sys
from pathlib import Path

from airflow import plugins_manager
from airflow.sdk import plugins_manager as sdk_plugins_manager

plugins_manager.ensure_plugins_loaded()
sdk_plugins_manager._get_plugins()  # no public loader; what the task runner calls
package = Path(sys.argv[1]).resolve()
top_level = sorted(
    name
    for name, module in list(sys.modules.items())
    if "." not in name
    and name != "postflow_airflow"
    and Path(getattr(module, "__file__", None) or "/").resolve().parent == package
)
import postflow_airflow.steps

print(json.dumps({
    "top_level": top_level,
    "errors": plugins_manager.get_import_errors(),
    "package": str(Path(postflow_airflow.steps.__file__).resolve().parent),
}))
"""


def load_plugins(tmp_path: Path, plugins_folder: Path, syntax: str = "glob") -> dict:
    """Airflow's plugin loading in a fresh interpreter: the repo's Airflow recipe
    (tools.airflow_env) with its own home and the given plugins folder, and nothing else."""
    env = airflow_env(
        tmp_path / f"airflow-{syntax}",
        logging_level="WARNING",
        extra={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
            "AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX": syntax,
        },
    )
    package = plugins_folder / "postflow_airflow"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(package)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def module_names() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py")}


@pytest.mark.parametrize("syntax", ["glob", "regexp"])
def test_plugin_loader_skips_the_package(tmp_path, syntax):
    """Whichever AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX is set (the SDK loader always uses glob)."""
    assert {"steps", "settings", "links"} <= module_names()
    result = load_plugins(tmp_path, PLUGINS, syntax)
    assert result["top_level"] == [], "imported as top-level modules by the plugin loader"
    assert result["errors"] == {}
    assert result["package"] == str(PACKAGE.resolve()), "postflow_airflow from this repo"


def test_without_the_ignore_file_the_loader_imports_each_module(tmp_path):
    """The check above can see the problem: with a copy of plugins/ without .airflowignore, the
    loader imports every module of the package as a top-level module."""
    copy = tmp_path / "plugins"
    shutil.copytree(PLUGINS, copy, ignore=shutil.ignore_patterns(".airflowignore", "__pycache__"))
    leaked = set(load_plugins(tmp_path, copy)["top_level"])
    assert leaked == module_names(), leaked
