"""The numbers of the weekly report, gathered from the lake and MLflow into one JSON-able dict.

Apart from the drawing, rendering, archiving and mailing (the other modules of `ml.report`), so
that every number the report shows is computed, and can be tested, here in one place. Everything is
read-only and keyed by an ISO week (`ml.weeks.Week`), never by "now", so a backfilled week reports
on that week. Each section copes with missing inputs (an empty week, no model, no test data) by
saying so in `notes`, not by raising; only an unreachable lake or MLflow raises, so that the task
retries.

Sections (keys of the dict `collect` returns):
- `quality`: per day of the week, posts ingested, clean and quarantined by reason (manifests).
- `labels`: label histogram of the train/val/test splits of the current training window (the
  `train_window_days` ending on the week's last day), split by `ml.learn.dataset.build_split`, the
  one split builder training and promotion use too (with every labelled post when the window has no
  features at all).
- `history` (`ml.report.history`): every registered model version whose training window ended
  in the last `report_weeks` weeks, with its test metrics and those of the two baselines of the
  same run.
- `champion`: the champion at the end of the week (see `pick_champion`) and what it trained on.
- `curves`: per-epoch train/validation loss and accuracy of the newest version (MLflow metric
  history, `ml.report.explain`).
- `evaluation`: the champion's confusion matrix and per-class recall on the current test split,
  evaluated live on the lake's features, else (said so) the test metrics logged at training.
- `errors`: the pairs of bins the champion confuses most, and its most confident mistakes with
  their posts (`ml.report.explain`; thumbnails are added by `ml.report.weekly.build`).
- `drift`: this week against the four weeks before it (`ml.report.drift.drift_section`).
- `decisions`: promotion decisions on the versions trained on this week's data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ml.lake.partitions import code_version
from ml.lake.schema import DATASET_CLEAN, DATASET_QUARANTINE, DATASET_RAW, DATASET_SOURCE_CHECK
from ml.learn.bins import DEFAULT_EDGES
from ml.learn.dataset import SPLITS, WindowSplit, build_split, split_features
from ml.learn.labels import target_sentence
from ml.learn.model import metrics_from_predictions
from ml.learn.registry import connect, load_version
from ml.report.drift import DRIFT_SAMPLE_ROWS, drift_section
from ml.report.explain import confident_mistakes, errors_section, learning_curves
from ml.report.history import (
    decisions_section,
    history_section,
    pick_champion,
    registry_versions,
    run_artifact_json,
)
from ml.weeks import Week

log = logging.getLogger(__name__)

# -- data quality -------------------------------------------------------------------------------


def data_quality(lake: Any, week: Week) -> dict[str, Any]:
    """Posts ingested, clean and quarantined (by reason) per day, from the partition manifests."""
    days, reasons_total = [], {}
    for ds in week.days:
        raw = lake.read_manifest(DATASET_RAW, ds)
        clean = lake.read_manifest(DATASET_CLEAN, ds)
        quar = lake.read_manifest(DATASET_QUARANTINE, ds)
        if clean is None and raw is None:
            days.append(
                {
                    "ds": ds,
                    "status": "missing",
                    "ingested": None,
                    "clean": None,
                    "quarantined": None,
                    "reasons": {},
                }
            )
            continue
        reasons = dict((quar or {}).get("reasons", {}))
        for k, v in reasons.items():
            reasons_total[k] = reasons_total.get(k, 0) + int(v)
        ingested = (clean or {}).get("source_rows", (raw or {}).get("rows"))
        status = (clean or {}).get("validation_status") or (
            "not validated" if clean is None else "ok"
        )
        days.append(
            {
                "ds": ds,
                "status": status,
                "ingested": None if ingested is None else int(ingested),
                "clean": None if clean is None else int(clean["rows"]),
                "quarantined": None if quar is None else int(quar["rows"]),
                "reasons": {k: int(v) for k, v in sorted(reasons.items())},
            }
        )

    def total(key: str) -> int:
        return int(sum(d[key] or 0 for d in days))

    ingested = total("ingested")
    quarantined = total("quarantined")
    checks = []  # `ml.ingest.source_check`: did counts move without updated_at?
    for ds in week.days:
        m = lake.read_manifest(DATASET_SOURCE_CHECK, ds)
        if m is not None and "held" in m:
            keys = ("sampled", "unchanged", "silent_changes", "fraction", "held", "reason")
            checks.append({"ds": ds} | {k: m.get(k) for k in keys})
    return {
        "source_checks": checks,
        "days": days,
        "reasons": sorted(reasons_total, key=lambda k: (-reasons_total[k], k)),
        "totals": {
            "ingested": ingested,
            "clean": total("clean"),
            "quarantined": quarantined,
            "quarantined_fraction": (quarantined / ingested) if ingested else None,
            "reasons": dict(sorted(reasons_total.items(), key=lambda kv: (-kv[1], kv[0]))),
            "days_with_data": sum(d["status"] != "missing" for d in days),
        },
    }


# -- labels and splits --------------------------------------------------------------------------


def training_window(settings: Any, week: Week) -> tuple[str, str]:
    end = week.last_day
    return (end - timedelta(days=settings.train_window_days - 1)).isoformat(), end.isoformat()


def label_split(lake: Any, settings: Any, week: Week, edges: Sequence[int]) -> WindowSplit | None:
    """The labelled posts of the current training window, split as training splits them
    (`ml.learn.dataset.build_split`); when the window has no features at all, every labelled post
    counts (and `with_features` says so). None when the window has no labelled post."""
    window = training_window(settings, week)
    try:
        split = build_split(
            lake, *window, edges, settings.label_horizon_days, labels_only_fallback=True
        )
    except FileNotFoundError:
        return None
    return split if split.labelled else None


def labels_section(split: WindowSplit | None, settings: Any, week: Week, edges) -> dict[str, Any]:
    window = split.window if split else training_window(settings, week)
    out: dict[str, Any] = {
        "window": list(window),
        "edges": list(edges),
        "label_horizon_days": settings.label_horizon_days,
        "target": target_sentence(settings.label_horizon_days, edges),
        "rows": 0 if split is None else int(len(split.ids)),
        "with_features": bool(split and split.with_features),
        "without_features": 0 if split is None else split.missing_features,
    }
    for name in SPLITS:
        out[name] = split.histogram(name) if split else [0] * len(edges)
    return out


# -- champion on the current test split ---------------------------------------------------------


def test_features(lake: Any, split: WindowSplit) -> tuple[np.ndarray, np.ndarray, int]:
    """(X float32 (n, 2432), y) of the test posts that have features; and how many had none."""
    data = split_features(lake, split, ("test",))
    return data.X, data.y, split.size("test") - len(data.y)


def load_version_model(settings: Any, version: str):
    """The pyfunc model of a registered version of settings.registered_model."""
    connect(settings)  # process-wide tracking/registry URIs and the S3 endpoint for artifacts
    return load_version(settings.registered_model, version)


def evaluation_section(
    lake: Any,
    settings: Any,
    champion: dict[str, Any] | None,
    split: WindowSplit | None,
    logged_metrics: dict[str, Any] | None,
    load_model: Callable[[Any, str], Any],
    n_classes: int,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Confusion matrix and per-class recall of the champion on the current test split."""
    notes: list[str] = []
    if champion is None:
        return None, notes
    live_error = None
    if split is not None and (split.split == "test").any():
        data = split_features(lake, split, ("test",))
        X, y = data.X, data.y
        missing = split.size("test") - len(y)
        if len(X):
            try:
                proba = np.asarray(load_model(settings, champion["version"]).predict(X))
                m = metrics_from_predictions(
                    y, proba.argmax(axis=1), max(n_classes, proba.shape[1])
                )
                ds = split.ds[np.searchsorted(split.ids, data.post_ids)]
                mistakes = confident_mistakes(data.post_ids, y, proba, ds)
                return {
                    "source": "live",
                    "source_text": (
                        f"champion v{champion['version']} evaluated now on the test split of the "
                        f"window {split.window[0]} to {split.window[1]} ({len(y)} posts"
                        + (f"; {missing} test posts without features left out" if missing else "")
                        + ")"
                    ),
                    "window": list(split.window),
                    "missing_features": missing,
                    "mistakes": mistakes,
                    **m,
                }, notes
            except Exception as exc:  # report what went wrong, fall back to the logged metrics
                log.exception("live evaluation of champion v%s failed", champion["version"])
                live_error = f"{type(exc).__name__}: {exc}"
        else:
            live_error = "no features for the test posts of the window"
    else:
        notes.append(
            "No test data: the current training window has no labelled test posts, so the "
            "champion could not be evaluated on it."
        )
    family = champion.get("family") or "mlp"  # the logged scores of the registered family
    test = ((logged_metrics or {}).get(family) or {}).get("test")
    if test and test.get("confusion_matrix"):
        reason = f" (live evaluation not possible: {live_error})" if live_error else ""
        notes.append(
            f"The confusion matrix is the one logged when champion v{champion['version']} was "
            f"trained, on its own test split{reason}."
        )
        keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class_recall")
        return {
            "source": "mlflow",
            "source_text": (
                f"test metrics logged at training time of champion v{champion['version']} "
                f"(run {champion['run_id']}, window "
                + ("..".join(champion["window"]) if champion["window"] else "unknown")
                + ")"
                + reason
            ),
            "window": champion["window"],
            "confusion_matrix": test["confusion_matrix"],
            **{k: test.get(k) for k in keys},
        }, notes
    if live_error:
        notes.append(f"The champion could not be evaluated: {live_error}.")
    return None, notes


# -- everything ---------------------------------------------------------------------------------


def collect(
    settings: Any,
    lake: Any,
    client: Any,
    week: Week,
    *,
    now: datetime | None = None,
    load_model: Callable[[Any, str], Any] = load_version_model,
    drift_rows: int = DRIFT_SAMPLE_ROWS,
) -> dict[str, Any]:
    """Every number of the report for `week` (see the module docstring)."""
    now = now or datetime.now(UTC)
    timings: dict[str, float] = {}
    notes: list[str] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            timings[name] = round(time.perf_counter() - t0, 3)

    quality = timed("quality", lambda: data_quality(lake, week))
    versions, alias = timed(
        "registry", lambda: registry_versions(client, settings.registered_model)
    )
    champion, champion_source = pick_champion(versions, alias, week)
    hist, logged = None, None
    if champion and champion["run_id"]:
        run_id = champion["run_id"]
        t0 = time.perf_counter()
        hist = run_artifact_json(client, run_id, "label_histogram.json")
        logged = run_artifact_json(client, run_id, "metrics.json")
        timings["artifacts"] = round(time.perf_counter() - t0, 3)
    edges = tuple(int(e) for e in (hist or {}).get("edges") or DEFAULT_EDGES)
    if champion and champion.get("edges"):
        edges = tuple(champion["edges"])
    split = timed("labels", lambda: label_split(lake, settings, week, edges))
    evaluation, eval_notes = timed(
        "evaluation",
        lambda: evaluation_section(lake, settings, champion, split, logged, load_model, len(edges)),
    )
    mistakes = (evaluation or {}).pop("mistakes", None)
    errors = timed("errors", lambda: errors_section(lake, evaluation, mistakes))
    curves = timed("curves", lambda: learning_curves(client, versions, week))
    drift = timed("drift", lambda: drift_section(lake, settings, week, edges, drift_rows))

    if quality["totals"]["days_with_data"] == 0:
        notes.append(
            f"Empty week: no posts were ingested from {week.start} to {week.last_day} "
            "(no posts_etl partitions for these days)."
        )
    elif quality["totals"]["days_with_data"] < 7:
        missing = [d["ds"] for d in quality["days"] if d["status"] == "missing"]
        notes.append(f"No posts_etl data for {len(missing)} day(s): {', '.join(missing)}.")
    for c in quality.get("source_checks", []):
        if c["silent_changes"]:
            notes.append(
                f"Source check {c['ds']}: {c['silent_changes']} of {c['unchanged']} posts re-read "
                "from MySQL changed comment_count without moving updated_at"
                + (f"; the labels were held back ({c['reason']})." if c["held"] else ".")
            )
    if week.end > now.date():
        notes.append(f"The week is not over yet ({now:%Y-%m-%d %H:%M} UTC): its data is partial.")
    if not versions:
        notes.append(f"No model versions are registered as {settings.registered_model!r} yet.")
    if champion is None:
        notes.append(
            "No champion: no model had been promoted by the end of the week, so there is no "
            "confusion matrix and no error analysis."
        )
    if split is None:
        notes.append(
            "No labelled posts in the training window "
            f"{training_window(settings, week)[0]} to {training_window(settings, week)[1]} "
            f"(a post is labelled {settings.label_horizon_days} days after it was posted)."
        )
    notes += eval_notes
    champion_out = None
    if champion:
        champion_out = {
            k: champion[k]
            for k in (
                "version",
                "run_id",
                "window",
                "rows",
                "split_rows",
                "image_weights",
                "code_version",
                "edges",
                "created_at",
                "decided_at",
                "test",
            )
        } | {"source": champion_source}
    history = history_section(versions, champion, settings, week)
    decisions = decisions_section(versions, week)
    return {
        "week": week.label,
        "start": week.start.isoformat(),
        "end": week.last_day.isoformat(),
        "generated_at": now.isoformat(timespec="seconds"),
        "code_version": code_version(),
        "registered_model": settings.registered_model,
        "target": target_sentence(settings.label_horizon_days, edges),
        "notes": notes,
        "flags": list(drift["flags"]),
        "quality": quality,
        "labels": labels_section(split, settings, week, edges),
        "history": history,
        "champion": champion_out,
        "curves": curves,
        "evaluation": evaluation,
        "errors": errors,
        "drift": drift,
        "decisions": decisions,
        "timings_s": timings,
    }
