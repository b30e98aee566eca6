"""The `demo-data` step: generated posts written to MySQL with their photos in the image store, and
the table moved forward a day at a time (`advance`) so that counts grow between extracts as an
app's would. The posts themselves (their signal, bad rows, reposts) come from `ml.demo.posts`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import ConfigError, Settings, redact_uri
from ml.demo.mysql import insert_state, prepare_table
from ml.demo.photos import (
    DemoDataError,
    ensure_store,
    image_store,
    write_images,
)
from ml.demo.posts import (
    DAY_US,
    DEFAULT_BIN_EDGES,
    DEMO_LABEL_HORIZON_DAYS,
    EXPECTED_REASONS,
    N_CLASSES,
    Posts,
    build_posts,
    population_bayes_accuracy,
    sample_bayes_accuracy,
    to_datetime,
    to_us,
)
from ml.ingest.source import MySQLTarget, SourceError

log = logging.getLogger(__name__)


def generate(
    settings: Settings,
    posts: int,
    days: int,
    end: date,
    seed: int = 7,
    bad_fraction: float = 0.05,
    image_size: int = 256,
    replace: bool = False,
    first_id: int | None = None,
    as_of: date | None = None,
) -> dict[str, Any]:
    """Generate `posts` posts updated in `[end - days, end)` into MySQL and the image store.

    The table is left as it stood at the end of day `as_of` (default: the last day); `advance`
    moves it to a later day, so that a day's extract sees that day's snapshots (a post grows
    from one snapshot to the next). Returns the truth: {"bad": {post_id: kind},
    "unusual_valid": {post_id: kind}, "reposts": {post_id: original}, "bayes_accuracy",
    "bin_edges", "counts", "window", ...} (post ids are ints here, strings once written as
    JSON). `first_id` defaults to 1 with `replace`, else MAX(id) + 1.
    """
    if posts < 1 or days < 1:
        raise ValueError("--posts and --days must be at least 1")
    if not 0 <= bad_fraction <= 1:
        raise ValueError("--bad-fraction must be in [0, 1]")
    t0 = time.monotonic()
    target = MySQLTarget.parse(settings.mysql_uri)
    store = image_store(settings)
    first = prepare_table(target, posts, replace, 1 if replace and first_id is None else first_id)
    ensure_store(store)
    params = [posts, days, end.isoformat(), seed, first, bad_fraction, image_size, store.uri_prefix]
    p = build_posts(posts, days, end, seed, first, bad_fraction, image_size, store.uri_prefix)
    log.info("generated %d rows in %.1fs; writing photos", posts, time.monotonic() - t0)
    image_stats = write_images(p, store, seed, settings.workers)
    insert_state(target, p, days - 1 if as_of is None else _day_index(p, as_of, days))

    index_of_bad = {int(pid - first) for pid in p.bad}
    valid = np.ones(posts, bool)
    valid[list(index_of_bad)] = False
    labelled = valid & (p.hearts >= 1)
    # what training labels at the end of the window (ml.learn.labels): posts created in the
    # window whose horizon has passed, with a snapshot at or before it (a post first extracted
    # after its horizon, updated days after it was created, has no count at the horizon)
    end_us = p.start_us + days * DAY_US
    horizon_us = p.created_us + DEMO_LABEL_HORIZON_DAYS * DAY_US
    mature = (
        labelled
        & (p.created_us >= p.start_us)
        & (horizon_us <= end_us)
        & (p.first_us <= horizon_us)
    )
    grey = np.zeros(posts, bool)
    grey[[int(pid - first) for pid, k in p.unusual.items() if k == "jpeg_grayscale"]] = True
    lab_cls = p.cls[mature]
    class_counts = np.bincount(lab_cls, minlength=N_CLASSES)
    start = datetime.combine(end, datetime.min.time()) - timedelta(days=days)
    second = p.grows & (p.updated_us < end_us)
    per_day = Counter(f"{to_datetime(u):%Y-%m-%d}" for u in [*p.first_us, *p.updated_us[second]])
    uri_forms = Counter(
        "relative" if "://" not in u else u.split("://", 1)[0] + "://" for u in p.uris
    )
    counts = {
        "posts": posts,
        "valid": int(valid.sum()),
        "bad": len(p.bad),
        "unusual_valid": len(p.unusual),
        "labelled": int(labelled.sum()),
        "labelled_mature": int(mature.sum()),
        "snapshots": int(posts + second.sum()),
        "grown_in_window": int((second & valid).sum()),  # valid posts with two snapshots
        "reposts": len(p.reposts),
        "hearts_zero": int((p.hearts == 0).sum()),
        "updated_later": int((p.later & valid).sum()),
        "class_counts_labelled": class_counts.tolist(),
        "bad_by_kind": dict(sorted(Counter(p.bad.values()).items())),
        "unusual_by_kind": dict(sorted(Counter(p.unusual.values()).items())),
        "per_day": dict(sorted(per_day.items())),
        "uri_forms": dict(sorted(uri_forms.items())),
    }
    return {
        "bad": p.bad,
        "unusual_valid": p.unusual,
        "reposts": p.reposts,
        "label_horizon_days": DEMO_LABEL_HORIZON_DAYS,
        "params": params,
        "expected_reasons": {k: list(v) for k, v in EXPECTED_REASONS.items()},
        "bayes_accuracy": round(
            sample_bayes_accuracy(
                p.colour[mature], p.pattern[mature], p.topic[mature], ~grey[mature]
            ),
            4,
        ),
        "bayes_accuracy_population": round(population_bayes_accuracy(), 4),
        "majority_accuracy": round(float(class_counts.max() / max(1, class_counts.sum())), 4),
        "bayes_method": (
            "exact under the generative model: mean over valid posts with hearts >= 1, "
            "created in the window and DEMO_LABEL_HORIZON_DAYS old at its end, of "
            "max_c p(c | photo colour, photo pattern, caption topic, hearts >= 1); a model "
            "reaches it only if its features recover those three cues"
        ),
        "bin_edges": list(DEFAULT_BIN_EDGES),
        "counts": counts,
        "window": [start.isoformat(), datetime.combine(end, datetime.min.time()).isoformat()],
        "seed": seed,
        "first_id": first,
        "last_id": first + posts - 1,
        "mysql": redact_uri(target.uri()),
        "image_root": settings.image_root,
        **image_stats,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _day_index(p: Posts, day: date, days: int) -> int:
    k = (to_us(datetime.combine(day, datetime.min.time())) - p.start_us) // DAY_US
    if not 0 <= k < days:
        raise ValueError(f"{day} is not a day of the generated window")
    return int(k)


def advance(settings: Settings, truth: dict[str, Any], day: date) -> None:
    """Move the table `generate` wrote (its `truth`) to the end of day `day`: the posts updated
    that day get that day's snapshot (photos are already written)."""
    n, days, end, seed, first, bad_fraction, image_size, prefix = truth["params"]
    p = build_posts(n, days, date.fromisoformat(end), seed, first, bad_fraction, image_size, prefix)
    insert_state(MySQLTarget.parse(settings.mysql_uri), p, _day_index(p, day, days))


def _parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ml demo-data", description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=2000, help="number of posts (default 2000)")
    ap.add_argument("--days", type=int, default=3, help="days of updated_at (default 3)")
    ap.add_argument(
        "--end",
        type=date.fromisoformat,
        default=datetime.now(UTC).date(),
        help="exclusive end date YYYY-MM-DD of the generated days (default today UTC)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bad-fraction", type=float, default=0.05)
    ap.add_argument("--image-size", type=int, default=256, help="photo side in px (default 256)")
    ap.add_argument("--replace", action="store_true", help="truncate the posts table first")
    ap.add_argument("--first-id", type=int, default=None, help="default: 1 or MAX(id)+1")
    ap.add_argument("--truth", type=Path, default=None, help="write the truth JSON here")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        settings = Settings.load()
        truth = generate(
            settings,
            posts=args.posts,
            days=args.days,
            end=args.end,
            seed=args.seed,
            bad_fraction=args.bad_fraction,
            image_size=args.image_size,
            replace=args.replace,
            first_id=args.first_id,
        )
        if args.truth:
            args.truth.parent.mkdir(parents=True, exist_ok=True)
            args.truth.write_text(json.dumps(truth, indent=1, default=str))
    except (SourceError, ConfigError, DemoDataError, ValueError, OSError) as exc:
        print(f"demo-data: error: {exc}", file=sys.stderr)
        return 2
    skip = {"bad", "unusual_valid", "bayes_method", "expected_reasons"}
    summary = {k: v for k, v in truth.items() if k not in skip}
    summary["truth"] = str(args.truth) if args.truth else None
    print(json.dumps(summary, default=str))
    return 0
