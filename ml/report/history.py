"""The models' side of the report, read from the MLflow registry: every version with its window,
metrics, baselines and promotion decision (from its tags), which one was champion at the end of
a week, and the history and decisions sections built from them."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ml.learn.dataset import SPLITS
from ml.learn.registry import CHAMPION, FINAL_METRICS, MODELS
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
