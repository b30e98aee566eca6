"""One recipe for a local Airflow on this repository: its home, DAGs, plugins and metadata DB.

The demo (`tools.demo`), `make up` (`tools.up`), the tests and the DAG-parse bench all build
their Airflow environment here and merge it their own way (into os.environ before Airflow is
imported, or into a subprocess's env), adding what only they need through `extra`.
Importing this module imports no Airflow: it must run before Airflow reads its configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where the demo and `make up` keep their lake, photos, MLflow store and Airflow home.
STATE = Path(os.environ.get("POSTFLOW_STATE_DIR", REPO / ".postflow")).resolve()
METADATA_DB_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
# A home no process can create: a metadata DB there cannot be opened.
NOWHERE = Path("/nonexistent-postflow")


def sqlite_url(home: Path | str) -> str:
    """The metadata DB Airflow gets by default here: `airflow.db` (sqlite) in `home`."""
    return f"sqlite:///{home}/airflow.db"


def airflow_env(
    home: Path | str,
    *,
    metadata_db: str | None = None,
    logging_level: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Airflow settings for an Airflow home `home` on this repo's `dags/` and `plugins/`, without
    example DAGs; only these keys, not merged with os.environ.

    `metadata_db`: a SQLAlchemy URL; None: `sqlite_url(home)`. `logging_level`: Airflow's log
    level; None leaves it unset. `extra` is added last and wins."""
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        METADATA_DB_ENV: metadata_db or sqlite_url(home),
    }
    if logging_level:
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = logging_level
    env.update(extra or {})
    return env


def offline_parse_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a fresh interpreter that parses DAG code and must reach nothing:
    an Airflow home and a metadata DB that cannot be opened (a parse that touches the DB fails),
    a `posts_mysql` connection to a closed port, a bare PATH, `plugins/` importable. `extra`
    (e.g. POSTFLOW_* settings) is added last."""
    return airflow_env(
        NOWHERE,
        metadata_db=sqlite_url(NOWHERE / "no"),
        extra={
            "PATH": "/usr/bin:/bin",
            "AIRFLOW_CONN_POSTS_MYSQL": "mysql://nobody:x@127.0.0.1:1/none",
            "PYTHONPATH": str(REPO / "plugins"),
            **(extra or {}),
        },
    )


def pipeline_env(state: Path = STATE) -> dict[str, str]:
    """POSTFLOW_* defaults of a local stack under `state` (absolute paths: tasks, seeding and
    the MLflow UI all see the same lake, photos and MLflow store). Callers let values already
    set in the environment win."""
    return {
        "POSTFLOW_LAKE": str(state / "lake"),
        "POSTFLOW_IMAGE_ROOT": str(state / "images"),
        "POSTFLOW_MLFLOW_URI": f"sqlite:///{state / 'mlflow.db'}",
    }
