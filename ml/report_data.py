"""The numbers of the weekly report, gathered from the lake and MLflow into one JSON-able dict.

Apart from the drawing, rendering, archiving and mailing (`ml.report*`), so that every number the
report shows is computed, and can be tested, here in one place. Everything is read-only and keyed
by an ISO week (`ml.weeks.Week`), never by "now", so a backfilled week reports on that week. Each
section copes with missing inputs (an empty week, no model, no test data) by saying so in
`notes`, not by raising; only an unreachable lake or MLflow raises, so that the task retries.

Sections (keys of the dict `collect` returns):
- `quality`: per day of the week, posts ingested, clean and quarantined by reason (manifests).
- `labels`: label histogram of the train/val/test splits of the current training window (the
  `train_window_days` ending on the week's last day), split by `ml.dataset.build_split`, the one
  split builder training and promotion use too (with every labelled post when the window has no
  features at all).
- `history`: every registered model version whose training window ended in the last
  `report_weeks` weeks, with its test metrics and those of the two baselines of the same run.
- `champion`: the champion at the end of the week (see `pick_champion`) and what it trained on.
- `curves`: per-epoch train/validation loss and accuracy of the newest version (MLflow metric
  history, `ml.report_explain`).
- `evaluation`: the champion's confusion matrix and per-class recall on the current test split,
  evaluated live on the lake's features, else (said so) the test metrics logged at training.
- `errors`: the pairs of bins the champion confuses most, and its most confident mistakes with
  their posts (`ml.report_explain`; thumbnails are added by `ml.report.build`).
- `drift`: this week against the four weeks before it (`ml.drift.drift_section`).
- `decisions`: promotion decisions on the versions trained on this week's data.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ml.dataset import SPLITS, WindowSplit, build_split, split_features
from ml.drift import DRIFT_SAMPLE_ROWS, drift_section
from ml.labels import DEFAULT_EDGES
from ml.lake import code_version
from ml.model import metrics_from_predictions
from ml.registry import CHAMPION, FINAL_METRICS, MODELS, connect, load_version
from ml.report_explain import confident_mistakes, errors_section, learning_curves
from ml.schema import DATASET_CLEAN, DATASET_QUARANTINE, DATASET_RAW
from ml.weeks import Week

log = logging.getLogger(__name__)

# -- small helpers ------------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def window_of_tag(tag: str | None) -> tuple[str, str] | None:
    """`postflow.window` "start..end" -> (start, end) ISO dates, or None."""
    if not tag or ".." not in tag:
        return None
    a, b = (s.strip()[:10] for s in tag.split("..", 1))
    try:
        return date.fromisoformat(a).isoformat(), date.fromisoformat(b).isoformat()
    except ValueError:
        return None


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
    return {
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
    (`ml.dataset.build_split`); when the window has no features at all, every labelled post
    counts (and `with_features` says so). None when the window has no labelled post."""
    window = training_window(settings, week)
    try:
        split = build_split(
            lake, *window, edges, settings.label_age_days, labels_only_fallback=True
        )
    except FileNotFoundError:
        return None
    return split if split.labelled else None


def labels_section(split: WindowSplit | None, settings: Any, week: Week, edges) -> dict[str, Any]:
    window = split.window if split else training_window(settings, week)
    out: dict[str, Any] = {
        "window": list(window),
        "edges": list(edges),
        "label_age_days": settings.label_age_days,
        "rows": 0 if split is None else int(len(split.ids)),
        "with_features": bool(split and split.with_features),
        "without_features": 0 if split is None else split.missing_features,
    }
    for name in SPLITS:
        out[name] = split.histogram(name) if split else [0] * len(edges)
    return out


# -- MLflow: versions, champion, decisions ------------------------------------------------------


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(
        exc
    ).lower().replace("does not exist", "not found")


def _edges_of_tag(raw: str | None) -> list[int] | None:
    try:
        edges = [int(e) for e in json.loads(raw)] if raw else None
    except (ValueError, TypeError):
        return None
    return edges if edges and len(edges) >= 2 else None


def _interval_of_tag(raw: str | None) -> list[float] | None:
    """A gate's bootstrap interval tag, "[low, high]", or None (older versions have none)."""
    try:
        v = json.loads(raw) if raw else None
    except ValueError:
        return None
    ok = isinstance(v, list) and len(v) == 2 and all(_finite(x) is not None for x in v)
    return [float(x) for x in v] if ok else None


def _ms_to_iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def version_info(client: Any, mv: Any) -> dict[str, Any]:
    """What the report needs of one model version: its run's metrics and tags, its decision."""
    vtags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    rtags: dict[str, str] = {}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            metrics, rtags = dict(run.data.metrics), dict(run.data.tags)
        except Exception as exc:  # a deleted run leaves a version without metrics
            if not _is_not_found(exc):
                raise
    tags = rtags | vtags
    window = window_of_tag(tags.get("postflow.window"))
    created = _ms_to_iso(mv.creation_timestamp)
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "created_at": created,
        "window": list(window) if window else None,
        # the data date of a version: the end of its training window (else its creation day)
        "date": window[1] if window else (created or "")[:10],
        "rows": _finite(metrics.get("rows")),
        "best_epoch": _finite(metrics.get("best_epoch")),
        "split_rows": {s: _finite(metrics.get(f"split_{s}_rows")) for s in SPLITS},
        "edges": _edges_of_tag(tags.get("postflow.edges")),
        "image_weights": tags.get("postflow.image_weights"),
        "code_version": tags.get("postflow.code_version"),
        "promotion": vtags.get("postflow.promotion"),
        "decision_reason": vtags.get("postflow.decision_reason"),
        "challenger_macro_f1": _finite(vtags.get("postflow.challenger_macro_f1")),
        "champion_macro_f1": _finite(vtags.get("postflow.champion_macro_f1")),
        "champion_version": vtags.get("postflow.champion_version") or None,
        "challenger_ci": _interval_of_tag(vtags.get("postflow.challenger_macro_f1_ci")),
        "champion_ci": _interval_of_tag(vtags.get("postflow.champion_macro_f1_ci")),
        "improvement_ci": _interval_of_tag(vtags.get("postflow.improvement_ci")),
        "family": tags.get("postflow.family") or None,
        "decided_at": vtags.get("postflow.decided_at"),
        "test": {
            m: {k: _finite(metrics.get(f"{m}_test_{k}")) for k in FINAL_METRICS} for m in MODELS
        }
        | {  # the registered family's scores (`model_test_*`; older runs: always the MLP)
            "model": {
                k: _finite(metrics.get(f"model_test_{k}", metrics.get(f"mlp_test_{k}")))
                for k in FINAL_METRICS
            }
        },
        "test_recall": [
            _finite(metrics[k])
            for k in sorted(
                (k for k in metrics if k.startswith("mlp_test_recall_class_")),
                key=lambda k: int(k.rsplit("_", 1)[1]),
            )
        ],
    }


def registry_versions(client: Any, name: str) -> tuple[list[dict[str, Any]], str | None]:
    """(every version of the registered model, oldest first; the `champion` alias's version)."""
    try:
        rm = client.get_registered_model(name)
    except Exception as exc:
        if _is_not_found(exc):
            return [], None
        raise
    alias = (getattr(rm, "aliases", None) or {}).get(CHAMPION)
    mvs = client.search_model_versions(f"name = '{name}'")
    infos = [version_info(client, mv) for mv in mvs]
    infos.sort(key=lambda v: int(v["version"]))
    return infos, (str(alias) if alias is not None else None)


def pick_champion(
    versions: list[dict[str, Any]], alias: str | None, week: Week
) -> tuple[dict[str, Any] | None, str]:
    """The champion at the end of `week`, and how it was found.

    When no version was trained on data after the week (the week is the latest one), the
    `champion` alias is the truth. For an earlier week (a backfill), the alias may have moved
    since, so the champion is the version promoted last (by `postflow.decided_at`) among those
    trained on data up to the week's last day.
    """
    last = week.last_day.isoformat()
    eligible = [v for v in versions if v["date"] and v["date"] <= last]
    newer = [v for v in versions if v["date"] and v["date"] > last]
    if alias is not None and not newer:
        found = [v for v in eligible if v["version"] == alias]
        if found:
            return found[0], "the champion alias"
    promoted = [v for v in eligible if v["promotion"] == "promoted"]
    if promoted:
        best = max(promoted, key=lambda v: (v["decided_at"] or "", int(v["version"])))
        return best, "the last version promoted before the week ended"
    return None, ""


def history_section(versions: list[dict[str, Any]], champion: dict | None, settings, week: Week):
    since = (week.end - timedelta(weeks=settings.report_weeks)).isoformat()
    end = week.end.isoformat()
    rows = [v for v in versions if v["date"] and since <= v["date"] < end]
    rows.sort(key=lambda v: (v["date"], int(v["version"])))
    champ = champion["version"] if champion else None
    return {
        "weeks": settings.report_weeks,
        "since": since,
        "until": week.last_day.isoformat(),
        "versions": [
            {
                "version": v["version"],
                "date": v["date"],
                "champion": v["version"] == champ,
                "promotion": v["promotion"],
                "family": v["family"],
                **{m: v["test"][m] for m in (*MODELS, "model")},
            }
            for v in rows
        ],
    }


def decisions_section(versions: list[dict[str, Any]], week: Week) -> list[dict[str, Any]]:
    """Decisions on the versions trained on this week's data (window end in the week); a
    version without a window tag counts by the day it was decided."""
    days = set(week.days)
    out = []
    for v in versions:
        if not v["promotion"]:
            continue
        day = v["date"] if v["window"] else (v["decided_at"] or "")[:10]
        if day in days:
            out.append(
                {
                    k: v[k]
                    for k in (
                        "version",
                        "date",
                        "promotion",
                        "decision_reason",
                        "challenger_macro_f1",
                        "champion_macro_f1",
                        "champion_version",
                        "challenger_ci",
                        "champion_ci",
                        "improvement_ci",
                        "family",
                        "decided_at",
                    )
                }
            )
    return sorted(out, key=lambda d: (d["decided_at"] or "", int(d["version"])))


def run_artifact_json(client: Any, run_id: str, name: str) -> Any | None:
    with tempfile.TemporaryDirectory(prefix="postflow-report-") as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except Exception as exc:
            log.info("run %s has no artifact %s: %s", run_id, name, exc)
            return None
        return json.loads(Path(path).read_text())


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
            f"(labels need {settings.label_age_days} days to settle)."
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
