"""Drift of a week against the four weeks before it: has what the model sees moved lately?

The weekly report compares this week's matured labels and this week's embeddings with those of
the four weeks before the week (`DRIFT_REFERENCE_WEEKS`). Not with the champion's training
window: a model trained on data up to the week's end has the week in its window, which would
compare the week with itself and hide its change. Everything is a population stability index
(PSI) over the same bins, flagged with a sentence a reader can act on only when it is above both
`settings.drift_psi_threshold` and its *noise floor*, with at least `settings.drift_min_sample`
rows on each side. PSI grows with sampling noise as samples shrink (a quiet week of 40 posts
against 4 weeks of 2,000 can pass 0.2 with nothing changed), so the floor is measured at the
same sizes: the reference resampled against itself (`NOISE_RESAMPLES` times, seeded), its
`NOISE_QUANTILE`. The embeddings compared are a seeded random sample of each period's rows, not
the first rows of each file; the labels are at the training horizon (`ml.learn.labels`).
Statistics first (`psi`, `quantile_bins`, `binned`, `embedding_drift`, `alarms`), then what the
report shows (`drift_section`). Read-only, keyed by an ISO week.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np

from ml.features.store import sample_features
from ml.learn.bins import bin_labels, bin_names, histogram
from ml.learn.labels import load_labels
from ml.weeks import Week

DRIFT_SAMPLE_ROWS = 10_000  # embeddings read per window for the drift statistics
DRIFT_REFERENCE_WEEKS = 4  # the week is compared with this many weeks before it
DRIFT_BINS = 10
PSI_EPS = 1e-4
NOISE_RESAMPLES = 200  # resamples of the reference against itself, for the noise floor
NOISE_QUANTILE = 0.95  # the floor: PSI that chance alone reaches 1 time in 20 at these sizes


# -- statistics ---------------------------------------------------------------------------------


def psi(reference: Sequence[float], current: Sequence[float]) -> tuple[float, list[float]]:
    """Population stability index of two histograms (counts or shares over the same bins):
    sum over bins of (q - p) * ln(q / p), shares floored at 1e-4. Returns (total, per bin)."""
    p = np.asarray(reference, np.float64)
    q = np.asarray(current, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("psi needs two non-empty histograms over the same bins")
    p = np.maximum(p / p.sum(), PSI_EPS)
    q = np.maximum(q / q.sum(), PSI_EPS)
    per_bin = (q - p) * np.log(q / p)
    return float(per_bin.sum()), [float(v) for v in per_bin]


def quantile_bins(reference: np.ndarray, n_bins: int = DRIFT_BINS) -> np.ndarray:
    """Inner edges of `n_bins` equal-mass bins of the reference (duplicates dropped)."""
    qs = np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(qs)


def binned(values: np.ndarray, inner_edges: np.ndarray) -> list[int]:
    idx = np.searchsorted(inner_edges, values, side="right")
    return np.bincount(idx, minlength=len(inner_edges) + 1).tolist()


def _top_component(X: np.ndarray, iters: int = 30, seed: int = 0) -> np.ndarray:
    """First principal direction of X (rows centred by the caller), by power iteration."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(X.shape[1]).astype(np.float64)
    v /= np.linalg.norm(v)
    for _ in range(iters):
        w = X.T @ (X @ v)
        n = np.linalg.norm(w)
        if n == 0:
            break
        v = w / n
    return v


def _floor(values: list[float]) -> float:
    return float(np.quantile(values, NOISE_QUANTILE)) if values else 0.0


def label_noise_floor(ref_y: np.ndarray, n_week: int, n_classes: int, seed: int = 0) -> float:
    """The PSI that two samples of the reference labels, of the reference's and the week's
    sizes, reach by chance (`NOISE_QUANTILE` of `NOISE_RESAMPLES` draws)."""
    rng = np.random.default_rng(seed)
    ref_y = np.asarray(ref_y, np.int64)
    out = []
    for _ in range(NOISE_RESAMPLES):
        a = rng.choice(ref_y, len(ref_y))
        b = rng.choice(ref_y, n_week)
        out.append(psi(histogram(a, n_classes), histogram(b, n_classes))[0])
    return _floor(out)


def _psi_of_values(r: np.ndarray, c: np.ndarray) -> float:
    edges = quantile_bins(r)
    return psi(binned(r, edges), binned(c, edges))[0]


def _values_noise_floor(r: np.ndarray, n_week: int, rng: np.random.Generator) -> float:
    return _floor(
        [
            _psi_of_values(rng.choice(r, len(r)), rng.choice(r, n_week))
            for _ in range(NOISE_RESAMPLES)
        ]
    )


def embedding_drift(ref: np.ndarray, cur: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """PSI of the vector norm and of the projection on the reference's first principal
    direction (deciles of the reference), each with its noise floor at these sample sizes, and
    the cosine between the two mean vectors."""
    ref = ref.astype(np.float64)
    cur = cur.astype(np.float64)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"reference_n": int(len(ref)), "week_n": int(len(cur))}
    mu = ref.mean(0)
    pc1 = _top_component(ref - mu)
    for name, r, c in (
        ("norm", np.linalg.norm(ref, axis=1), np.linalg.norm(cur, axis=1)),
        ("pc1", (ref - mu) @ pc1, (cur - mu) @ pc1),
    ):
        out[f"psi_{name}"] = _psi_of_values(r, c)
        out[f"noise_floor_{name}"] = _values_noise_floor(r, len(c), rng)
    mc = cur.mean(0)
    denom = np.linalg.norm(mu) * np.linalg.norm(mc)
    out["mean_cosine"] = float(mu @ mc / denom) if denom > 0 else None
    out["psi"] = max(out["psi_norm"], out["psi_pc1"])
    return out


def alarms(
    value: float, floor: float, threshold: float, n_ref: int, n_week: int, min_n: int
) -> bool:
    """Whether a PSI is drift: above the threshold and above its noise floor, with at least
    `min_n` rows on each side."""
    return min(n_ref, n_week) >= min_n and value > max(threshold, floor)


def embedding_alarm(d: dict[str, Any], threshold: float, min_n: int) -> str | None:
    """Which statistic of an `embedding_drift` alarms ("length", "main direction"), or None."""
    hits = [
        (d[f"psi_{k}"] - max(threshold, d[f"noise_floor_{k}"]), label)
        for k, label in (("norm", "length"), ("pc1", "main direction"))
        if alarms(
            d[f"psi_{k}"], d[f"noise_floor_{k}"], threshold, d["reference_n"], d["week_n"], min_n
        )
    ]
    return max(hits)[1] if hits else None


# -- the week against the weeks before it -------------------------------------------------------


def _labels(lake: Any, start: str, end: str, horizon_days: int, through: str):
    """`ml.learn.labels.load_labels`, or None when the window has no posts_clean partition."""
    try:
        return load_labels(lake, start, end, horizon_days, through=through)
    except FileNotFoundError:
        return None


def reference_window(week: Week, weeks: int = DRIFT_REFERENCE_WEEKS) -> tuple[date, date]:
    """(first day, last day) of the `weeks` weeks before `week`."""
    return week.start - timedelta(weeks=weeks), week.start - timedelta(days=1)


def matured_labels(
    lake: Any, settings: Any, first_day: date, last_day: date, edges: Sequence[int]
) -> np.ndarray | None:
    """Classes of the labels whose horizon fell in first_day..last_day: the posts created in
    [first_day - H, last_day - H] (H = the label horizon, the same target as training's), read
    from the partitions up to last_day."""
    h = timedelta(days=settings.label_horizon_days)
    first, last = first_day - h, last_day - h
    t = _labels(
        lake, first.isoformat(), last.isoformat(), settings.label_horizon_days, last_day.isoformat()
    )
    if t is None or t.num_rows == 0:
        return None
    return np.asarray(bin_labels(t["comment_count"].to_numpy(), edges)).reshape(-1)


def drift_section(
    lake: Any,
    settings: Any,
    week: Week,
    edges: Sequence[int],
    max_rows: int = DRIFT_SAMPLE_ROWS,
) -> dict[str, Any]:
    """The report's `drift` section: labels and embeddings of `week` against the four weeks
    before it (`reference_window`), with plain-language flags."""
    threshold = settings.drift_psi_threshold
    min_n = settings.drift_min_sample
    first, last = reference_window(week)
    ref_window = (first.isoformat(), last.isoformat())
    ref_text = f"the {DRIFT_REFERENCE_WEEKS} weeks before ({ref_window[0]} to {ref_window[1]})"
    out: dict[str, Any] = {
        "threshold": threshold,
        "reference_window": list(ref_window),
        "reference_weeks": DRIFT_REFERENCE_WEEKS,
        "reference_source": f"the {DRIFT_REFERENCE_WEEKS} weeks before the week",
        "min_sample": min_n,
        "labels": None,
        "embeddings": {},
        "flags": [],
    }
    ref_y = matured_labels(lake, settings, first, last, edges)
    cur_y = matured_labels(lake, settings, week.start, week.last_day, edges)
    out["reference_labels"] = 0 if ref_y is None else len(ref_y)  # say which side is empty
    out["week_labels"] = 0 if cur_y is None else len(cur_y)
    if ref_y is not None and len(ref_y) and cur_y is not None and len(cur_y):
        ref_h = histogram(ref_y, len(edges))
        cur_h = histogram(cur_y, len(edges))
        total, per_bin = psi(ref_h, cur_h)
        floor = label_noise_floor(ref_y, len(cur_y), len(edges))
        drifted = alarms(total, floor, threshold, len(ref_y), len(cur_y), min_n)
        out["labels"] = {
            "reference": ref_h,
            "week": cur_h,
            "reference_share": [h / sum(ref_h) for h in ref_h],
            "week_share": [h / sum(cur_h) for h in cur_h],
            "psi_per_bin": per_bin,
            "psi": total,
            "noise_floor": floor,
            "drifted": drifted,
        }
        if drifted:
            worst = int(np.argmax(np.abs(per_bin)))
            then, now = out["labels"]["reference_share"][worst], out["labels"]["week_share"][worst]
            out["flags"].append(
                f"The labels that settled this week are distributed differently from "
                f"{ref_text} (PSI {total:.2f} > {max(threshold, floor):.2f}, the threshold or "
                f"what chance reaches at these sizes); the largest change is in "
                f"the bin of {bin_names(edges)[worst]} comments: {then:.1%} of posts then, "
                f"{now:.1%} now."
            )
    ref_d = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    ref_x = sample_features(lake, ref_d, max_rows, seed=0)
    cur_x = sample_features(lake, week.days, max_rows, seed=1)
    out["reference_embeddings"] = 0 if ref_x is None else len(ref_x[0])
    out["week_embeddings"] = 0 if cur_x is None else len(cur_x[0])
    if ref_x is not None and cur_x is not None and min(len(ref_x[0]), len(cur_x[0])) >= 2:
        for i, name in enumerate(("image", "caption")):
            d = embedding_drift(ref_x[i], cur_x[i])
            which = embedding_alarm(d, threshold, min_n)
            d["drifted"] = which is not None
            out["embeddings"][name] = d
            if which is not None:
                key = "norm" if which == "length" else "pc1"
                bar = max(threshold, d[f"noise_floor_{key}"])
                out["flags"].append(
                    f"The {name} embeddings of this week's posts differ from {ref_text} "
                    f"(PSI {d[f'psi_{key}']:.2f} > {bar:.2f}, in their {which}): the "
                    f"{name}s look different, the model may be less accurate on them."
                )
    return out
