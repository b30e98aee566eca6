"""The promotion gate as plain arithmetic: a paired bootstrap of two models on the same test posts
(resampling repost groups), and `decide`, which applies every rule (floor, own baseline, recency,
comparable lineage, a credible gain, no collapsed class) and names each that failed. No MLflow
here: `ml.learn.promote` reads the versions, calls `decide` and records the decision."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml.learn.model import macro_f1_of_counts

_EPS = 1e-9  # comparisons of scores computed on the same rows: equal means tie


# -- the promotion gate -------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval of a macro-F1 (or of a difference of two)."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.4f}, {self.high:.4f}]"

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass
class Bootstrap:
    """Paired bootstrap of two models' predictions on the same rows: each resample draws the
    same posts for both, so the spread of the difference reflects which posts were drawn, not
    two independent draws (far tighter, and what "better on these posts" means)."""

    challenger: Interval
    champion: Interval | None
    improvement: Interval | None  # challenger - champion
    confidence: float
    samples: int


def paired_bootstrap(
    y: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    n_classes: int,
    samples: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Bootstrap:
    """Percentile intervals (two-sided, `confidence`) of the challenger's macro-F1, the
    champion's, and their difference, over `samples` resamples (seeded) of the `groups` (the
    split's group keys: reposts of one photo are one group, drawn or left out together, since
    they are not independent evidence; without `groups` each row is its own)."""
    y = np.asarray(y, np.int64)
    k = n_classes
    rng = np.random.default_rng(seed)
    if groups is None:
        gid = np.arange(len(y))
    else:
        _, gid = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    preds = [np.asarray(challenger_pred, np.int64)]
    if champion_pred is not None:
        preds.append(np.asarray(champion_pred, np.int64))
    # each group's confusion counts (G x k*k): a resample adds up the groups it drew
    per_group = [
        np.bincount(gid * k * k + y * k + p, minlength=n_groups * k * k)
        .reshape(n_groups, k * k)
        .astype(np.float64)
        for p in preds
    ]
    f1s: list[list[np.ndarray]] = [[] for _ in preds]
    block = max(1, 2_000_000 // max(n_groups, 1))  # resamples per vectorised step: bounded memory
    for start in range(0, samples, block):
        m = min(block, samples - start)
        idx = rng.integers(0, n_groups, size=(m, n_groups))
        offset = (np.arange(m) * n_groups)[:, None]
        drawn = np.bincount((idx + offset).ravel(), minlength=m * n_groups)
        weights = drawn.reshape(m, n_groups).astype(np.float64)  # times each group was drawn
        for j, c in enumerate(per_group):
            f1s[j].append(macro_f1_of_counts((weights @ c).reshape(m, k, k)))
    alpha = (1.0 - confidence) / 2

    def interval(v: np.ndarray) -> Interval:
        lo, hi = np.quantile(v, [alpha, 1 - alpha])
        return Interval(float(lo), float(hi))

    a = np.concatenate(f1s[0])
    if champion_pred is None:
        return Bootstrap(interval(a), None, None, confidence, samples)
    h = np.concatenate(f1s[1])
    return Bootstrap(interval(a), interval(h), interval(a - h), confidence, samples)


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    challenger_version: int | None
    champion_version: int | None
    challenger_macro_f1: float
    champion_macro_f1: float | None
    challenger_recall: list[float | None]
    champion_recall: list[float | None] | None
    margin: float
    baseline_macro_f1: float | None = None  # the challenger's own logistic baseline (test)
    challenger_ci: list[float] | None = None
    champion_ci: list[float] | None = None
    improvement_ci: list[float] | None = None
    baseline_gap_ci: list[float] | None = None  # (challenger - its logistic baseline), test
    confidence: float | None = None
    window_end: str | None = None
    champion_window_end: str | None = None
    family: str | None = None
    rebaseline: bool = False  # compared with no champion: a declared new baseline

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON values (NaN as None)."""
        return {k: None if is_nan(v) else v for k, v in asdict(self).items()}


def confidence_of(bootstrap: Bootstrap | None) -> str:
    """The bootstrap's confidence as the reasons print it ("90%")."""
    return f"{bootstrap.confidence:.0%}" if bootstrap else "the gate's confidence"


def is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def is_finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def decide(
    challenger_metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    margin: float = 0.0,
    max_recall_drop: float = 0.15,
    min_macro_f1: float = 0.0,
    *,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    baseline_macro_f1: float | None = None,
    baseline_gap: Interval | None = None,
    bootstrap: Bootstrap | None = None,
    min_class_support: int = 0,
    window_end: str | None = None,
    champion_window_end: str | None = None,
    rebaseline: str = "",
    incomparable: str = "",
    family: str | None = None,
) -> PromotionDecision:
    """The gate, on metrics of both models computed on the same test rows. Every failed rule
    is named in the reason:
    1. challenger macro-F1 >= `min_macro_f1` (the floor);
    2. not worse than its own logistic baseline (`baseline_macro_f1`), the first model
       included: a model worse than a linear fit on the same features is not served. With the
       paired interval of (challenger - baseline) from training (`baseline_gap`), refused when
       it lies wholly below 0 (the baseline is credibly better; on a few hundred test posts a
       point estimate would refuse an MLP as good as its baseline about half the time); without
       one (a run from before), when the point estimate is below the baseline's;
    3. recency: its data must not end before the champion's (`window_end`): a backfill of old
       days trains a model on an old window, which never replaces a newer one;
    4. against the champion: a champion of another target or encoders (`incomparable`, the
       difference) refuses the challenger, unless the change is declared a re-baselining
       (`rebaseline`, from POSTFLOW_REBASELINE: judged as a first model); with a `bootstrap`,
       the interval of (challenger - champion) macro-F1 must lie
       above `margin` (a lucky draw of a few hundred posts does not move the champion);
       without one, the point estimate must reach champion + `margin` (a tie passes at 0);
    5. no class whose recall falls by more than `max_recall_drop` (absolute) from the
       champion's, among classes with at least `min_class_support` test posts."""
    c_f1 = challenger_metrics.get("macro_f1")
    c_rec = list(challenger_metrics.get("per_class_recall") or [])
    h_f1 = None if champion_metrics is None else champion_metrics.get("macro_f1")
    h_rec = (
        None if champion_metrics is None else list(champion_metrics.get("per_class_recall") or [])
    )
    cm = challenger_metrics.get("confusion_matrix")
    support = np.asarray(cm).sum(axis=1).tolist() if cm is not None else [None] * len(c_rec)
    failures: list[str] = []
    if not is_finite(c_f1):
        failures.append("challenger macro-F1 is undefined (no test rows)")
    elif c_f1 + _EPS < min_macro_f1:
        failures.append(f"macro-F1 {c_f1:.4f} below the floor {min_macro_f1:.4f}")
    gap = f" (gap {baseline_gap} at {confidence_of(bootstrap)})" if baseline_gap else ""
    if is_finite(c_f1) and is_finite(baseline_macro_f1):
        if baseline_gap is not None:
            if baseline_gap.high < -_EPS:
                failures.append(
                    f"macro-F1 {c_f1:.4f} credibly below its own logistic baseline "
                    f"{baseline_macro_f1:.4f}{gap}"
                )
        elif c_f1 + _EPS < baseline_macro_f1:
            failures.append(
                f"macro-F1 {c_f1:.4f} below its own logistic baseline {baseline_macro_f1:.4f}"
            )
    if window_end and champion_window_end and window_end < champion_window_end:
        failures.append(
            f"trained on data up to {window_end}, older than champion v{champion_version}'s "
            f"{champion_window_end} (a backfill never replaces a newer model)"
        )
    if incomparable:
        failures.append(incomparable)
    improvement = bootstrap.improvement if bootstrap else None
    if champion_metrics is not None and is_finite(c_f1):
        if improvement is not None:
            if improvement.low <= margin + _EPS:
                failures.append(
                    f"no credible improvement over champion {h_f1:.4f}: the "
                    f"{bootstrap.confidence:.0%} interval of the gain {improvement} does not "
                    f"lie above the margin {margin:.4f}"
                )
        elif is_finite(h_f1) and c_f1 + _EPS < h_f1 + margin:
            failures.append(f"macro-F1 {c_f1:.4f} < champion {h_f1:.4f} + margin {margin:.4f}")
        drops = [
            f"class {k} {h:.3f}->{c:.3f}"
            for k, (c, h, n) in enumerate(zip(c_rec, h_rec or [], support, strict=False))
            if c is not None
            and h is not None
            and (n is None or n >= min_class_support)
            and h - c > max_recall_drop + _EPS
        ]
        if drops:
            failures.append(f"recall drops by more than {max_recall_drop:.3f}: " + ", ".join(drops))
    baseline = ""
    if is_finite(baseline_macro_f1):
        relation = "not credibly below" if baseline_gap is not None else ">="
        baseline = f", {relation} its logistic baseline {baseline_macro_f1:.4f}{gap}"
    if failures:
        reason = "; ".join(failures)
    elif champion_metrics is None:
        reason = f"first model: macro-F1 {c_f1:.4f} >= floor {min_macro_f1:.4f}{baseline}"
    else:
        shown = f"{h_f1:.4f}" if is_finite(h_f1) else "undefined"
        gain = (
            f"gain {improvement} at {bootstrap.confidence:.0%} above margin {margin:.4f}"
            if improvement is not None
            else f"macro-F1 {c_f1:.4f} >= champion {shown} + margin {margin:.4f}"
        )
        reason = f"{gain}{baseline}, no class recall drop > {max_recall_drop:.3f}"
    if rebaseline:
        reason = f"{rebaseline}; {reason}"
    return PromotionDecision(
        promoted=not failures,
        reason=reason,
        challenger_version=challenger_version,
        champion_version=champion_version,
        challenger_macro_f1=float(c_f1) if is_finite(c_f1) else float("nan"),
        champion_macro_f1=float(h_f1) if is_finite(h_f1) else None,
        challenger_recall=c_rec,
        champion_recall=h_rec,
        margin=margin,
        baseline_macro_f1=float(baseline_macro_f1) if is_finite(baseline_macro_f1) else None,
        challenger_ci=bootstrap.challenger.to_list() if bootstrap else None,
        champion_ci=bootstrap.champion.to_list() if bootstrap and bootstrap.champion else None,
        improvement_ci=improvement.to_list() if improvement else None,
        baseline_gap_ci=baseline_gap.to_list() if baseline_gap else None,
        confidence=bootstrap.confidence if bootstrap else None,
        window_end=window_end,
        champion_window_end=champion_window_end,
        family=family,
        rebaseline=bool(rebaseline),
    )
