"""The promotion gate: `python -m ml promote` moves the alias `champion` only when the
challenger passes.

`promote` scores challenger and champion on the *same* test split of the window (the one split
of `ml.dataset.build_split`, which training held out) and moves `champion` only when `decide`
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

from ml.dataset import TrainingData, load_dataset
from ml.labels import DEFAULT_EDGES
from ml.model import metrics_from_predictions
from ml.registry import CHAMPION, RegistryError, alias_version, connect, load_version

log = logging.getLogger(__name__)

_EPS = 1e-9  # comparisons of scores computed on the same rows: equal means tie


# -- the promotion gate -------------------------------------------------------------------------


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
) -> PromotionDecision:
    """The gate, on metrics of both models computed on the same rows:
    1. challenger macro-F1 >= `min_macro_f1` (the floor; the only test for a first model);
    2. challenger macro-F1 >= champion macro-F1 + `margin` (a tie passes with margin 0);
    3. no class whose recall falls by more than `max_recall_drop` (absolute) from the
       champion's; classes absent from the rows (recall None) are not compared."""
    c_f1 = challenger_metrics.get("macro_f1")
    c_rec = list(challenger_metrics.get("per_class_recall") or [])
    h_f1 = None if champion_metrics is None else champion_metrics.get("macro_f1")
    h_rec = (
        None if champion_metrics is None else list(champion_metrics.get("per_class_recall") or [])
    )
    failures: list[str] = []
    if not _finite(c_f1):
        failures.append("challenger macro-F1 is undefined (no test rows)")
    elif c_f1 + _EPS < min_macro_f1:
        failures.append(f"macro-F1 {c_f1:.4f} below the floor {min_macro_f1:.4f}")
    if champion_metrics is not None and _finite(c_f1):
        if _finite(h_f1) and c_f1 + _EPS < h_f1 + margin:
            failures.append(f"macro-F1 {c_f1:.4f} < champion {h_f1:.4f} + margin {margin:.4f}")
        drops = [
            f"class {k} {h:.3f}->{c:.3f}"
            for k, (c, h) in enumerate(zip(c_rec, h_rec or [], strict=False))
            if c is not None and h is not None and h - c > max_recall_drop + _EPS
        ]
        if drops:
            failures.append(f"recall drops by more than {max_recall_drop:.3f}: " + ", ".join(drops))
    if failures:
        reason = "; ".join(failures)
    elif champion_metrics is None:
        reason = f"first model: macro-F1 {c_f1:.4f} >= floor {min_macro_f1:.4f}"
    else:
        shown = f"{h_f1:.4f}" if _finite(h_f1) else "undefined"
        reason = (
            f"macro-F1 {c_f1:.4f} >= champion {shown} + margin {margin:.4f}, "
            f"no class recall drop > {max_recall_drop:.3f}"
        )
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
    )


def _score(model: Any, X: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    proba = np.asarray(model.predict(np.asarray(X, np.float32)))
    if proba.ndim != 2 or proba.shape[0] != len(y):
        raise RegistryError(f"model returned shape {proba.shape} for {len(y)} rows")
    return metrics_from_predictions(y, proba.argmax(axis=1), n_classes)


def _run_edges(client: Any, run_id: str | None) -> tuple[int, ...] | None:
    if not run_id:
        return None
    raw = client.get_run(run_id).data.params.get("edges")
    return tuple(json.loads(raw)) if raw else None


def _record(client: Any, settings: Any, mv: Any, decision: PromotionDecision) -> None:
    from mlflow.entities import Metric, RunTag

    name = settings.registered_model
    tags = {
        "postflow.promotion": "promoted" if decision.promoted else "rejected",
        "postflow.decision_reason": decision.reason[:5000],
        "postflow.challenger_macro_f1": f"{decision.challenger_macro_f1:.6f}",
        "postflow.champion_macro_f1": (
            "" if decision.champion_macro_f1 is None else f"{decision.champion_macro_f1:.6f}"
        ),
        "postflow.champion_version": (
            "" if decision.champion_version is None else str(decision.champion_version)
        ),
        "postflow.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
    if mv.run_id:
        now = int(time.time() * 1000)
        metrics = [Metric("gate_challenger_macro_f1", decision.challenger_macro_f1, now, 0)]
        if decision.champion_macro_f1 is not None:
            metrics.append(Metric("gate_champion_macro_f1", decision.champion_macro_f1, now, 0))
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
) -> PromotionDecision:
    """Score `version` and the current champion on (X_test, y_test), decide, move `champion`
    when promoted, and record the decision on the version and its run."""

    client = connect(settings)
    name = settings.registered_model
    mv = resolve_version(client, settings, version)
    ch_version = int(mv.version)
    edges = _run_edges(client, mv.run_id)
    k = n_classes or (len(edges) if edges else None)
    if k is None:
        raise RegistryError(f"{name}/{ch_version}: unknown number of classes (no edges param)")
    if len(y_test) == 0:
        raise RegistryError("no test rows to compare the models on")
    champ = alias_version(client, name, CHAMPION)
    challenger = load_version(name, ch_version)
    c_metrics = _score(challenger, X_test, y_test, k)
    if champ is not None and int(champ.version) == ch_version:  # a re-run after promotion
        decision = replace(
            decide(c_metrics, c_metrics, 0.0, 1.0, settings.min_macro_f1),
            promoted=True,
            reason=f"version {ch_version} is already the champion",
            challenger_version=ch_version,
            champion_version=ch_version,
            margin=settings.promotion_margin,
        )
        _record(client, settings, mv, decision)
        return decision

    h_metrics, note, champ_version = None, "", None
    if champ is not None:
        champ_version = int(champ.version)
        champ_edges = _run_edges(client, champ.run_id)
        if edges is not None and champ_edges is not None and champ_edges != edges:
            note = (
                f"champion {champ_version} has other bin edges {list(champ_edges)}: "
                "not comparable, floor only; "
            )
        else:
            champion = load_version(name, champ_version)
            h_metrics = _score(champion, X_test, y_test, k)
    decision = decide(
        c_metrics,
        h_metrics,
        settings.promotion_margin,
        settings.max_recall_drop,
        settings.min_macro_f1,
        challenger_version=ch_version,
        champion_version=champ_version,
    )
    if note:
        decision = replace(decision, reason=note + decision.reason)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(ch_version))
    _record(client, settings, mv, decision)
    log.info(
        "%s %s/%s: %s",
        "promoted" if decision.promoted else "rejected",
        name,
        ch_version,
        decision.reason,
    )
    return decision


def heldout_split(
    lake: Any, start: str, end: str, edges: Sequence[int], label_age_days: int
) -> TrainingData:
    """Features and labels of the window's test split: the posts `ml.train` held out."""
    return load_dataset(lake, start, end, edges, label_age_days, splits=("test",))


def promote(settings: Any, lake: Any, version: int | str, start: str, end: str):
    """`promote_on` the test split of the window start..end, built with the bin edges and label
    age that the challenger's run recorded (so both models are scored on the same labels)."""
    client = connect(settings)
    mv = resolve_version(client, settings, version)
    params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    edges = tuple(json.loads(params["edges"])) if "edges" in params else DEFAULT_EDGES
    age = int(params.get("label_age_days", settings.label_age_days))
    test = heldout_split(lake, start, end, edges, age)
    return promote_on(settings, int(mv.version), test.X, test.y, len(edges))


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
    from ml.lake import Lake

    settings = Settings.load()
    try:
        lake = Lake.from_settings(settings)
        decision = promote(settings, lake, args.version, args.start, args.end)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(decision.to_dict()))
    return 0
