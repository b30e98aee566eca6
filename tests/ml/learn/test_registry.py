"""MLflow tracking, registry and the promotion gate: `decide` on its own, then the whole path
(`python -m ml train` -> run + version -> `python -m ml promote`) against a real `mlflow server`
whose artifacts live in a moto S3 bucket."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ml.config import Settings
from ml.learn import dataset as DS
from ml.learn import gate as G
from ml.learn import model as M
from ml.learn import promote as P
from ml.learn import registry as R
from ml.learn import train as T
from ml.learn.bins import DEFAULT_EDGES, bin_names
from ml.learn.confusion import confusion_png
from tools.synthetic import class_features, write_features, write_posts_clean


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """One BLAS/torch thread: on 2 busy shared cores, OpenBLAS with 2 threads spins (a
    351 x 2432 SVD took 5 s instead of 0.4 s here)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# -- the gate, pure -----------------------------------------------------------------------------


def m(f1: float, *recall: float | None) -> dict:
    return {"macro_f1": f1, "per_class_recall": list(recall)}


def test_first_model_passes_on_the_floor_only():
    d = G.decide(m(0.30, 0.5, 0.1), None, margin=0.05, min_macro_f1=0.2, challenger_version=1)
    assert d.promoted and "first model" in d.reason
    assert d.champion_version is None and d.champion_macro_f1 is None
    d = G.decide(m(0.10, 0.5, 0.1), None, min_macro_f1=0.2)
    assert not d.promoted and "floor" in d.reason
    d = G.decide(m(float("nan")), None)
    assert not d.promoted and "undefined" in d.reason
    assert d.to_dict()["challenger_macro_f1"] is None  # JSON-safe


def test_margin_and_ties():
    champ = m(0.40, 0.5, 0.5)
    assert G.decide(m(0.40, 0.5, 0.5), champ, margin=0.0).promoted  # a tie passes at margin 0
    assert not G.decide(m(0.40, 0.5, 0.5), champ, margin=0.01).promoted
    d = G.decide(m(0.42, 0.5, 0.5), champ, margin=0.01, champion_version=3)
    assert d.promoted and d.champion_version == 3 and d.champion_macro_f1 == 0.40
    d = G.decide(m(0.39, 0.5, 0.5), champ)
    assert not d.promoted and "< champion 0.4000" in d.reason


def test_recall_collapse_of_one_class_rejects_a_better_model():
    champ = m(0.40, 0.50, 0.40, None, 0.30)
    # class 1 drops by 0.20 (> 0.15) although macro-F1 improved
    d = G.decide(m(0.50, 0.90, 0.20, 0.9, 0.30), champ, max_recall_drop=0.15)
    assert not d.promoted and "class 1 0.400->0.200" in d.reason
    # exactly the allowed drop passes; classes absent from the rows are not compared
    assert G.decide(m(0.50, 0.35, 0.25, None, 0.15), champ, max_recall_drop=0.15).promoted
    d = G.decide(m(0.30, 0.0, 0.40, None, 0.30), champ, margin=0.0, min_macro_f1=0.35)
    assert not d.promoted and d.reason.count(";") == 2  # floor, margin and recall all listed


def test_names_for_tags_and_plots():
    assert R.image_weights_tag(["resnet50:imagenet1k_v2"]) == "imagenet"
    assert R.image_weights_tag(["resnet50:random-seed0"]) == "none"
    assert R.image_weights_tag(["resnet50:imagenet1k_v2", "resnet50:random-seed0"]) == "none"
    assert R.image_weights_tag(["resnet50:file-rn50.pth-0123456789ab"]) == "file:rn50.pth"
    assert bin_names(DEFAULT_EDGES) == [
        "0",
        "1-2",
        "3-9",
        "10-29",
        "30-99",
        "100-299",
        "300-599",
        "600+",
    ]
    png = confusion_png(np.eye(8, dtype=int) * 3, bin_names(DEFAULT_EDGES), "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import ml.learn.registry, sys; print(sorted({'mlflow', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unreachable_tracking_server_fails_fast_in_one_line(monkeypatch, capsys):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(R.RegistryError, match="POSTFLOW_MLFLOW_URI") as exc:
        R.check_tracking(Settings(mlflow_uri=url))
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("POSTFLOW_MLFLOW_URI", url)
    assert T.main(["--start", "2024-01-01", "--end", "2024-01-02"]) == 2  # before any training
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MLflow tracking server") and "\n" not in err


# -- the whole path on a real server ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]
START, END = "2024-04-01", "2024-04-10"
N_POSTS = 600


def _write_lake(root) -> tuple[object, np.ndarray]:
    """posts_clean + features for N_POSTS posts over two days, each created and counted on its
    day (labelled at horizon 0); features carry the class (tools.synthetic, as in test_train).
    Returns (lake, features by post)."""
    from ml.lake.partitions import Lake

    X, y = class_features(N_POSTS, sep=1.5, dtype=np.float16)
    X = X.astype(np.float32)  # as stored in the lake
    ids = np.arange(1, N_POSTS + 1) * 7 + 3
    lake = Lake(str(root))
    for ds, sl in ((START, slice(0, N_POSTS // 2)), (END, slice(N_POSTS // 2, N_POSTS))):
        n = len(ids[sl])
        rows = {
            "id": ids[sl],
            "author_id": [1] * n,
            "caption": ["c"] * n,
            "image_uri": ["x"] * n,
            "hearts": [3] * n,
            "comment_count": np.asarray(DEFAULT_EDGES)[y[sl]] + 0,
            "created_at": [datetime.fromisoformat(ds)] * n,
            "updated_at": [datetime.fromisoformat(ds)] * n,
        }
        write_posts_clean(lake, ds, rows)
        write_features(lake, ds, ids[sl], X[sl])
    return lake, X


@pytest.fixture(scope="module")
def _world_cache() -> dict:
    return {}


@pytest.fixture
def world(_world_cache, mlflow_server, tmp_path_factory, capsys):
    """A lake, unique experiment/model names on the shared server, and the first model trained,
    logged, registered and promoted through the two CLI steps (`python -m ml train`, `python
    -m ml promote`). Built once per module; function-scoped only to read the CLIs' stdout."""
    if _world_cache:
        return _world_cache
    tmp = tmp_path_factory.mktemp("registry")
    lake, X = _write_lake(tmp / "lake")
    import mlflow.pyfunc  # noqa: F401  (warm the heavy imports while the server starts)
    import sklearn.linear_model  # noqa: F401
    import torch.optim  # noqa: F401

    tag = uuid.uuid4().hex[:8]
    env = {
        "POSTFLOW_LAKE": lake.root,
        "POSTFLOW_MLFLOW_URI": mlflow_server.uri,
        "POSTFLOW_MLFLOW_EXPERIMENT": f"post-engagement-{tag}",
        "POSTFLOW_REGISTERED_MODEL": f"post-engagement-{tag}",
        "POSTFLOW_LABEL_HORIZON_DAYS": "0",
    }
    out_dir = tmp / "model"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        capsys.readouterr()
        args = ["--start", START, "--end", END, "--ds", END, "--max-epochs", "25"]
        assert T.main([*args, "--out", str(out_dir)]) == 0
        stdout = capsys.readouterr().out.splitlines()
        assert len(stdout) == 1, stdout  # one JSON line, nothing else (MLflow's links -> stderr)
        trained = json.loads(stdout[0])
        version = str(trained["version"])
        assert P.main(["--version", version, "--start", START, "--end", END]) == 0
        stdout = capsys.readouterr().out.splitlines()
        assert len(stdout) == 1, stdout
        settings = Settings.load()
    _world_cache.update(
        settings=settings,
        lake=lake,
        X=X,
        trained=trained,
        decision=json.loads(stdout[0]),
        model=M.TrainedModel.load(out_dir),
        server=mlflow_server,
    )
    return _world_cache


@pytest.mark.integration
def test_train_logs_a_complete_run(world):
    s, trained = world["settings"], world["trained"]
    client = R.connect(s)
    run = client.get_run(trained["run_id"])
    assert run.info.experiment_id == trained["experiment_id"] and run.info.status == "FINISHED"
    assert trained["run_url"].endswith(
        f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    p, mt, tags = run.data.params, run.data.metrics, run.data.tags
    assert p["window_start"] == START and json.loads(p["edges"]) == list(DEFAULT_EDGES)
    assert p["n_classes"] == "8" and p["label_horizon_days"] == "0" and p["seed"] == "0"
    assert json.loads(p["image_models"]) == ["resnet50:random-seed0"]
    # what the model is made of, on the run and its version (the gate compares only like ones)
    assert (
        p["image_model"] == "resnet50:random-seed0"
        and p["text_model"] == json.loads(p["text_models"])[0]
    )
    target = "comments within 0 days of posting, 8 bins: 0, 1-2, 3-9, 10-29, 30-99, 100-299"
    assert p["target"].startswith(target) and tags["postflow.target"] == p["target"]
    mv = client.get_model_version(s.registered_model, str(trained["version"]))
    assert mv.tags["postflow.image_model"] == "resnet50:random-seed0"
    assert mv.tags["postflow.label_horizon_days"] == "0"
    for key in ("pca_dim", "hidden", "dropout", "lr", "weight_decay", "batch_size", "patience"):
        assert key in p
    for model in R.MODELS:
        for split in ("val", "test"):
            for metric in R.FINAL_METRICS:
                assert f"{model}_{split}_{metric}" in mt
    assert mt["mlp_test_macro_f1"] > mt["majority_test_macro_f1"] + 0.2
    # the baseline rule's interval: paired over the same test posts, around the point gap
    gap = mt["mlp_test_macro_f1"] - mt["logistic_test_macro_f1"]
    low, high = mt[f"{R.GAP_METRIC}_low"], mt[f"{R.GAP_METRIC}_high"]
    assert low < high and low - 1e-9 <= gap <= high + 1e-9, (low, gap, high)
    # the registered family is the one that won on validation, its scores under `model_`
    family = p["family"]
    assert tags["postflow.family"] == family and family in ("mlp", "logistic")
    other = "logistic" if family == "mlp" else "mlp"
    assert mt[f"{family}_val_macro_f1"] >= mt[f"{other}_val_macro_f1"]
    assert mt["model_test_macro_f1"] == mt[f"{family}_test_macro_f1"]
    assert mt["split_reserve_rows"] == 0 and mt["split_posts"] == N_POSTS  # split recorded
    assert (
        mt["split_groups"]
        == N_POSTS - mt["split_posts_in_multi_post_groups"] + mt["split_multi_post_groups"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"groups.json", "metrics.json", "label_histogram.json"} <= artifacts
    train_acc = client.get_metric_history(run.info.run_id, "train_accuracy")
    assert len(train_acc) == trained["epochs"] and all(0 <= x.value <= 1 for x in train_acc)
    assert mt["rows"] == N_POSTS and mt["missing_features"] == 0
    assert sum(mt[f"split_{s}_rows"] for s in ("train", "val", "test")) == N_POSTS
    assert "mlp_test_recall_class_0" in mt and mt["best_epoch"] >= 0 and mt["train_seconds"] > 0
    curve = client.get_metric_history(run.info.run_id, "val_loss")
    assert [x.step for x in curve] == list(range(trained["epochs"]))
    assert tags["postflow.window"] == f"{START}..{END}" and tags["postflow.ds"] == END
    assert tags["postflow.image_weights"] == "none" and tags["postflow.random_weights"] == "true"
    assert tags["postflow.code_version"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"label_histogram.json", "metrics.json", "confusion_matrix.png"} <= names
    hist = json.loads(
        open(client.download_artifacts(run.info.run_id, "label_histogram.json")).read()
    )
    assert hist["edges"] == list(DEFAULT_EDGES) and sum(hist["test"]) == mt["split_test_rows"]

    # version 1, alias challenger, key tags copied; the bytes are in the S3 bucket
    name = s.registered_model
    assert trained["version"] == 1
    mv = client.get_model_version_by_alias(name, "challenger")
    assert mv.version == "1" and mv.run_id == run.info.run_id
    assert mv.tags["postflow.image_weights"] == "none" and mv.tags["postflow.window"]
    keys = world["server"].artifact_keys()
    for suffix in ("confusion_matrix.png", "label_histogram.json", "model.npz", "MLmodel"):
        assert any(k.endswith(suffix) for k in keys), suffix
    assert not any(k.endswith(".pkl") for k in keys)  # weights as npz + json, code from `ml`


def test_first_model_must_beat_its_own_logistic_baseline():
    # measured before this rule: a 1-epoch MLP at 0.169 was promoted over its baseline at 0.467
    d = G.decide(m(0.169, 0.5), None, baseline_macro_f1=0.467, challenger_version=1)
    assert not d.promoted and "below its own logistic baseline 0.4670" in d.reason
    d = G.decide(m(0.50, 0.5), None, baseline_macro_f1=0.467)
    assert d.promoted and "logistic baseline 0.4670" in d.reason and d.baseline_macro_f1 == 0.467


def test_the_baseline_rule_is_stated_with_its_interval():
    """With the paired interval of (MLP - logistic) from training, a point estimate below the
    baseline but inside the noise passes, saying so; an interval wholly below 0 refuses."""
    noisy = G.Interval(-0.041, 0.022)  # MLP 0.450 vs logistic 0.460: not credibly worse
    d = G.decide(m(0.450, 0.5), None, baseline_macro_f1=0.460, baseline_gap=noisy)
    assert d.promoted, d.reason
    assert "not credibly below its logistic baseline 0.4600 (gap [-0.0410, 0.0220]" in d.reason
    assert d.baseline_gap_ci == [-0.041, 0.022]
    worse = G.Interval(-0.090, -0.012)
    d = G.decide(m(0.410, 0.5), None, baseline_macro_f1=0.460, baseline_gap=worse)
    assert not d.promoted and "credibly below its own logistic baseline 0.4600" in d.reason
    assert "[-0.0900, -0.0120]" in d.reason


def test_a_backfill_never_replaces_a_newer_champion():
    champ = m(0.40, 0.5, 0.5)
    kw = {"champion_version": 4, "champion_window_end": "2026-11-20"}
    d = G.decide(m(0.60, 0.6, 0.6), champ, window_end="2026-10-31", **kw)
    assert not d.promoted and "older than champion v4's 2026-11-20" in d.reason
    assert G.decide(m(0.60, 0.6, 0.6), champ, window_end="2026-11-21", **kw).promoted
    # even after a change of bin edges (no comparison of scores), recency holds
    d = G.decide(m(0.60, 0.6), None, window_end="2026-10-31", rebaseline="re-baselining", **kw)
    assert not d.promoted and d.reason.startswith("re-baselining")


def _predictions(n: int, accuracy: float, seed: int, k: int = 8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return y, np.where(rng.random(n) < accuracy, y, rng.integers(0, k, n))


def test_paired_bootstrap_matches_the_point_metric_and_pairs_the_draws():
    y, a = _predictions(400, 0.6, 0)
    boot = G.paired_bootstrap(y, a, a, 8, samples=300, confidence=0.9)
    point = M.metrics_from_predictions(y, a, 8)["macro_f1"]
    assert boot.challenger.low < point < boot.challenger.high
    assert boot.improvement == G.Interval(0.0, 0.0)  # the same predictions: no gain in any draw
    cm = np.asarray(M.metrics_from_predictions(y, a, 8)["confusion_matrix"])
    assert M.macro_f1_of_counts(cm) == pytest.approx(point)


def test_a_lucky_challenger_is_rejected_and_a_real_gain_promoted():
    """On 300 posts, a challenger a hair better by luck does not move the champion; one that is
    clearly better does. Without the bootstrap both pass the point rule."""
    y, champ_pred = _predictions(300, 0.50, 1)
    wrong, right = np.flatnonzero(champ_pred != y), np.flatnonzero(champ_pred == y)
    lucky = champ_pred.copy()  # disagrees on 30 posts: 17 fixed, 13 broken (a net +4 by chance)
    lucky[wrong[:17]] = y[wrong[:17]]
    lucky[right[:13]] = (y[right[:13]] + 1) % 8
    better = champ_pred.copy()
    better[wrong[: len(wrong) // 2]] = y[wrong[: len(wrong) // 2]]
    champ = M.metrics_from_predictions(y, champ_pred, 8)
    for pred, credible in ((lucky, False), (better, True)):
        c = M.metrics_from_predictions(y, pred, 8)
        assert c["macro_f1"] > champ["macro_f1"] and G.decide(c, champ).promoted
        boot = G.paired_bootstrap(y, pred, champ_pred, 8, samples=500, confidence=0.9)
        d = G.decide(c, champ, bootstrap=boot, champion_version=1)
        assert d.promoted is credible, d.reason
        assert d.improvement_ci == boot.improvement.to_list() and d.confidence == 0.9
        assert credible or "no credible improvement" in d.reason


def test_recall_rule_ignores_classes_too_small_to_measure():
    champ = m(0.40, 0.50, 0.40)
    chal = m(0.50, 0.90, 0.0) | {"confusion_matrix": [[90, 10], [5, 0]]}  # class 1: 5 posts
    assert not G.decide(chal, champ).promoted  # measured on 5 posts, recall 0.4 -> 0.0 rejects
    d = G.decide(chal, champ, min_class_support=20)
    assert d.promoted, d.reason


@pytest.mark.integration
def test_first_model_becomes_champion_and_serves_the_same_predictions(world):
    import mlflow.pyfunc
    import pandas as pd

    s, d = world["settings"], world["decision"]
    assert d["promoted"] and d["reason"].startswith("first model")
    assert d["challenger_version"] == 1 and d["champion_version"] is None
    client = R.connect(s)
    assert client.get_model_version_by_alias(s.registered_model, "champion").version == "1"
    served = mlflow.pyfunc.load_model(f"models:/{s.registered_model}@champion")
    X = world["X"][:50]
    p = served.predict(X)
    assert p.dtype == np.float32 and p.shape == (50, 8)
    np.testing.assert_array_equal(p, world["model"].predict_proba(X))
    np.testing.assert_array_equal(served.predict(pd.DataFrame(X)), p)
    loaded, mv = R.load_champion(s)
    assert mv.version == "1"
    np.testing.assert_array_equal(loaded.predict(X), p)
    tags = client.get_model_version(s.registered_model, "1").tags
    assert tags["postflow.promotion"] == "promoted" and tags["postflow.champion_version"] == ""
    assert float(tags["postflow.challenger_macro_f1"]) == pytest.approx(d["challenger_macro_f1"])
    run = client.get_run(world["trained"]["run_id"])
    assert run.data.tags["postflow.promotion"] == "promoted"
    assert run.data.metrics["gate_challenger_macro_f1"] == pytest.approx(d["challenger_macro_f1"])
    # the gate scored exactly the training run's test split
    assert d["challenger_macro_f1"] == pytest.approx(run.data.metrics["model_test_macro_f1"])


@pytest.mark.integration
def test_the_registered_model_loads_and_scores_without_torch_or_postflow(world, tmp_path):
    """What the weekly report in the Airflow image, or any consumer, does: load
    models:/<name>@champion in a process where torch and postflow cannot be imported."""
    import subprocess
    import sys

    s = world["settings"]
    X = world["X"][:20]
    np.save(tmp_path / "X.npy", X)
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"torch", "ml", "postflow_airflow", "sklearn"}}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
import mlflow.pyfunc, numpy as np
mlflow.set_registry_uri({s.mlflow_uri!r}); mlflow.set_tracking_uri({s.mlflow_uri!r})
model = mlflow.pyfunc.load_model("models:/{s.registered_model}@champion")
np.save({str(tmp_path / "p.npy")!r}, model.predict(np.load({str(tmp_path / "X.npy")!r})))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ml", "sklearn")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # the same float32 arithmetic, in another process: BLAS may sum in another order there
    served, here = np.load(tmp_path / "p.npy"), world["model"].predict_proba(X)
    np.testing.assert_allclose(served, here, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(served.argmax(1), here.argmax(1))


@pytest.mark.integration
def test_worse_challenger_is_rejected_and_the_champion_stays(world):
    s, lake = world["settings"], world["lake"]
    data = DS.load_dataset(lake, START, END, horizon_days=0)
    data.y = np.random.default_rng(1).permutation(data.y)  # labels unrelated to features
    result = T.run_training(data, M.TrainConfig(max_epochs=5, seed=0))
    result.family, result.model = "mlp", result.mlp  # the family the baseline rule applies to
    run_id = R.log_training(result, s, ds=END, code_version="test")
    assert R.register_challenger(run_id, s) == 2
    client = R.connect(s)
    assert client.get_model_version_by_alias(s.registered_model, "challenger").version == "2"

    d = P.promote(s, lake, "challenger", START, END)
    assert not d.promoted and d.challenger_version == 2 and d.champion_version == 1
    assert "no credible improvement" in d.reason and d.champion_macro_f1 > d.challenger_macro_f1
    assert d.improvement_ci[1] < 0 and d.champion_ci and d.challenger_ci
    assert client.get_model_version_by_alias(s.registered_model, "champion").version == "1"
    tags = client.get_model_version(s.registered_model, "2").tags
    assert tags["postflow.promotion"] == "rejected" and tags["postflow.champion_version"] == "1"
    assert tags["postflow.decision_reason"] == d.reason and tags["postflow.decided_at"]
    assert float(tags["postflow.champion_macro_f1"]) == pytest.approx(d.champion_macro_f1)
    assert json.loads(tags["postflow.improvement_ci"]) == pytest.approx(d.improvement_ci, abs=1e-6)
    assert json.loads(tags["postflow.champion_macro_f1_ci"]) == pytest.approx(
        d.champion_ci, abs=1e-6
    )
    run = client.get_run(run_id)
    assert run.data.tags["postflow.promotion"] == "rejected"
    assert run.data.tags["postflow.code_version"] == "test"
    assert run.data.metrics["gate_champion_macro_f1"] == pytest.approx(d.champion_macro_f1)
    # the baseline rule, stated with the interval training measured on the same test posts
    gap = [run.data.metrics[f"{R.GAP_METRIC}_{end}"] for end in ("low", "high")]
    assert d.baseline_gap_ci == pytest.approx(gap) and gap == pytest.approx(
        result.baseline_gap.to_list()
    )
    assert json.loads(tags["postflow.baseline_gap_ci"]) == pytest.approx(gap, abs=1e-6)

    again = P.promote(s, lake, 1, START, END)  # re-running for the champion changes nothing
    assert again.promoted and "already the champion" in again.reason
    assert client.get_model_version_by_alias(s.registered_model, "champion").version == "1"


def test_training_promotion_and_report_hold_out_the_same_test_posts(tmp_path):
    """One split builder: the posts `run_training` tests on are the posts the promotion gate
    scores and the weekly report evaluates the champion on, for the same window."""
    from ml.learn.splits import assign_splits
    from ml.report import data as report_data

    lake, X = _write_lake(tmp_path / "lake")
    week = report_data.Week.of(END)  # 2024-W15: Monday 04-08 to Sunday 04-14
    window = ("2024-04-01", week.last_day.isoformat())
    settings = Settings(lake=lake.root, train_window_days=14, label_horizon_days=0)
    assert report_data.training_window(settings, week) == window

    result = T.run_training(
        DS.load_dataset(lake, *window, DEFAULT_EDGES, 0), M.TrainConfig(max_epochs=1)
    )
    trained_on_test = result.data.post_ids[result.data.part("test")]
    gate = P.heldout_split(lake, *window, DEFAULT_EDGES, 0)
    split = report_data.label_split(lake, settings, week, DEFAULT_EDGES)
    report_test, report_y, missing = report_data.test_features(lake, split)

    assert len(trained_on_test) == result.split_sizes["test"] > 0
    assert gate.post_ids.tolist() == trained_on_test.tolist()
    assert split.ids[split.split == "test"].tolist() == trained_on_test.tolist()
    assert missing == 0 and report_test.tolist() == gate.X.tolist()
    assert report_y.tolist() == gate.y.tolist()
    # and it is the rule of ml.learn.splits, applied to every labelled post with features
    ids = np.arange(1, N_POSTS + 1) * 7 + 3
    assert trained_on_test.tolist() == ids[assign_splits(ids, len(ids)) == "test"].tolist()


def test_versions_registered_before_ml_serving_still_load(tmp_path):
    """A format-1 model directory (an MLP, arrays under "mlp.") served through the entry point
    older versions were logged with: `from ml.learn.registry import PostEngagementModel`."""
    from types import SimpleNamespace

    X, y = class_features(300, seed=2)
    model = M.train_model(X[:200], y[:200], X[200:], y[200:], M.TrainConfig(max_epochs=3))
    path = tmp_path / "v1"
    path.mkdir()
    np.savez(
        path / "model.npz", W=model.W, b=model.b, **{f"mlp.{k}": v for k, v in model.state.items()}
    )
    meta = {"arch": model.arch, "history": [], "best_epoch": 0, "config": {}, "format": 1}
    (path / "model.json").write_text(json.dumps(meta))
    from ml.learn.registry import PostEngagementModel

    served = PostEngagementModel()
    served.load_context(SimpleNamespace(artifacts={"model_dir": str(path)}))
    np.testing.assert_array_equal(served.predict(None, X[200:]), model.predict_proba(X[200:]))


def test_the_bootstrap_resamples_repost_groups_not_posts():
    """A challenger equal to the champion except on one photo reposted 60 times, which it gets
    right: 60 posts, but one piece of evidence. Resampling posts calls the gain credible;
    resampling groups (the split's group keys) does not. Planted defect (groups ignored): the
    lucky challenger is promoted."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 8, 360)
    champ_pred = np.where(rng.random(360) < 0.5, y, (y + 1) % 8)
    pred = champ_pred.copy()
    pred[:60] = y[:60]
    champ_pred[:60] = (y[:60] + 1) % 8
    groups = np.array(["photo:a"] * 60 + [f"post:{i}" for i in range(60, 360)], dtype=object)
    c, h = M.metrics_from_predictions(y, pred, 8), M.metrics_from_predictions(y, champ_pred, 8)
    by_post = G.paired_bootstrap(y, pred, champ_pred, 8, samples=400)
    assert G.decide(c, h, bootstrap=by_post).promoted  # what resampling posts concluded
    by_group = G.paired_bootstrap(y, pred, champ_pred, 8, samples=400, groups=groups)
    d = G.decide(c, h, bootstrap=by_group, champion_version=1)
    assert not d.promoted and "no credible improvement" in d.reason
    assert by_group.improvement.low <= 0.0 < by_post.improvement.low


def _facts(**kw):
    base = {
        "edges": (0, 1, 3),
        "window_end": "2026-11-20",
        "family": "mlp",
        "logistic_test_macro_f1": None,
        "horizon_days": 7,
        "image_model": "resnet50:file-w.pth-0123456789ab",
        "text_model": "all-MiniLM-L6-v2",
    }
    return P.RunFacts(**(base | kw))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"edges": (0, 2, 5)}, "bin edges [0, 2, 5] vs [0, 1, 3]"),
        ({"horizon_days": 3}, "label horizon (days) 3 vs 7"),
        ({"image_model": "resnet50:file-w.pth-ffffffffffff"}, "image model"),
        ({"text_model": "other-minilm"}, "text model"),
        ({"horizon_days": None}, "label horizon (days) None vs 7"),  # a run from before
    ],
)
def test_a_challenger_of_another_target_or_encoders_is_refused_unless_rebaselining(change, named):
    champ = _facts()
    assert P.lineage_check(_facts(), champ, 4, rebaseline=False) == ("", "")
    rebase, refused = P.lineage_check(_facts(**change), champ, 4, rebaseline=False)
    assert not rebase and named in refused and "POSTFLOW_REBASELINE=true" in refused
    d = G.decide(m(0.9, 0.9, 0.9), None, incomparable=refused, champion_version=4)
    assert not d.promoted and "not comparable with champion v4" in d.reason and not d.rebaseline
    rebase, refused = P.lineage_check(_facts(**change), champ, 4, rebaseline=True)
    assert not refused and named in rebase
    d = G.decide(m(0.9, 0.9, 0.9), None, rebaseline=rebase, champion_version=4)
    assert d.promoted and d.rebaseline and d.reason.startswith("re-baselining")
