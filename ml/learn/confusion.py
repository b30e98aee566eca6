"""Drawing shared by the MLflow run artifacts and the weekly report: the confusion matrix.

Figures are `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no global state), so they
can be drawn in any thread or task process.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def draw_confusion(ax: Any, cm: Sequence[Sequence[int]], names: Sequence[str], fontsize: int = 8):
    """A confusion matrix (rows = truth) on `ax`: colour = share of the true class (so small
    classes are as readable as large ones), text = count. Returns the image for a colorbar."""
    cm = np.asarray(cm, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    k = cm.shape[0]
    for i in range(k):
        for j in range(cm.shape[1]):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted comments")
    ax.set_ylabel("true comments")
    return im


def png(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, without the "Software" metadata (stable bytes across versions)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def confusion_png(cm: Sequence[Sequence[int]], names: Sequence[str], title: str) -> bytes:
    """A confusion matrix as a stand-alone PNG with a colour bar (the MLflow run artifact)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = draw_confusion(ax, cm, names)
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title)
    return png(fig)
