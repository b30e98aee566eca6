"""The weekly report's charts: PNG bytes drawn with matplotlib's Agg canvas from the report dict.

Apart from the numbers (`ml.report.data`) and the words (`ml.report.render`): this module only
draws. Figures are built with `matplotlib.figure.Figure` (no pyplot, no global state), so charts
can be drawn in any thread or task process. What the report shares with the MLflow run artifacts
comes from `ml.learn.confusion`: the confusion matrix (colour = share of the true class, text =
count) and the PNG encoding. A chart whose data is absent is simply not drawn; the report's text
says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ml.learn.bins import bin_names
from ml.learn.confusion import draw_confusion, png
from ml.report.render import num

DPI = 100
WIDTH_IN = 6.4  # 640 px: fits a 680 px mail column
COLORS = {
    "train": "#4C72B0",
    "test": "#DD8452",
    "mlp": "#4C72B0",
    "majority": "#8C8C8C",
    "logistic": "#55A868",
    "clean": "#55A868",
    "reference": "#8C8C8C",
    "week": "#C44E52",
}
REASON_COLORS = [  # the most frequent quarantine reasons, then "other reasons"; none green
    "#C44E52",
    "#DD8452",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#CCB974",
    "#64B5CD",
    "#4C72B0",
    "#8C8C8C",
    "#1B1B1B",
]


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    alt: str
    png: bytes


def _figure(height_in: float, ncols: int = 1, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, **kwargs)
    return fig, axes


def label_histogram(labels: dict[str, Any]) -> Chart | None:
    train, test = labels["train"], labels["test"]
    if not sum(train) and not sum(test):
        return None
    import numpy as np

    names = bin_names(labels["edges"])
    x = np.arange(len(names))
    fig, ax = _figure(3.0)
    w = 0.4
    for off, split, values in ((-w / 2, "train", train), (w / 2, "test", test)):
        bars = ax.bar(
            x + off, values, w, label=f"{split} ({sum(values)} posts)", color=COLORS[split]
        )
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, names)
    ax.set_xlabel("comments (label bin)")
    ax.set_ylabel("posts")
    ax.set_title(f"Labels of the training window {labels['window'][0]} to {labels['window'][1]}")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    alt = (
        f"Bar chart of posts per comment-count bin: train {sum(train)} posts, test {sum(test)} "
        "posts; the counts per bin are in the table below."
    )
    return Chart("label_histogram", "Label histogram, train and test", alt, png(fig, DPI))


def model_history(history: dict[str, Any]) -> Chart | None:
    rows = [
        v
        for v in history["versions"]
        if any(v["model"][m] is not None for m in ("accuracy", "macro_f1"))
    ]
    if not rows:
        return None
    import numpy as np

    x = np.arange(len(rows))
    labels = [f"v{v['version']}\n{v['date'][5:]}" for v in rows]
    fig, axes = _figure(3.2, ncols=2, sharex=True)
    nan = float("nan")
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "macro_f1", "Macro-F1")):
        for model, style in (("majority", "--"), ("logistic", ":")):
            ys = [v[model][metric] if v[model][metric] is not None else nan for v in rows]
            ax.plot(x, ys, style, color=COLORS[model], label=f"{model} baseline", lw=1.5)
            # a short level per version too: with one version a line alone draws nothing
            ax.hlines(ys, x - 0.3, x + 0.3, colors=COLORS[model], linestyles=style, lw=1.5)
        ys = [v["model"][metric] if v["model"][metric] is not None else nan for v in rows]
        ax.plot(x, ys, "o-", color=COLORS["mlp"], label="registered model", ms=4)
        for i, v in enumerate(rows):
            if v["champion"] and v["model"][metric] is not None:
                ax.plot([i], [v["model"][metric]], "*", color="#C44E52", ms=14, label="champion")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        step = max(1, len(rows) // 8)
        ax.set_xticks(x[::step], labels[::step], fontsize=7)
    handles, names = axes[1].get_legend_handles_labels()
    uniq = dict(zip(names, handles, strict=True))
    fig.legend(
        uniq.values(), uniq.keys(), loc="outside lower center", ncols=4, fontsize=8, frameon=False
    )
    champ = [v for v in rows if v["champion"]]
    alt = (
        f"Line charts of test accuracy and macro-F1 of {len(rows)} model versions since "
        f"{history['since']}"
        + (
            f", champion v{champ[0]['version']} starred (accuracy "
            f"{num(champ[0]['model']['accuracy'])}, macro-F1 "
            f"{num(champ[0]['model']['macro_f1'])})"
            if champ
            else ", no champion among them"
        )
        + ", with the majority-class and logistic baselines as dashed and dotted lines; the "
        "numbers are in the table below."
    )
    return Chart(
        "model_history", f"Model versions, last {history['weeks']} weeks", alt, png(fig, DPI)
    )


def learning_curves(curves: dict[str, Any] | None) -> Chart | None:
    if not curves or not curves["epochs"]:
        return None
    nan = float("nan")
    x = curves["epochs"]
    fig, axes = _figure(3.0, ncols=2, sharex=True)
    best = curves["best_epoch"]
    for ax, kind, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            ys = curves[f"{split}_{kind}"]
            if all(v is None for v in ys):
                continue
            label = "train" if split == "train" else "validation"
            ys = [nan if v is None else v for v in ys]
            color = COLORS["train" if split == "train" else "test"]
            marker = "o" if len(x) <= 20 else None  # one epoch alone is a point, not a line
            ax.plot(x, ys, style, color=color, label=label, marker=marker, ms=3)
        if best is not None:
            ax.axvline(best, color="#8C8C8C", ls=":", lw=1, label=f"best epoch {best}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=7)
    if all(v is None for v in curves["train_accuracy"]):
        axes[1].text(
            0.5,
            0.05,
            "train accuracy not logged",
            transform=axes[1].transAxes,
            ha="center",
            fontsize=7,
            color="#8C8C8C",
        )
    i = x.index(best) if best in x else None
    at = (
        f"; validation loss {num(curves['val_loss'][i], 4)} and accuracy "
        f"{num(curves['val_accuracy'][i])} at the best epoch {best}"
        if i is not None
        else ""
    )
    who = f"v{curves['version']}"
    if curves.get("family") not in (None, "mlp"):  # the registered model has no epochs
        who = f"the MLP trained beside {who} ({curves['family']} registered)"
    alt = (
        f"Learning curves of {who} over {len(x)} epochs{at}; the numbers per epoch are in the "
        "table below."
    )
    return Chart("learning_curves", f"Learning curves of {who}", alt, png(fig, DPI))


def confusion(evaluation: dict[str, Any] | None, edges: Sequence[int]) -> Chart | None:
    if not evaluation or not evaluation.get("confusion_matrix"):
        return None
    import numpy as np

    cm = np.asarray(evaluation["confusion_matrix"], dtype=np.int64)
    k = cm.shape[0]
    names = bin_names(edges)[:k] if len(edges) >= k else [str(i) for i in range(k)]
    fig, axes = _figure(3.6, ncols=2, width_ratios=[3, 2])
    ax = axes[0]
    draw_confusion(ax, cm, names, fontsize=7)  # the drawing of the MLflow run's artifact
    ax.set_title("Confusion matrix", fontsize=10)
    ax = axes[1]
    recall = [r if r is not None else 0.0 for r in evaluation["per_class_recall"]]
    bars = ax.barh(range(k), recall, color=COLORS["mlp"])
    ax.bar_label(
        bars,
        labels=[("n/a" if r is None else f"{r:.2f}") for r in evaluation["per_class_recall"]],
        fontsize=7,
        padding=2,
    )
    ax.set_yticks(range(k), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_title("Recall per class", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    alt = (
        f"Confusion matrix of the champion on {int(cm.sum())} test posts (accuracy "
        f"{num(evaluation.get('accuracy'))}) and its recall per class; the numbers are in the "
        "tables below."
    )
    return Chart("confusion_matrix", "Champion on the test split", alt, png(fig, DPI))


def quality(quality_: dict[str, Any]) -> Chart | None:
    days = quality_["days"]
    if not any(d["status"] != "missing" for d in days):
        return None
    import numpy as np

    x = np.arange(len(days))
    fig, ax = _figure(3.0)
    bottom = np.array([d["clean"] or 0 for d in days], dtype=float)
    ax.bar(x, bottom, color=COLORS["clean"], label="clean")
    reasons = quality_["reasons"]  # most frequent first
    shown = reasons if len(reasons) <= len(REASON_COLORS) else reasons[: len(REASON_COLORS) - 1]
    groups = [(r, [r]) for r in shown]
    if len(shown) < len(reasons):
        groups.append((f"{len(reasons) - len(shown)} other reasons", reasons[len(shown) :]))
    for i, (reason, members) in enumerate(groups):
        vals = np.array([sum(d["reasons"].get(m, 0) for m in members) for d in days], float)
        ax.bar(
            x,
            vals,
            bottom=bottom,
            label=f"quarantined: {reason}",
            color=REASON_COLORS[i % len(REASON_COLORS)],
        )
        bottom += vals
    for i, d in enumerate(days):
        text = "no data" if d["status"] == "missing" else str(d["ingested"] or 0)
        ax.text(i, bottom[i], text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [d["ds"][5:] for d in days])
    ax.set_ylabel("posts")
    ax.set_title("Posts ingested per day: clean and quarantined", fontsize=10)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    t = quality_["totals"]
    alt = (
        f"Stacked bars per day: {t['ingested']} posts ingested this week, {t['clean']} clean, "
        f"{t['quarantined']} quarantined; per-day numbers and reasons are in the table below."
    )
    return Chart("data_quality", "Data quality of the week", alt, png(fig, DPI))


def drift(drift_: dict[str, Any], edges: Sequence[int]) -> Chart | None:
    lab, emb = drift_.get("labels"), drift_.get("embeddings") or {}
    if not lab and not emb:
        return None
    import numpy as np

    fig, axes = _figure(3.0, ncols=2, width_ratios=[3, 2])
    ax = axes[0]
    if lab:
        names = bin_names(edges)
        x = np.arange(len(names))
        ax.bar(
            x - 0.2,
            lab["reference_share"],
            0.4,
            color=COLORS["reference"],
            label=f"{drift_['reference_weeks']} weeks before",
        )
        ax.bar(x + 0.2, lab["week_share"], 0.4, color=COLORS["week"], label="this week")
        ax.set_xticks(x, names, rotation=45, fontsize=7)
        ax.set_ylabel("share of posts")
        ax.set_title(f"Labels (PSI {lab['psi']:.3f})", fontsize=10)
        ax.legend(frameon=False, fontsize=7)
    else:
        ax.text(0.5, 0.5, "no labels to compare", ha="center", va="center")
        ax.set_axis_off()
    ax.spines[["top", "right"]].set_visible(False)
    ax = axes[1]
    bars = [(f"{n} {k}", d[f"psi_{k}"]) for n, d in emb.items() for k in ("norm", "pc1")]
    if bars:
        y = np.arange(len(bars))
        vals = [b[1] for b in bars]
        thr = drift_["threshold"]
        colors = [COLORS["week"] if v > thr else COLORS["reference"] for v in vals]
        h = ax.barh(y, vals, color=colors)
        ax.bar_label(h, labels=[f"{v:.3f}" for v in vals], fontsize=7, padding=2)
        ax.axvline(thr, color="black", ls="--", lw=1)
        ax.set_yticks(y, [b[0] for b in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(thr, *vals) * 1.35)
        ax.set_title(f"Embedding PSI (limit {thr:g})", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no embeddings to compare", ha="center", va="center")
        ax.set_axis_off()
    ax.spines[["top", "right"]].set_visible(False)
    alt = (
        f"Drift against the {drift_['reference_weeks']} weeks before: label shares side by side"
        + (f" (PSI {num(lab['psi'], 4)})" if lab else "")
        + (
            " and the PSI of the embeddings ("
            + ", ".join(f"{name} {num(v, 4)}" for name, v in bars)
            + ")"
            if bars
            else ""
        )
        + f" against the threshold {drift_['threshold']:g}; the numbers are in the tables below."
    )
    title = f"Drift against the {drift_['reference_weeks']} weeks before"
    return Chart("drift", title, alt, png(fig, DPI))


def draw_all(report: dict[str, Any]) -> list[Chart]:
    """Every chart the report's data allows, in reading order."""
    edges = report["labels"]["edges"]
    charts = [
        label_histogram(report["labels"]),
        model_history(report["history"]),
        learning_curves(report.get("curves")),
        confusion(report["evaluation"], edges),
        quality(report["quality"]),
        drift(report["drift"], edges),
    ]
    return [c for c in charts if c is not None]
