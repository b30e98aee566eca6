"""Labels, splits and the classifier on small seeded synthetic data."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta

import numpy as np
import pytest

from ml.learn import bins as B
from ml.learn import dataset as DS
from ml.learn import labels as L
from ml.learn import model as M
from ml.learn import splits as SP
from ml.learn import train as T
from tools.synthetic import class_features, write_features, write_posts_clean

# -- labels -------------------------------------------------------------------------------------


def test_bins_at_edges():
    cases = {0: 0, 1: 1, 2: 1, 3: 2, 9: 2, 10: 3, 299: 5, 300: 6, 599: 6, 600: 7, 10_000: 7}
    for count, cls in cases.items():
        assert B.bin_labels(count) == cls, count
    assert B.bin_labels(np.array(list(cases))).tolist() == list(cases.values())
    with pytest.raises(ValueError):
        B.bin_labels(1, edges=(0, 5, 5))


def test_tune_bins_monotone_and_nice():
    rng = np.random.default_rng(0)
    counts = np.concatenate([np.zeros(3000), rng.lognormal(2.5, 1.6, 7000).round()])
    edges = B.tune_bins(counts)
    assert len(edges) == 8 and edges[0] == 0
    assert all(a < b for a, b in zip(edges, edges[1:], strict=False))
    assert all(B._nice(e) == e for e in edges[1:])
    hist = B.histogram(B.bin_labels(counts, edges))
    assert min(hist) > 0  # every proposed bin is populated
    assert list(B.tune_bins(np.zeros(100))) == sorted(set(B.tune_bins(np.zeros(100))))


def test_cutoff_is_the_end_of_the_day():
    assert L.cutoff_of("2024-05-09") == datetime(2024, 5, 10)


# -- on synthetic features (tools.synthetic) ----------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    X, y = class_features(600)
    tr, va, te = slice(0, 360), slice(360, 480), slice(480, 600)
    cfg = M.TrainConfig(max_epochs=60, patience=8, seed=0)
    model = M.train_model(X[tr], y[tr], X[va], y[va], cfg)
    base = M.train_baselines(X[tr], y[tr], model, cfg)
    return X, y, te, model, base, cfg


def test_mlp_beats_majority_and_logistic_is_sane(trained):
    X, y, te, model, base, _ = trained
    m = M.evaluate(model, X[te], y[te])
    maj = M.evaluate(base["majority"], X[te], y[te])
    lr = M.evaluate(base["logistic"], X[te], y[te])
    assert maj["accuracy"] == pytest.approx((y[te] == np.bincount(y[:360]).argmax()).mean())
    assert m["macro_f1"] > maj["macro_f1"] + 0.3
    assert lr["macro_f1"] > maj["macro_f1"] + 0.2
    assert len(m["per_class_recall"]) == 8 and np.array(m["confusion_matrix"]).sum() == 120


def test_early_stopping_stops_and_keeps_the_best_epoch():
    """Labels unrelated to the features: validation loss turns up quickly and training stops."""
    X, _ = class_features(300, 4)
    y = np.random.default_rng(4).integers(0, 8, 300)
    cfg = M.TrainConfig(max_epochs=300, patience=5, seed=0, lr=3e-3)
    model = M.train_model(X[:200], y[:200], X[200:], y[200:], cfg)
    hist = model.history
    assert len(hist) < 100
    assert len(hist) == model.best_epoch + cfg.patience + 1
    assert hist[model.best_epoch]["val_loss"] == min(h["val_loss"] for h in hist)
    assert {"epoch", "train_loss", "val_loss", "val_accuracy"} <= hist[0].keys()


def test_predict_proba_and_round_trips(trained, tmp_path):
    X, _, te, model, _, _ = trained
    p = model.predict_proba(X[te])
    assert p.shape == (120, 8) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    loaded = M.TrainedModel.load(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict_proba(X[te]), p)
    unpickled = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(unpickled.predict_proba(X[te]), p)
    with pytest.raises(ValueError, match="2432"):
        model.predict_proba(X[:3, :100])


def test_training_is_seeded():
    X, y = class_features(200, 3)
    cfg = M.TrainConfig(max_epochs=5, seed=1)
    a = M.train_model(X[:150], y[:150], X[150:], y[150:], cfg)
    b = M.train_model(X[:150], y[:150], X[150:], y[150:], cfg)
    np.testing.assert_array_equal(a.predict_proba(X[150:]), b.predict_proba(X[150:]))


def test_balanced_class_weights_lift_minority_recall():
    """86 % of one class, weak signal: unweighted training all but ignores the other classes."""
    priors = np.array([0.86, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02])
    X, y = class_features(1200, 5, sep=0.5, priors=priors)
    tr, va, te = slice(0, 700), slice(700, 900), slice(900, 1200)
    minority, balanced = {}, {}
    for cw in ("balanced", None):
        cfg = M.TrainConfig(class_weight=cw, seed=0, patience=8)
        m = M.evaluate(M.train_model(X[tr], y[tr], X[va], y[va], cfg), X[te], y[te])
        minority[cw] = np.mean([r for r in m["per_class_recall"][1:] if r is not None])
        balanced[cw] = m["balanced_accuracy"]
    assert minority["balanced"] > minority[None] + 0.1
    assert balanced["balanced"] > balanced[None]
    w = M.class_weights(y[tr], 8)
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y[tr])
    np.testing.assert_allclose(
        w[present], compute_class_weight("balanced", classes=present, y=y[tr]), rtol=1e-6
    )


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_metrics_agree_with_sklearn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 300)  # class 7 never occurs
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 8, 300))
    m = M.metrics_from_predictions(y, pred, 8)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["per_class_recall"][7] is None
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(8)).tolist()


def test_run_training_splits_trains_and_scores_all_three():
    X, y = class_features(500, 8)
    ids = np.arange(500) * 31 + 7
    data = DS.TrainingData(
        X,
        y,
        ids,
        y * 3,
        SP.assign_splits(ids, len(ids)),
        B.DEFAULT_EDGES,
        ["m"],
        ["t"],
        0,
        ("2024-01-01", "2024-01-31"),
    )
    res = T.run_training(data, M.TrainConfig(max_epochs=40, seed=0))
    assert sum(res.split_sizes.values()) == 500 and 60 < res.split_sizes["test"] < 140
    assert set(res.metrics) == {"mlp", "majority", "logistic"}
    assert res.metrics["mlp"]["test"]["macro_f1"] > res.metrics["majority"]["test"]["macro_f1"]
    assert sum(res.label_histogram["train"]) == res.split_sizes["train"]
    assert res.summary()["rows"] == 500


# -- dataset from the lake ----------------------------------------------------------------------


def test_load_dataset_labels_at_the_horizon_with_the_features_as_posted(
    tmp_path, monkeypatch, capsys
):
    from ml.lake.partitions import Lake

    lake = Lake(str(tmp_path / "lake"))
    t0 = datetime(2024, 4, 1, 8)

    def clean(ds, rows):
        write_posts_clean(lake, ds, {k: [r[k] for r in rows] for k in rows[0]})

    def feats(ds, ids, value):
        write_features(lake, ds, ids, np.full((len(ids), 2432), value))

    def post(i, cc, hearts=1, created=t0, updated=t0 + timedelta(hours=1)):
        return dict(
            id=i,
            author_id=1,
            caption="c",
            image_uri="x",
            hearts=hearts,
            comment_count=cc,
            created_at=created,
            updated_at=updated,
        )

    clean("2024-04-01", [post(1, 0), post(2, 5), post(3, 50, hearts=0), post(4, 2)])
    feats("2024-04-01", [1, 2, 3], 1.0)  # post 4 was skipped at embed
    for d in range(2, 10):  # every day up to the horizon (04-08 08:00) extracted
        clean(f"2024-04-{d:02d}", [post(100 + d, 0, created=datetime(2024, 3, 1))])
    clean("2024-04-05", [post(2, 30, updated=datetime(2024, 4, 5, 12))])  # before the horizon
    feats("2024-04-05", [2], 2.0)
    clean(
        "2024-04-10",
        [
            post(2, 700, updated=datetime(2024, 4, 10, 12)),  # after it: not the label
            post(5, 1, created=datetime(2024, 4, 9), updated=datetime(2024, 4, 10)),  # too young
        ],
    )
    feats("2024-04-10", [2, 5], 3.0)
    data = DS.load_dataset(lake, "2024-04-01", "2024-04-10", horizon_days=7)
    order = np.argsort(data.post_ids)  # rows are laid out by split, then post id
    assert data.post_ids[order].tolist() == [1, 2]  # 3: no hearts; 4: no features; 5: young
    assert data.comment_count[order].tolist() == [0, 30] and data.y[order].tolist() == [0, 4]
    assert data.X.shape == (2, 2432) and data.X.dtype == np.float32
    assert (data.X == 1.0).all()  # features of the post as posted (04-01)
    assert data.missing_features == 1 and data.image_models == ["resnet50:random-seed0"]

    # tune-bins reads the same labels (posts 1, 2 and 4: horizon passed, hearts >= 1)
    monkeypatch.setenv("POSTFLOW_LAKE", lake.root)
    monkeypatch.delenv("POSTFLOW_CONFIG", raising=False)
    assert L.main(["--start", "2024-04-01", "--end", "2024-04-10", "--n-bins", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 3 and len(out["proposed_edges"]) == 3
    assert out["target"].startswith("comments within 7 days of posting, 8 bins: 0, 1-2, 3-9")
    assert out["setting"] == "POSTFLOW_BIN_EDGES=" + ",".join(map(str, out["proposed_edges"]))
    # the edges in force come from the setting, and --n-bins defaults to their number
    monkeypatch.setenv("POSTFLOW_BIN_EDGES", "0,5,50")
    assert L.main(["--start", "2024-04-01", "--end", "2024-04-10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["current_edges"] == [0, 5, 50] and len(out["proposed_edges"]) == 3


def test_numpy_serving_matches_the_torch_network(trained):
    """The served MLP is a numpy port of the torch network: same probabilities."""
    import torch

    X, _, te, model, _, _ = trained
    net = M._mlp(model.arch)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state.items()})
    with torch.inference_mode():
        z = torch.from_numpy(X[te] @ model.W + model.b)
        want = torch.softmax(net.eval()(z), dim=1).numpy()
    np.testing.assert_allclose(model.predict_proba(X[te]), want, rtol=1e-5, atol=1e-6)
    assert model.history[0]["train_accuracy"] > 0  # the learning curve's training accuracy


def test_logistic_family_serves_what_scikit_learn_predicts(trained, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y, te, model, base, _ = trained
    assert base["logistic"].family == "logistic"
    z = X[:360] @ model.W + model.b
    for classes in (8, 2):  # multinomial, and the binary case (one logit)
        keep = y[:360] < classes
        clf = LogisticRegression(max_iter=1000).fit(z[keep], y[:360][keep])
        served = M.logistic_model(model.W, model.b, clf, 8)
        want = np.zeros((len(te_rows := X[te]), 8))
        want[:, clf.classes_] = clf.predict_proba(te_rows @ model.W + model.b)
        np.testing.assert_allclose(served.predict_proba(te_rows), want, atol=1e-5)
        loaded = M.TrainedModel.load(served.save(tmp_path / f"logistic{classes}"))
        assert loaded.family == "logistic"
        np.testing.assert_array_equal(loaded.predict_proba(te_rows), served.predict_proba(te_rows))


def test_training_registers_the_family_that_wins_on_validation():
    metrics = {
        "mlp": {"val": {"macro_f1": 0.171}},
        "logistic": {"val": {"macro_f1": 0.212}},
    }
    assert T.pick_family(metrics) == "logistic"
    metrics["mlp"]["val"]["macro_f1"] = 0.212  # a tie keeps the MLP
    assert T.pick_family(metrics) == "mlp"
    X, y = class_features(400, seed=9, sep=0.3)  # weak signal, few posts
    ids = np.arange(400) * 13 + 1
    data = DS.TrainingData(
        X, y, ids, y, SP.assign_splits(ids, 400), B.DEFAULT_EDGES, ["m"], ["t"], 0, ("a", "b")
    )
    res = T.run_training(data, M.TrainConfig(max_epochs=30, seed=0))
    assert res.family == T.pick_family(res.metrics)
    assert res.model is (res.mlp if res.family == "mlp" else res.baselines["logistic"])
