"""The retrain plan: which days a run embeds and the exact step arguments it hands to the pods."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk import Asset
from postflow_airflow.assets import POSTS_CLEAN
from postflow_airflow.retrain_plan import days_from_context, plan_retrain

from ml.config import Settings


def _event(ds: str | None) -> SimpleNamespace:
    return SimpleNamespace(extra={"ds": ds} if ds else {})


def test_days_come_from_every_triggering_posts_clean_event():
    # Airflow's accessor iterates as Asset keys (TriggeringAssetEventsAccessor.__iter__)
    asset = POSTS_CLEAN
    other = Asset(name="something_else", uri="postflow://lake/something_else")
    ctx = {
        "triggering_asset_events": {
            asset: [_event("2026-11-03"), _event("2026-11-01"), _event("2026-11-03")],
            other: [_event("2020-01-01")],
        },
        "params": {"days": []},
    }
    assert days_from_context(ctx) == ["2026-11-01", "2026-11-03"]


def test_manual_trigger_names_its_days_and_bad_dates_fail_loudly():
    assert days_from_context({"params": {"days": ["2026-11-02"]}}) == ["2026-11-02"]
    with pytest.raises(ValueError, match="2026-13-01"):
        days_from_context({"params": {"days": ["2026-13-01"]}})
    with pytest.raises(ValueError, match="no day to work on"):
        days_from_context({"params": {"days": []}, "triggering_asset_events": {}})


def test_plan_shards_every_day_and_trains_on_the_window_ending_at_the_last_day():
    settings = Settings.load(
        {
            "embed_shards": 2,
            "image_weights": "none",
            "device": "cpu",
            "train_window_days": 7,
            "label_horizon_days": 0,
        },
        environ={},
    )
    plan = plan_retrain(["2026-11-09", "2026-11-10"], settings)
    assert plan["embed"] == [
        ["--ds", d, "--shard", f"{i}/2"] for d in ("2026-11-09", "2026-11-10") for i in range(2)
    ]
    assert plan["merge"] == ["--ds", "2026-11-09,2026-11-10", "--merge-shards", "2"]
    assert plan["window"] == ["2026-11-04", "2026-11-10"]
    assert plan["train"][:4] == ["--start", "2026-11-04", "--end", "2026-11-10"]
    assert plan["train"][plan["train"].index("--label-horizon-days") + 1] == "0"


def test_plan_leaves_weights_models_and_device_to_the_machine_that_runs_the_step():
    """The plan is made on an Airflow worker with no torch; embed and train run on the ML worker
    or in a pod, whose own settings say which weights it holds and which device it has (the
    compose stack's ML worker was told `imagenet` by the planner while holding `none`)."""
    settings = Settings.load(
        {"image_weights": "imagenet", "device": "cuda", "text_model": "/models/minilm"},
        environ={},
    )
    plan = plan_retrain(["2026-11-10"], settings)
    steps = [*plan["embed"], plan["merge"], plan["train"]]
    machine = {"--image-weights", "--device", "--text-model", "imagenet", "cuda", "/models/minilm"}
    assert not [a for args in steps for a in args if a in machine]


def test_one_shard_still_merges_so_features_appear_whole():
    settings = Settings.load({"embed_shards": 1}, environ={})
    plan = plan_retrain(["2026-11-10"], settings)
    assert [a[3] for a in plan["embed"]] == ["0/1"]
    assert plan["merge"] == ["--ds", "2026-11-10", "--merge-shards", "1"]


def test_retrain_dag_in_kubernetes_mode_puts_gpu_steps_in_gpu_pods(monkeypatch):
    """The same DAG file, parsed with the kubernetes runner: embed and train ask for a GPU,
    merge and promote do not, and every pod gets the Secret, never a credential literal."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("POSTFLOW_STEP_RUNNER", "kubernetes")
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", "mysql://u:s3cret-pw@db:3306/postflow")
    dags = Path(__file__).resolve().parents[2] / "dags"
    bag = DagBag(dag_folder=str(dags / "retrain.py"))
    assert not bag.import_errors
    dag = bag.dags["retrain"]
    gpu = {}
    for task_id in ("embed_posts", "merge_features", "train_model", "promote_model"):
        task = dag.get_task(task_id)
        kwargs = getattr(task, "partial_kwargs", None) or task.__dict__
        resources = kwargs["container_resources"]
        gpu[task_id] = (resources.limits or {}).get("nvidia.com/gpu")
        assert [e.secret_ref.name for e in kwargs["env_from"]] == ["postflow-ml"]
        assert "s3cret-pw" not in repr(kwargs.get("env_vars"))
    assert gpu == {
        "embed_posts": "1",
        "merge_features": None,
        "train_model": "1",
        "promote_model": None,
    }


def test_a_run_embeds_every_clean_day_without_features_and_trains_up_to_the_newest(tmp_path):
    """A three-day backfill's posts_clean events need not each start a retrain run (Airflow
    defers runs at max_active_runs and may fold or drop events): a run embeds the clean days
    that have no features yet, newer ones included, and its window ends at the newest. Days
    with features, or before the window, are left alone."""
    import pyarrow as pa

    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    schema = pa.schema([("post_id", pa.int64())])

    def commit(dataset: str, ds: str) -> None:
        with lake.writer(dataset, ds, schema) as w:
            w.write(pa.table({"post_id": [1]}, schema=schema))

    for ds in ("2026-10-01", "2026-11-08", "2026-11-09", "2026-11-10"):
        commit("posts_clean", ds)
    commit("features", "2026-11-08")
    settings = Settings.load({"embed_shards": 1, "train_window_days": 28}, environ={})
    for named in (["2026-11-10"], ["2026-11-09"]):  # the newest day's event, or only an older one
        plan = plan_retrain(named, settings, lake)
        assert plan["days"] == ["2026-11-09", "2026-11-10"]
        assert [a[1] for a in plan["embed"]] == ["2026-11-09", "2026-11-10"]
        assert plan["merge"][:2] == ["--ds", "2026-11-09,2026-11-10"]
        assert plan["window"] == ["2026-10-14", "2026-11-10"]
    # without a lake (unit use), only the named days
    assert plan_retrain(["2026-11-09"], settings)["days"] == ["2026-11-09"]
