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
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ml.learn.dataset import TrainingData, load_dataset
from ml.learn.gate import (
    Interval,
    PromotionDecision,
    decide,
    is_finite,
    is_nan,
    paired_bootstrap,
)
from ml.learn.model import metrics_from_predictions
from ml.learn.registry import (
    CHAMPION,
    GAP_METRIC,
    RegistryError,
    alias_version,
    connect,
    load_version,
)

log = logging.getLogger(__name__)


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
    baseline_gap: Interval | None = None  # (MLP - logistic) test macro-F1, from training
    image_model: str | None = None
    text_model: str | None = None

    @classmethod
    def of(cls, client: Any, run_id: str | None) -> RunFacts:
        if not run_id:
            return cls(None, None, "mlp", None)
        data = client.get_run(run_id).data
        raw = data.params.get("edges")
        horizon = data.params.get("label_horizon_days")
        low, high = (data.metrics.get(f"{GAP_METRIC}_{end}") for end in ("low", "high"))
        return cls(
            edges=tuple(json.loads(raw)) if raw else None,
            window_end=data.params.get("window_end"),
            family=data.params.get("family", "mlp"),
            logistic_test_macro_f1=data.metrics.get("logistic_test_macro_f1"),
            horizon_days=int(horizon) if horizon is not None else None,
            baseline_gap=Interval(low, high) if low is not None and high is not None else None,
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
    return "" if x is None or is_nan(x) else f"{x:.6f}"


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
        "postflow.baseline_gap_ci": ci(d.baseline_gap_ci),
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
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if is_finite(v)]
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
    baseline_gap = None if facts.family == "logistic" else facts.baseline_gap
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
        baseline_gap=baseline_gap,
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
