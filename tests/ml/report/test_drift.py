"""Drift that does not cry wolf (issue 20 §4): PSI alarms only above the noise floor that
resampling the reference against itself reaches at the same sample sizes, with a minimum
sample; the embeddings compared are a seeded random sample. Small, seeded."""

from __future__ import annotations

import numpy as np

from ml.features.store import sample_features
from ml.lake.partitions import Lake
from ml.report import drift as D
from tools.synthetic import write_features

PRIOR = np.array([0.30, 0.22, 0.17, 0.12, 0.09, 0.05, 0.03, 0.02])
THRESHOLD = 0.2


def test_a_small_week_like_the_reference_does_not_alarm_and_a_shifted_one_does():
    rng = np.random.default_rng(0)
    ref = rng.choice(8, 4000, p=PRIOR)
    same = rng.choice(8, 40, p=PRIOR)  # nothing changed: a quiet week of 40 posts
    psi, _ = D.psi(np.bincount(ref, minlength=8), np.bincount(same, minlength=8))
    assert psi > THRESHOLD  # the old rule (PSI > threshold) alarmed on chance alone
    floor = D.label_noise_floor(ref, len(same), 8)
    assert floor > psi and not D.alarms(psi, floor, THRESHOLD, len(ref), len(same), 30)
    shifted = rng.choice(8, 40, p=PRIOR[::-1])  # the label mix really moved
    psi, _ = D.psi(np.bincount(ref, minlength=8), np.bincount(shifted, minlength=8))
    assert D.alarms(psi, floor, THRESHOLD, len(ref), len(shifted), 30)
    assert not D.alarms(psi, floor, THRESHOLD, len(ref), len(shifted), 50)  # too few posts


def test_embedding_drift_of_a_small_week_is_judged_against_its_noise_floor():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, (2000, 16))
    same = rng.normal(0, 1, (30, 16))
    d = D.embedding_drift(ref, same)
    assert d["psi"] > THRESHOLD  # the old rule alarmed
    assert D.embedding_alarm(d, THRESHOLD, 20) is None
    longer = rng.normal(0, 1.6, (30, 16))  # vectors 60 % longer: a real change
    assert D.embedding_alarm(D.embedding_drift(ref, longer), THRESHOLD, 20) == "length"
    assert D.embedding_alarm(D.embedding_drift(ref, longer), THRESHOLD, 50) is None


def test_the_embedding_sample_is_random_and_seeded(tmp_path):
    """Row i of the day carries i: the sample spreads over the day instead of taking the first
    rows (the extract's updated_at order), and a seed gives the same sample."""
    lake = Lake(str(tmp_path / "lake"))
    n = 1000
    X = np.zeros((n, 2432), np.float32)
    X[:, 0] = np.arange(n)
    write_features(lake, "2024-03-01", np.arange(1, n + 1), X)
    img, _ = sample_features(lake, ["2024-03-01"], 100, seed=0)
    rows = np.sort(img[:, 0])
    assert len(rows) == 100 and len(set(rows.tolist())) == 100
    assert rows.max() > 500  # planted defect (first rows): max 99
    again, _ = sample_features(lake, ["2024-03-01"], 100, seed=0)
    np.testing.assert_array_equal(np.sort(again[:, 0]), rows)
