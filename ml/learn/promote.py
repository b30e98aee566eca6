"""The promotion gate: `python -m ml promote` moves the alias `champion` only when the
challenger passes.

`promote` scores challenger and champion on the *same* test split of the window (the one split
of `ml.learn.dataset.build_split`, which training held out) and moves `champion` only when `decide`
says so. The decision and both scores are tagged on the version and its run. It prints the
decision as one JSON line: `python -m ml promote --version V --start S --end E`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ml.learn.dataset import TrainingData, load_dataset
from ml.learn.model import macro_f1_of_counts, metrics_from_predictions
from ml.learn.registry import CHAMPION, RegistryError, alias_version, connect, load_version

log = logging.getLogger(__name__)

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
    confidence: float | None = None
    window_end: str | None = None
    champion_window_end: str | None = None
    family: str | None = None
    rebaseline: bool = False  # compared with no champion: a declared new baseline

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON values (NaN as None)."""
        return {k: None if _nan(v) else v for k, v in asdict(self).items()}


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _finite(x: Any) -> bool:
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
    2. challenger macro-F1 >= its own logistic baseline's (`baseline_macro_f1`), the first
       model included: a model worse than a linear fit on the same features is not served;
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
    if not _finite(c_f1):
        failures.append("challenger macro-F1 is undefined (no test rows)")
    elif c_f1 + _EPS < min_macro_f1:
        failures.append(f"macro-F1 {c_f1:.4f} below the floor {min_macro_f1:.4f}")
    if _finite(c_f1) and _finite(baseline_macro_f1) and c_f1 + _EPS < baseline_macro_f1:
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
    if champion_metrics is not None and _finite(c_f1):
        if improvement is not None:
            if improvement.low <= margin + _EPS:
                failures.append(
                    f"no credible improvement over champion {h_f1:.4f}: the "
                    f"{bootstrap.confidence:.0%} interval of the gain {improvement} does not "
                    f"lie above the margin {margin:.4f}"
                )
        elif _finite(h_f1) and c_f1 + _EPS < h_f1 + margin:
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
    baseline = (
        f", >= its logistic baseline {baseline_macro_f1:.4f}" if _finite(baseline_macro_f1) else ""
    )
    if failures:
        reason = "; ".join(failures)
    elif champion_metrics is None:
        reason = f"first model: macro-F1 {c_f1:.4f} >= floor {min_macro_f1:.4f}{baseline}"
    else:
        shown = f"{h_f1:.4f}" if _finite(h_f1) else "undefined"
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
        challenger_macro_f1=float(c_f1) if _finite(c_f1) else float("nan"),
        champion_macro_f1=float(h_f1) if _finite(h_f1) else None,
        challenger_recall=c_rec,
        champion_recall=h_rec,
        margin=margin,
        baseline_macro_f1=float(baseline_macro_f1) if _finite(baseline_macro_f1) else None,
        challenger_ci=bootstrap.challenger.to_list() if bootstrap else None,
        champion_ci=bootstrap.champion.to_list() if bootstrap and bootstrap.champion else None,
        improvement_ci=improvement.to_list() if improvement else None,
        confidence=bootstrap.confidence if bootstrap else None,
        window_end=window_end,
        champion_window_end=champion_window_end,
        family=family,
        rebaseline=bool(rebaseline),
    )


def _predict(model: Any, X: np.ndarray, n_rows: int) -> np.ndarray:
    proba = np.asarray(model.predict(np.asarray(X, np.float32)))
    if proba.ndim != 2 or proba.shape[0] != n_rows:
        raise RegistryError(f"model returned shape {proba.shape} for {n_rows} rows")
    return proba.argmax(axis=1)


@dataclass
class RunFacts:
    """What the gate needs from a version's training run, and what the model is made of."""

    edges: tuple[int, ...] | None
    window_end: str | None
    family: str
    logistic_test_macro_f1: float | None
    horizon_days: int | None = None
    image_model: str | None = None
    text_model: str | None = None

    @classmethod
    def of(cls, client: Any, run_id: str | None) -> RunFacts:
        if not run_id:
            return cls(None, None, "mlp", None)
        data = client.get_run(run_id).data
        raw = data.params.get("edges")
        horizon = data.params.get("label_horizon_days")
        return cls(
            edges=tuple(json.loads(raw)) if raw else None,
            window_end=data.params.get("window_end"),
            family=data.params.get("family", "mlp"),
            logistic_test_macro_f1=data.metrics.get("logistic_test_macro_f1"),
            horizon_days=int(horizon) if horizon is not None else None,
            image_model=data.params.get("image_model"),
            text_model=data.params.get("text_model"),
        )

    def differences(self, other: RunFacts) -> list[str]:
        """What makes two models incomparable: another target (bin edges, label horizon) or
        another feature space (image weights, text model); unknown (a run from before these
        were recorded) counts as different."""
        out = []
        for what, a, b in (
            ("bin edges", self.edges, other.edges),
            ("label horizon (days)", self.horizon_days, other.horizon_days),
            ("image model", self.image_model, other.image_model),
            ("text model", self.text_model, other.text_model),
        ):
            if a is None or b is None or a != b:
                show = [list(x) if isinstance(x, tuple) else x for x in (a, b)]
                out.append(f"{what} {show[0]} vs {show[1]}")
        return out


def lineage_check(
    facts: RunFacts, champion: RunFacts, champion_version: int, rebaseline: bool
) -> tuple[str, str]:
    """(re-baselining reason, refusal reason), at most one non-empty: a champion of another
    target or encoders is compared with no challenger; the change is a re-baselining only when
    declared (POSTFLOW_REBASELINE), else the challenger is refused with the difference."""
    diffs = facts.differences(champion)
    if not diffs:
        return "", ""
    what = f"{', '.join(diffs)} (challenger vs champion v{champion_version})"
    if rebaseline:
        return (
            f"re-baselining (POSTFLOW_REBASELINE=true): {what}, so the two are not compared "
            "and the challenger is judged as a first model",
            "",
        )
    return "", (
        f"not comparable with champion v{champion_version}: {what}; the gate compares only "
        "models of one target and one pair of encoders (set POSTFLOW_REBASELINE=true to start a "
        "new baseline)"
    )


def _fmt(x: float | None) -> str:
    return "" if x is None or _nan(x) else f"{x:.6f}"


def _record(client: Any, settings: Any, mv: Any, decision: PromotionDecision) -> None:
    from mlflow.entities import Metric, RunTag

    name = settings.registered_model
    d = decision

    def ci(v: list[float] | None) -> str:
        return "" if v is None else json.dumps([round(x, 6) for x in v])

    tags = {
        "postflow.promotion": "promoted" if d.promoted else "rejected",
        "postflow.decision_reason": d.reason[:5000],
        "postflow.challenger_macro_f1": _fmt(d.challenger_macro_f1),
        "postflow.champion_macro_f1": _fmt(d.champion_macro_f1),
        "postflow.champion_version": "" if d.champion_version is None else str(d.champion_version),
        "postflow.baseline_macro_f1": _fmt(d.baseline_macro_f1),
        "postflow.challenger_macro_f1_ci": ci(d.challenger_ci),
        "postflow.champion_macro_f1_ci": ci(d.champion_ci),
        "postflow.improvement_ci": ci(d.improvement_ci),
        "postflow.confidence": "" if d.confidence is None else str(d.confidence),
        "postflow.family": d.family or "",
        "postflow.rebaseline": "true" if d.rebaseline else "false",
        "postflow.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
    if mv.run_id:
        now = int(time.time() * 1000)
        values = {
            "gate_challenger_macro_f1": d.challenger_macro_f1,
            "gate_champion_macro_f1": d.champion_macro_f1,
            "gate_improvement_low": d.improvement_ci[0] if d.improvement_ci else None,
            "gate_improvement_high": d.improvement_ci[1] if d.improvement_ci else None,
        }
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]
        client.log_batch(mv.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])


def resolve_version(client: Any, settings: Any, version: int | str):
    """ModelVersion of a number or an alias (`challenger`)."""
    from mlflow.exceptions import MlflowException

    name = settings.registered_model
    try:
        if str(version).isdigit():
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {name} has no version {version!r}: {exc.message}") from None


def promote_on(
    settings: Any,
    version: int | str,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int | None = None,
    groups: np.ndarray | None = None,
) -> PromotionDecision:
    """Score `version` and the current champion on (X_test, y_test), decide, record the
    decision on the version and its run, and only then move `champion` (an alias never points
    at a version without its decision tags). `groups` (each row's split group) are what the
    bootstrap resamples."""
    client = connect(settings)
    name = settings.registered_model
    mv = resolve_version(client, settings, version)
    ch_version = int(mv.version)
    facts = RunFacts.of(client, mv.run_id)
    k = n_classes or (len(facts.edges) if facts.edges else None)
    if k is None:
        raise RegistryError(f"{name}/{ch_version}: unknown number of classes (no edges param)")
    if len(y_test) == 0:
        raise RegistryError("no test rows to compare the models on")
    y_test = np.asarray(y_test, np.int64)
    champ = alias_version(client, name, CHAMPION)
    c_pred = _predict(load_version(name, ch_version), X_test, len(y_test))
    c_metrics = metrics_from_predictions(y_test, c_pred, k)
    baseline = None if facts.family == "logistic" else facts.logistic_test_macro_f1
    gate = {
        "min_class_support": settings.min_class_support,
        "window_end": facts.window_end,
        "family": facts.family,
        "challenger_version": ch_version,
    }
    if champ is not None and int(champ.version) == ch_version:  # a re-run after promotion
        decision = replace(
            decide(c_metrics, c_metrics, 0.0, 1.0, settings.min_macro_f1, **gate),
            promoted=True,
            reason=f"version {ch_version} is already the champion",
            champion_version=ch_version,
            margin=settings.promotion_margin,
        )
        _record(client, settings, mv, decision)
        return decision

    h_metrics, h_pred, champ_version, champ_facts = None, None, None, None
    rebaseline, incomparable = "", ""
    if champ is not None:
        champ_version = int(champ.version)
        champ_facts = RunFacts.of(client, champ.run_id)
        rebaseline, incomparable = lineage_check(
            facts, champ_facts, champ_version, settings.rebaseline
        )
        if not rebaseline and not incomparable:
            h_pred = _predict(load_version(name, champ_version), X_test, len(y_test))
            h_metrics = metrics_from_predictions(y_test, h_pred, k)
    boot = paired_bootstrap(
        y_test,
        c_pred,
        h_pred,
        k,
        samples=settings.bootstrap_samples,
        confidence=settings.promotion_confidence,
        groups=groups,
    )
    decision = decide(
        c_metrics,
        h_metrics,
        settings.promotion_margin,
        settings.max_recall_drop,
        settings.min_macro_f1,
        champion_version=champ_version,
        baseline_macro_f1=baseline,
        bootstrap=boot,
        champion_window_end=champ_facts.window_end if champ_facts else None,
        rebaseline=rebaseline,
        incomparable=incomparable,
        **gate,
    )
    _record(client, settings, mv, decision)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(ch_version))
    log.info(
        "%s %s/%s: %s",
        "promoted" if decision.promoted else "rejected",
        name,
        ch_version,
        decision.reason,
    )
    return decision


def heldout_split(
    lake: Any, start: str, end: str, edges: Sequence[int], horizon_days: int
) -> TrainingData:
    """Features and labels of the window's test split: the posts `ml.learn.train` held out."""
    return load_dataset(lake, start, end, edges, horizon_days, splits=("test",))


def promote(settings: Any, lake: Any, version: int | str, start: str, end: str):
    """`promote_on` the test split of the window start..end, built with the bin edges and label
    horizon that the challenger's run recorded (so both models are scored on the same labels)."""
    client = connect(settings)
    mv = resolve_version(client, settings, version)
    params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    edges = tuple(json.loads(params["edges"])) if "edges" in params else settings.edges
    horizon = int(params.get("label_horizon_days", settings.label_horizon_days))
    test = heldout_split(lake, start, end, edges, horizon)
    return promote_on(settings, int(mv.version), test.X, test.y, len(edges), test.group)


# -- CLI: python -m ml promote ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml promote",
        description="Score a registered version against the champion on the window's test "
        "split; move the alias `champion` when it passes the gate.",
    )
    p.add_argument("--version", required=True, help="model version number, or an alias")
    p.add_argument("--start", required=True, help="first partition of the window (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last partition of the window (YYYY-MM-DD)")
    args = p.parse_args(argv)

    from ml.config import Settings
    from ml.lake.partitions import Lake

    settings = Settings.load()
    try:
        lake = Lake.from_settings(settings)
        decision = promote(settings, lake, args.version, args.start, args.end)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision.to_dict()))
    return 0
