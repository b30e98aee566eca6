"""What one `retrain` run does: which days to embed, over how many shards, and the training window.

Kept apart from the DAG file so it is unit-tested without a scheduler, and from `ml` because it
reads Airflow's context (asset events, params).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from ml.lake.schema import DATASET_CLEAN as POSTS_CLEAN_NAME
from ml.lake.schema import DATASET_FEATURES

if TYPE_CHECKING:
    from ml.config import Settings
    from ml.lake.partitions import Lake


def days_from_context(context: dict[str, Any]) -> list[str]:
    """Days named by the `posts_clean` events that triggered the run, else the `days` param.

    A backfill of three days of `posts_etl` yields three events (queued into one or more runs):
    each carries its day in `extra["ds"]`, so every reconciled day is embedded exactly once.
    """
    days: set[str] = set()
    events = context.get("triggering_asset_events") or {}
    for key, evs in events.items():
        name = getattr(key, "name", key)
        if name != POSTS_CLEAN_NAME and not str(name).endswith(POSTS_CLEAN_NAME):
            continue
        for ev in evs:
            ds = (getattr(ev, "extra", None) or {}).get("ds")
            if ds:
                days.add(str(ds))
    params = context.get("params") or {}
    days |= {str(d) for d in params.get("days") or []}
    for d in days:
        try:
            date.fromisoformat(d)
        except ValueError as exc:
            raise ValueError(f"retrain: {d!r} is not a day (YYYY-MM-DD): {exc}") from None
    if not days:
        raise ValueError(
            "retrain has no day to work on: trigger it with params {'days': ['YYYY-MM-DD']} "
            "or let a posts_etl run (its posts_clean event) start it"
        )
    return sorted(days)


def days_without_features(lake: Lake, since: str) -> list[str]:
    """Days from `since` on whose posts are clean but have no features yet."""
    clean = set(lake.partitions(POSTS_CLEAN_NAME, since)) - set(
        lake.partitions(DATASET_FEATURES, since)
    )
    return sorted(clean)


def window_start(end: str, settings: Settings) -> str:
    return (date.fromisoformat(end) - timedelta(days=settings.train_window_days - 1)).isoformat()


def plan_retrain(days: list[str], settings: Settings, lake: Lake | None = None) -> dict[str, Any]:
    """Argument lists of every `python -m ml` step of the run (XCom-sized: strings only).

    With `lake`, the run also embeds the clean days that have no features yet, newer days
    included, and its window ends at the newest day it embeds. A backfill's days reach retrain
    as asset events that need not each start a run: at max_active_runs Airflow defers the run,
    and the run it then creates names only the events up to the first one queued (its queue
    keeps one row per asset and DAG; apache/airflow#56050, open for 3.3), so a day's event can
    be lost: the compose stack's newest backfilled day went unembedded, the model untrained on it.
    """
    shards = max(1, settings.embed_shards)
    # every day a missing one could add lies on or after the named days' window start
    missing = (
        days_without_features(lake, window_start(max(days), settings)) if lake is not None else []
    )
    end = max([*days, *missing])
    start = window_start(end, settings)
    days = sorted(set(days) | {d for d in missing if d >= start})
    # Which weights, models and device a step uses are settings of the machine that runs it (the
    # ML worker's image, the pod's env), not of the worker that plans: no argument for them.
    embed = [["--ds", d, "--shard", f"{i}/{shards}"] for d in days for i in range(shards)]
    # Always shard (1/1 included) and merge: one path, and `features/ds` only ever appears whole.
    merge = ["--ds", ",".join(days), "--merge-shards", str(shards)]
    train = [
        "--start",
        start,
        "--end",
        end,
        "--ds",
        end,
        "--label-horizon-days",
        str(settings.label_horizon_days),
        "--edges",
        settings.bin_edges,
    ]
    return {
        "days": days,
        "embed": embed,
        "merge": merge,
        "train": train,
        "window": [start, end],
    }
