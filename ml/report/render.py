"""The weekly report as words: the HTML (Jinja2, `ml/templates/report.html.j2`) and the
plain-text alternative, both from the report's dict alone.

One renderer for every reader: the archived `report.html` (images as data: URIs), the email's
HTML part (images as cid: parts) and the email's text part all come from here, so the archive
and the mail always say the same numbers. Nothing here reads the lake or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.learn.bins import bin_names

TEMPLATES = Path(__file__).resolve().parent / "templates"


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.1%}"


def name_of(bins: list[str], k: int) -> str:
    """The name of bin `k`, or its number when the edges have fewer bins."""
    return bins[k] if 0 <= k < len(bins) else str(k)


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["num"] = num
    env.filters["pct"] = pct
    return env


def render_html(
    data: dict[str, Any],
    images: dict[str, str],
    link: dict[str, Any] | None = None,
    archive_uri: str = "",
) -> str:
    """The report as HTML; `images` maps chart name -> img src (`cid:...` or `data:...`)."""
    charts = {c["name"]: c for c in data.get("charts", []) if c["name"] in images}
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            report=data,
            charts=charts,
            images=images,
            link=link,
            archive_uri=archive_uri,
            bins=bin_names(data["labels"]["edges"]),
        )
    )


def render_text(data: dict[str, Any], link: dict[str, Any] | None = None) -> str:
    """The plain-text alternative: every number of the HTML, as aligned text."""
    r, out = data, []
    bins = bin_names(r["labels"]["edges"])
    out.append(f"postflow weekly report {r['week']}")
    out.append(f"Monday {r['start']} to Sunday {r['end']} (UTC), model {r['registered_model']}")
    if r.get("target"):  # reports archived before the target was stated lack it
        out.append(f"The model predicts {r['target']}.")
    if link:
        out.append(f"Full report: {link.get('url') or ''} ({link['text']})")
    out.append("")
    for f in r["flags"]:
        out.append(f"DRIFT: {f}")
    for n in r["notes"]:
        out.append(f"NOTE: {n}")
    e, champ = r["evaluation"], r["champion"]
    q = r["quality"]["totals"]
    out += [
        "",
        "Summary",
        f"  champion: {'v' + champ['version'] if champ else 'none'}",
        f"  champion test accuracy: {num(e['accuracy']) if e else 'n/a'}",
        f"  champion test macro-F1: {num(e['macro_f1']) if e else 'n/a'}",
        f"  posts ingested / clean / quarantined: {q['ingested']} / {q['clean']} / "
        f"{q['quarantined']}",
        "",
        f"1. Labels of the training window {r['labels']['window'][0]} to "
        f"{r['labels']['window'][1]} ({r['labels']['rows']} labelled posts)",
        f"  {'comments':<10}{'train':>8}{'val':>8}{'test':>8}",
    ]
    for i, b in enumerate(bins):
        lab = r["labels"]
        out.append(f"  {b:<10}{lab['train'][i]:>8}{lab['val'][i]:>8}{lab['test'][i]:>8}")
    out += ["", f"2. Model versions over the last {r['history']['weeks']} weeks (test split)"]
    if not r["history"]["versions"]:
        out.append("  none")
    for v in r["history"]["versions"]:
        out.append(
            f"  v{v['version']:<4} data to {v['date']}  {v.get('family') or 'mlp':<8}  accuracy "
            f"{num(v['model']['accuracy'])}  macro-F1 {num(v['model']['macro_f1'])}  majority "
            f"{num(v['majority']['accuracy'])}/"
            f"{num(v['majority']['macro_f1'])}  logistic {num(v['logistic']['accuracy'])}/"
            f"{num(v['logistic']['macro_f1'])}"
            + ("  CHAMPION" if v["champion"] else f"  {v['promotion'] or ''}")
        )
    out += ["", "3. Learning curves of the newest version"]
    lc = r.get("curves")
    if lc and lc["epochs"]:
        best = lc["best_epoch"]
        if lc.get("family") not in (None, "mlp"):
            out.append(f"  the MLP trained beside v{lc['version']} ({lc['family']} registered)")
        out.append(
            f"  v{lc['version']} (data to {lc['date']}, run {lc['run_id']}), best epoch "
            f"{'n/a' if best is None else best}"
            + (f"; not logged: {', '.join(lc['missing'])}" if lc["missing"] else "")
        )
        out.append(
            f"  {'epoch':<8}{'train loss':>12}{'val loss':>12}{'train acc':>11}{'val acc':>9}"
        )
        for row in lc["table"]:
            out.append(
                f"  {str(row['epoch']) + ('*' if row['epoch'] == best else ''):<8}"
                f"{num(row['train_loss'], 4):>12}{num(row['val_loss'], 4):>12}"
                f"{num(row['train_accuracy']):>11}{num(row['val_accuracy']):>9}"
            )
        if lc["table_every"] > 1:
            out.append(f"  (every {lc['table_every']}th of {len(lc['epochs'])} epochs)")
    elif lc:
        out.append(f"  v{lc['version']} logged no per-epoch metrics")
    else:
        out.append("  none")
    out += ["", "4. Champion on the current test split"]
    if e:
        out.append(f"  source: {e['source_text']}")
        out.append(
            f"  n {e['n']}  accuracy {num(e['accuracy'])}  balanced accuracy "
            f"{num(e['balanced_accuracy'])}  macro-F1 {num(e['macro_f1'])}"
        )
        out.append("  confusion matrix (rows true, columns predicted):")
        for i, row in enumerate(e["confusion_matrix"]):
            name = bins[i] if i < len(bins) else str(i)
            cells = " ".join(f"{c:>6}" for c in row)
            out.append(f"  {name:<10}{cells}   recall {num(e['per_class_recall'][i])}")
    else:
        out.append("  none")
    out += ["", "5. Where the champion errs"]
    er = r.get("errors")
    if er:
        out.append(f"  {er['errors']} of {e['n']} test posts in the wrong bin; most confused bins:")
        for p in er["pairs"]:
            out.append(
                f"  true {name_of(bins, p['true']):<10} predicted "
                f"{name_of(bins, p['predicted']):<10}{p['count']:>6} posts  "
                f"{pct(p['share_of_true']):>6} of the true bin"
            )
        if er["mistakes"]:
            out.append(f"  most confident mistakes (up to {er['per_class']} per true bin):")
        for m in er["mistakes"]:
            photo = "" if m.get("thumbnail") else f"  [{m.get('photo_problem') or 'no photo'}]"
            if m.get("photo_detail"):
                photo += f" {m['photo_detail']}"
            out.append(
                f"  post {m['post_id']} ({m['ds']}): true {name_of(bins, m['true'])}, predicted "
                f"{name_of(bins, m['predicted'])} ({pct(m['confidence'])} sure){photo}"
            )
            out.append(f"    {m['caption'] or '(no caption)'}")
        if er["note"]:
            out.append(f"  {er['note']}")
    else:
        out.append("  none")
    out += ["", "6. Data quality", f"  {'day':<12}{'ingested':>9}{'clean':>8}{'quar.':>7}  reasons"]
    for d in r["quality"]["days"]:
        if d["status"] == "missing":
            out.append(f"  {d['ds']:<12}  no data")
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items()) or "-"
        out.append(
            f"  {d['ds']:<12}{d['ingested'] or 0:>9}{d['clean'] or 0:>8}{d['quarantined'] or 0:>7}"
            f"  {reasons}  ({d['status']})"
        )
    out.append(f"  {'week':<12}{q['ingested']:>9}{q['clean']:>8}{q['quarantined']:>7}")
    dr = r["drift"]
    out += [
        "",
        f"7. Drift against {dr['reference_source']} ({dr['reference_window'][0]} to "
        f"{dr['reference_window'][1]}), threshold PSI {dr['threshold']}",
    ]
    if dr["labels"]:
        lab = dr["labels"]
        out.append(f"  labels PSI {num(lab['psi'], 4)}")
        for i, b in enumerate(bins):
            out.append(
                f"  {b:<10} before {pct(lab['reference_share'][i]):>7}  week "
                f"{pct(lab['week_share'][i]):>7}  PSI {num(lab['psi_per_bin'][i], 4)}"
            )
    else:
        out.append(
            f"  labels: nothing to compare ({dr['reference_labels']} settled in the "
            f"{dr['reference_weeks']} weeks before, {dr['week_labels']} this week)"
        )
    for name, d in dr["embeddings"].items():
        out.append(
            f"  {name} embeddings: PSI norm {num(d['psi_norm'], 4)}, PSI 1st component "
            f"{num(d['psi_pc1'], 4)}, cosine of means {num(d['mean_cosine'], 4)}"
        )
    out += ["", "8. Promotion decisions"]
    if not r["decisions"]:
        out.append("  none")
    for d in r["decisions"]:
        out.append(
            f"  v{d['version']} {d['promotion']}: challenger macro-F1 "
            f"{num(d['challenger_macro_f1'])}, champion macro-F1 {num(d['champion_macro_f1'])}"
            + (f" (v{d['champion_version']})" if d["champion_version"] else "")
            + "".join(
                f", {label} [{num(d[k][0])}, {num(d[k][1])}]"
                for k, label in (
                    ("challenger_ci", "challenger interval"),
                    ("champion_ci", "champion interval"),
                    ("improvement_ci", "gain interval"),
                )
                if d.get(k)
            )
            + (f" - {d['decision_reason']}" if d["decision_reason"] else "")
        )
    if champ:
        win = " to ".join(champ["window"]) if champ["window"] else "unknown"
        rows = "unknown" if champ["rows"] is None else int(champ["rows"])
        out.append(
            f"  champion v{champ['version']} trained on {win}, {rows} rows, image weights "
            f"{champ['image_weights'] or 'unknown'}, code {champ['code_version'] or 'unknown'}"
        )
    return "\n".join(out) + "\n"
