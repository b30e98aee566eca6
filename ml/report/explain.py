"""What the weekly report explains about the models: how the newest version learned (its
learning curves), and where the champion errs (its most confident mistakes per true class, with
each post's photo and caption, and the pairs of bins it confuses most).

A score says how often the model is wrong; the Monday reader also needs to see *which* posts it
gets wrong and how sure it was, to tell a labelling problem (a post whose count is odd) from a
modelling one (a whole bin read as its neighbour). Numbers first (`confused_pairs`,
`confident_mistakes`), then the posts behind them (`attach_posts`: sanitised caption and
`image_uri` from `posts_clean`), then small JPEG thumbnails fetched through
`ml.ingest.images.ImageStore` (`thumbnails`). A photo that cannot be fetched or decoded is said so
in the report; it never fails it. Learning curves come from the training run's MLflow metric
history (step = epoch).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.ingest.images import ImageError, ImageStore
from ml.lake.schema import DATASET_CLEAN

log = logging.getLogger(__name__)

MISTAKES_PER_CLASS = 3  # most confident mistakes shown per true class
CONFUSED_PAIRS = 5  # most confused (true, predicted) pairs shown
CAPTION_CHARS = 140  # captions are cut to this many characters in the report
THUMB_PX = 96  # longest side of a thumbnail
THUMB_QUALITY = 80


# -- learning curves of the newest version ------------------------------------------------------

CURVE_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
CURVE_TABLE_ROWS = 30  # longer runs: every k-th epoch, the best and the last in the table


def _history(client: Any, run_id: str, key: str) -> dict[int, float | None]:
    try:
        points = client.get_metric_history(run_id, key)
    except Exception as exc:  # a deleted run has no curve; anything else is the task's to retry
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        return {}
    out: dict[int, float | None] = {}
    for p in sorted(points, key=lambda p: (p.step, p.timestamp)):  # the last value of a step
        v = float(p.value)
        out[int(p.step)] = v if math.isfinite(v) else None
    return out


def learning_curves(
    client: Any, versions: list[dict[str, Any]], week: Any
) -> dict[str, Any] | None:
    """Per-epoch train/validation loss and accuracy of the newest version trained on data up to
    the week's end, from its run's metric history (step = epoch). A key the run did not log
    (older runs have no `train_accuracy`) is listed in `missing`."""
    last = week.last_day.isoformat()
    eligible = [v for v in versions if v["run_id"] and v["date"] and v["date"] <= last]
    if not eligible:
        return None
    v = max(eligible, key=lambda v: int(v["version"]))
    series = {k: _history(client, v["run_id"], k) for k in CURVE_KEYS}
    epochs = sorted(set().union(*series.values()))
    out: dict[str, Any] = {
        "version": v["version"],
        "run_id": v["run_id"],
        "date": v["date"],
        "family": v.get("family"),
        "best_epoch": None if v["best_epoch"] is None else int(v["best_epoch"]),
        "epochs": epochs,
        "missing": [k for k in CURVE_KEYS if not series[k]],
        **{k: [series[k].get(e) for e in epochs] for k in CURVE_KEYS},
    }
    losses = [(x, e) for e, x in zip(epochs, out["val_loss"], strict=True) if x is not None]
    if out["best_epoch"] is None and losses:
        out["best_epoch"] = min(losses)[1]
    step = max(1, -(-len(epochs) // CURVE_TABLE_ROWS))
    keep = set(epochs[::step]) | {epochs[-1]} if epochs else set()
    if out["best_epoch"] in epochs:
        keep.add(out["best_epoch"])
    out["table"] = [
        {"epoch": e, **{k: out[k][i] for k in CURVE_KEYS}}
        for i, e in enumerate(epochs)
        if e in keep
    ]
    out["table_every"] = step
    return out


# -- errors -------------------------------------------------------------------------------------


def confused_pairs(cm: Sequence[Sequence[int]], top: int = CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal cells of a confusion matrix (rows = truth): true and
    predicted class, count, and the count's share of the true class. Ties: by class order."""
    m = np.asarray(cm, dtype=np.int64)
    if m.ndim != 2 or m.size == 0:
        return []
    rows = m.sum(axis=1)
    cells = [
        (int(m[i, j]), i, j)
        for i in range(m.shape[0])
        for j in range(m.shape[1])
        if i != j and m[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": i, "predicted": j, "count": n, "share_of_true": n / int(rows[i])}
        for n, i, j in cells[:top]
    ]


def confident_mistakes(
    post_ids: np.ndarray,
    y: np.ndarray,
    proba: np.ndarray,
    ds: np.ndarray,
    per_class: int = MISTAKES_PER_CLASS,
) -> list[dict[str, Any]]:
    """Per true class (in class order), its `per_class` wrongly predicted posts with the highest
    predicted probability (ties: smaller post id first); `ds` is each post's partition."""
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    conf = proba[np.arange(len(pred)), pred]
    out = []
    for c in sorted({int(v) for v in np.unique(y)}):
        idx = np.flatnonzero((y == c) & (pred != c))
        idx = idx[np.lexsort((post_ids[idx], -conf[idx]))][:per_class]
        out += [
            {
                "post_id": int(post_ids[i]),
                "ds": str(ds[i]),
                "true": c,
                "predicted": int(pred[i]),
                "confidence": float(conf[i]),
                "true_probability": float(proba[i, c]) if c < proba.shape[1] else 0.0,
            }
            for i in idx
        ]
    return out


def short_caption(caption: str | None, limit: int = CAPTION_CHARS) -> str:
    """One line of at most `limit` characters (whitespace runs collapsed, cut with an ellipsis)."""
    text = " ".join((caption or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def attach_posts(lake: Any, mistakes: list[dict[str, Any]]) -> None:
    """Add each mistake's sanitised `caption` (shortened) and `image_uri`, from the
    `posts_clean` partition its label came from (the snapshot the model was scored on)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for ds in sorted({m["ds"] for m in mistakes}):
        group = [m for m in mistakes if m["ds"] == ds]
        ids = [m["post_id"] for m in group]
        flt = pc.field("id").isin(ids)
        cols = ["id", "caption", "image_uri", "updated_at"]
        tables = [
            pq.read_table(f, columns=cols, filters=flt, filesystem=lake.fs)
            for f in lake.partition_files(DATASET_CLEAN, ds)
        ]
        found: dict[int, dict[str, Any]] = {}
        for t in tables:
            for row in t.sort_by("updated_at").to_pylist():  # the latest snapshot wins
                found[int(row["id"])] = row
        for m in group:
            row = found.get(m["post_id"])
            m["caption"] = short_caption(row["caption"]) if row else ""
            m["image_uri"] = row["image_uri"] if row else None


def thumbnail(data: bytes, px: int = THUMB_PX) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height) of a photo shrunk to `px` on its longest side, upright."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (px * 2, px * 2))  # JPEG: decode at a reduced scale, much faster
        small = ImageOps.exif_transpose(im)
        small.thumbnail((px, px))
        small = small.convert("RGB")
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
        return buf.getvalue(), small.width, small.height


def thumbnail_name(post_id: int) -> str:
    return f"post_{int(post_id)}"


def thumbnails(store: ImageStore, mistakes: list[dict[str, Any]]) -> dict[str, bytes]:
    """Thumbnails of the mistakes' photos, by name; each mistake gets `thumbnail` (the name,
    with `thumb_width`/`thumb_height`) or `photo_problem` (why there is none)."""
    out: dict[str, bytes] = {}
    for m in mistakes:
        m["thumbnail"] = None
        try:
            jpeg, w, h = thumbnail(store.fetch(m.get("image_uri")))
        except ImageError as exc:
            m["photo_problem"], m["photo_detail"] = f"no photo: {exc.reason}", exc.message
            continue
        except Exception as exc:  # a photo that no longer decodes: say so, keep the report
            log.warning("thumbnail of post %s failed: %s", m["post_id"], exc)
            m["photo_problem"] = f"no photo: unreadable ({type(exc).__name__})"
            m["photo_detail"] = str(exc)
            continue
        name = thumbnail_name(m["post_id"])
        out[name] = jpeg
        m |= {"thumbnail": name, "thumb_width": w, "thumb_height": h}
        m |= {"photo_problem": None, "photo_detail": None}
    return out


def errors_section(
    lake: Any, evaluation: dict[str, Any] | None, mistakes: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The report's `errors` section: confused pairs of the evaluation's confusion matrix, and
    the most confident mistakes with their posts (live evaluation only)."""
    if not evaluation or not evaluation.get("confusion_matrix"):
        return None
    cm = evaluation["confusion_matrix"]
    out: dict[str, Any] = {
        "source": evaluation["source"],
        "pairs": confused_pairs(cm),
        "errors": int(np.asarray(cm).sum() - np.trace(np.asarray(cm))),
        "per_class": MISTAKES_PER_CLASS,
        "mistakes": [],
        "note": None,
    }
    if mistakes is None:
        out["note"] = (
            "No individual mistakes: the confusion matrix is the one logged at training, "
            "which does not name its posts."
        )
        return out
    attach_posts(lake, mistakes)
    out["mistakes"] = mistakes
    return out
