"""`retrain` end to end through real Airflow (`dag.test()`), the local step runner, a real MLflow
server (artifacts on moto S3) and the lake that `posts_etl` wrote from demo data in MariaDB.

Embedding uses random ResNet50 weights (`image_weights=none`: ImageNet weights cannot be
downloaded here) and the packaged MiniLM; the run is tagged so.
"""

from __future__ import annotations

import json
from datetime import date

import pytest

from ml.lake.partitions import Lake
from tests.conftest import demo_lake, etl_days, load_dag, retrain_environment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# three days: a post is labelled at a 1-day horizon, so the last day's posts wait for the next
DAYS = [date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)]


@pytest.fixture(scope="module")
def lake_of_three_days(mysql_db, airflow_db, tmp_path_factory):
    """Three days of demo posts, as production would have them (posts_etl runs in the tests)."""
    root = tmp_path_factory.mktemp("retrain")
    return demo_lake(mysql_db, root, DAYS, posts=540, seed=5)


@pytest.fixture
def retrain_env(lake_of_three_days, mysql_db, mlflow_server, monkeypatch):
    return retrain_environment(
        lake_of_three_days,
        mysql_db,
        mlflow_server,
        monkeypatch,
        POSTFLOW_EMBED_SHARDS="2",
        POSTFLOW_PROMOTION_MARGIN="0.01",  # an identical retrain must not replace the champion
    )


def _dag(dag_id: str):
    return load_dag(dag_id, all_dags=True)


def _states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def test_retrain_embeds_trains_registers_and_gates(retrain_env):
    import mlflow

    settings = retrain_env
    etl_days(DAYS, _dag("posts_etl"))

    retrain = _dag("retrain")
    days = [d.isoformat() for d in DAYS]
    run = retrain.test(run_conf={"days": days})
    assert str(run.state) == "success", _states(run)
    states = _states(run)
    assert states["embed_posts"] == ["success"] * 6  # 3 days x 2 shards, mapped
    assert set(states) == {
        "plan_retrain",
        "embed_posts",
        "merge_features",
        "check_source",
        "train_model",
        "promote_model",
    }

    lake = Lake.from_settings(settings)
    for d in days:
        clean = lake.read_manifest("posts_clean", d)
        feats = lake.read_manifest("features", d)
        assert feats is not None, f"features/ds={d} not committed"
        summary = feats["summary"]
        # nothing silently dropped: every clean post has features or a recorded skip
        assert feats["rows"] + summary["skipped"] == clean["rows"]
        assert summary["computed"] == feats["rows"] and summary["image_model"].startswith(
            "resnet50:random"
        )

    # the source check re-read the window's posts from MySQL: updated_at moved with every count
    check = lake.read_manifest("source_check", days[-1])
    assert check["sampled"] > 0 and check["silent_changes"] == 0 and not check["held"]

    client = mlflow.MlflowClient(settings.mlflow_uri, settings.mlflow_uri)
    name = settings.registered_model
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1"
    assert champion.tags["postflow.promotion"] == "promoted"
    assert champion.tags["postflow.image_weights"] == "none"
    run_info = client.get_run(champion.run_id)
    assert run_info.data.tags["postflow.random_weights"] == "true"
    assert run_info.data.tags["postflow.window"].endswith(days[-1])
    assert run_info.data.metrics["split_test_rows"] > 0

    # Re-running the same days: no model work at embed, a new challenger that cannot beat the
    # champion by the margin (same data, same seed), champion unchanged, decision recorded.
    run = retrain.test(run_conf={"days": days})
    assert str(run.state) == "success", _states(run)
    for d in days:
        summary = lake.read_manifest("features", d)["summary"]
        assert summary["computed"] == 0 and summary["cached"] == summary["posts"]
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert challenger.version == "2"
    assert challenger.tags["postflow.promotion"] == "rejected"
    assert "no credible improvement" in challenger.tags["postflow.decision_reason"]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    # same data, same seed: the same predictions, so the gain's interval is exactly [0, 0]
    assert json.loads(challenger.tags["postflow.improvement_ci"]) == [0.0, 0.0]
    assert challenger.tags["postflow.champion_version"] == "1"
