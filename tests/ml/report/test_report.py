"""The weekly report on a small synthetic lake: numbers, champion choice, drift, empty cases, the
archive round trip and the email's structure. MLflow is a tiny in-memory stand-in here; the real
server, SMTP server, S3 endpoint and Chromium are in tests/integration/test_weekly_report.py."""

from __future__ import annotations

import copy
import email
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from email import policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ml.config import Settings
from ml.lake.partitions import Lake
from ml.learn.bins import DEFAULT_EDGES
from ml.report import archive as A
from ml.report import drift
from ml.report import explain as X
from ml.report import history as HI
from ml.report import mail as E
from ml.report import render as H
from ml.report import weekly as R
from ml.weeks import Week
from tools.synthetic import write_features

WEEK = Week(2026, 47)  # Monday 2026-11-16 .. Sunday 2026-11-22
PRIORS = np.array([0.30, 0.20, 0.15, 0.10, 0.10, 0.07, 0.05, 0.03])
NOW = datetime(2026, 11, 30, 7, tzinfo=UTC)
# markup and length the report must escape and cut
CAPTION = "post {} <b>bold</b> & " + "long " * 60


# -- a synthetic lake ---------------------------------------------------------------------------


def class_means(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (8, 2048)), rng.normal(0, 1, (8, 384))


def write_synthetic_days(
    lake: Lake,
    days: list[str],
    per_day: int,
    *,
    seed: int = 0,
    priors: np.ndarray = PRIORS,
    txt_shift: float = 0.0,
    first_id: int = 1,
    bad_fraction: float = 0.05,
    features: bool = True,
) -> int:
    """posts_raw/posts_clean/quarantine manifests and rows, and features whose class means make
    the label learnable; returns the next free post id."""
    from ml.lake.schema import CLEAN_SCHEMA, QUARANTINE_SCHEMA, RAW_SCHEMA

    img_mu, txt_mu = class_means()
    rng = np.random.default_rng(seed)
    next_id = first_id
    for ds in days:
        n = per_day
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        cls = rng.choice(8, n, p=priors / priors.sum())
        lo = np.array(DEFAULT_EDGES)
        hi = np.append(lo[1:], 1000)
        cc = rng.integers(lo[cls], hi[cls])
        day0 = datetime.fromisoformat(ds)
        created = [day0 + timedelta(seconds=int(s)) for s in rng.integers(0, 80_000, n)]
        raw = pa.table(
            {
                "id": ids,
                "author_id": rng.integers(1, 100, n),
                "caption": [CAPTION.format(i) for i in ids],
                "image_uri": [f"{ds}/{i}.jpg" for i in ids],
                "hearts": rng.integers(1, 50, n),
                "comment_count": cc,
                "created_at": pa.array(created, pa.timestamp("us")),
                "updated_at": pa.array(
                    [c + timedelta(minutes=5) for c in created], pa.timestamp("us")
                ),
            },
            schema=RAW_SCHEMA,
        )
        bad = rng.random(n) < bad_fraction
        reasons = np.where(rng.random(n) < 0.5, "image_corrupt", "caption_empty")
        with lake.writer("posts_raw", ds, RAW_SCHEMA) as w:
            w.write(raw)
        clean = raw.filter(pa.array(~bad))
        m = clean.num_rows
        clean = clean.append_column("image_format", pa.array(["JPEG"] * m))
        clean = clean.append_column("image_width", pa.array([64] * m, pa.int32()))
        clean = clean.append_column("image_height", pa.array([64] * m, pa.int32()))
        clean = clean.append_column("exif_orientation", pa.array([1] * m, pa.int8()))
        quar = raw.filter(pa.array(bad))
        quar = quar.append_column("reason", pa.array(reasons[bad].tolist(), pa.string()))
        quar = quar.append_column("message", pa.array(["bad"] * int(bad.sum()), pa.string()))
        counts: dict[str, int] = {}
        for r in reasons[bad].tolist():
            counts[r] = counts.get(r, 0) + 1
        with lake.writer("posts_clean", ds, CLEAN_SCHEMA) as w:
            w.write(clean)
            w.meta.update(source_rows=n, validation_status="ok", quarantined=int(bad.sum()))
        with lake.writer("quarantine", ds, QUARANTINE_SCHEMA) as w:
            w.write(quar)
            w.meta.update(source_rows=n, reasons=dict(sorted(counts.items())))
        if not features:
            continue
        good = ~bad
        k = int(good.sum())
        img = img_mu[cls[good]] * 0.6 + rng.normal(0, 1, (k, 2048))
        txt = txt_mu[cls[good]] * 0.6 + rng.normal(txt_shift, 1, (k, 384))
        write_features(
            lake,
            ds,
            ids[good],
            np.concatenate([img, txt], axis=1),
            image_model="resnet50:none",
            text_model="minilm",
            hashes=["h"] * k,
        )
    return next_id


def write_photos(settings: Settings, lake: Lake, days: list[str]) -> set[int]:
    """Small JPEGs (200x120, a colour per post) for the posts of `days` with an even id, at
    their image_uri under the image root; the odd ones have no photo. Returns the even ids."""
    from PIL import Image

    root = Path(settings.image_root)
    written = set()
    for ds in days:
        t = lake.read_partition("posts_clean", ds, columns=["id", "image_uri"])
        for pid, uri in zip(t["id"].to_pylist(), t["image_uri"].to_pylist(), strict=True):
            if pid % 2:
                continue
            path = root / uri
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (200, 120), (pid % 256, 80, 160)).save(path, "JPEG")
            written.add(pid)
    return written


class NearestMeanModel:
    """A pyfunc stand-in: probabilities from distances to the synthetic class means, over the
    first `dims` features (16 of 2432: accuracy about 0.8, so that it makes mistakes)."""

    def __init__(self, dims: int = 16, temperature: float = 4.0) -> None:
        img, txt = class_means()
        self.mu = (np.concatenate([img, txt], 1) * 0.6)[:, :dims]
        self.dims, self.temperature = dims, temperature

    def predict(self, X: np.ndarray) -> np.ndarray:
        d = ((X[:, None, : self.dims] - self.mu[None]) ** 2).sum(-1)
        z = -(d - d.min(1, keepdims=True)) / self.temperature
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)


# -- an MLflow stand-in -------------------------------------------------------------------------


class NotFound(Exception):
    error_code = "RESOURCE_DOES_NOT_EXIST"


class FakeClient:
    """The few MlflowClient calls the report makes, over dicts shaped like the real registry."""

    def __init__(self, versions: list[dict[str, Any]] | None = None, alias: str | None = None):
        self.versions = versions
        self.alias = alias

    def get_registered_model(self, name: str):
        if self.versions is None:
            raise NotFound(f"Registered Model with name={name} not found")
        return SimpleNamespace(aliases={"champion": self.alias} if self.alias else {})

    def search_model_versions(self, filter_string: str):
        return [
            SimpleNamespace(
                version=v["version"],
                run_id=f"run{v['version']}",
                tags=v.get("vtags", {}),
                creation_timestamp=v.get("created_ms", 1_763_000_000_000),
            )
            for v in self.versions or []
        ]

    def _v(self, run_id: str) -> dict[str, Any]:
        return next(v for v in self.versions or [] if f"run{v['version']}" == run_id)

    def get_run(self, run_id: str):
        v = self._v(run_id)
        return SimpleNamespace(data=SimpleNamespace(metrics=v["metrics"], tags=v["rtags"]))

    def get_metric_history(self, run_id: str, key: str):
        curve = self._v(run_id).get("curves", {}).get(key, [])
        return [SimpleNamespace(step=i, value=v, timestamp=1000 + i) for i, v in enumerate(curve)]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        art = self._v(run_id).get("artifacts", {})
        if path not in art:
            raise NotFound(path)
        out = Path(dst_path) / path
        out.write_text(json.dumps(art[path]))
        return str(out)


def version(
    v: int,
    window: tuple[str, str],
    promotion: str | None,
    f1: float,
    decided: str,
    family: str | None = None,
    **extra,
) -> dict[str, Any]:
    metrics = {"rows": 1000.0 + v, "split_train_rows": 600.0, "split_val_rows": 200.0}
    metrics["split_test_rows"] = 200.0
    for m, base in (("mlp", f1), ("majority", 0.05), ("logistic", f1 - 0.1)):
        metrics[f"{m}_test_accuracy"] = base + 0.1
        metrics[f"{m}_test_macro_f1"] = base
        metrics[f"{m}_test_balanced_accuracy"] = base
        if m == family:  # newer runs: the registered family's scores as model_test_*
            for k in ("accuracy", "macro_f1", "balanced_accuracy"):
                metrics[f"model_test_{k}"] = metrics[f"{m}_test_{k}"]
    vtags = {"postflow.promotion": promotion, "postflow.decided_at": decided} if promotion else {}
    if promotion:
        vtags |= {
            "postflow.decision_reason": "macro-F1 better" if promotion == "promoted" else "worse",
            "postflow.challenger_macro_f1": str(f1),
            "postflow.champion_macro_f1": "0.3",
            "postflow.champion_version": str(v - 1) if v > 1 else "",
        }
    if promotion and v >= 3:  # the gate's bootstrap intervals; older versions have none
        vtags |= {
            "postflow.challenger_macro_f1_ci": json.dumps([f1 - 0.03, f1 + 0.03]),
            "postflow.champion_macro_f1_ci": "[0.28, 0.33]",
            "postflow.improvement_ci": "[-0.01, 0.11]",
        }
    return {
        "version": str(v),
        "metrics": metrics,
        "rtags": {
            "postflow.window": f"{window[0]}..{window[1]}",
            "postflow.image_weights": "none",
            "postflow.code_version": "0.1.0+test",
        }
        | ({"postflow.family": family} if family else {}),
        "vtags": vtags,
        **extra,
    }


CURVES = {
    "train_loss": [2.0, 1.5, 1.2, 1.0, 0.9],
    "val_loss": [2.1, 1.7, 1.45, 1.5, 1.6],
    "val_accuracy": [0.2, 0.35, 0.41, 0.4, 0.39],
}


def registry() -> FakeClient:
    cm = np.diag([10, 5, 5, 3, 3, 2, 1, 1]).tolist()
    logged = {
        "mlp": {
            "test": {
                "n": 30,
                "accuracy": 0.9,
                "balanced_accuracy": 0.8,
                "macro_f1": 0.7,
                "per_class_recall": [1.0] * 8,
                "confusion_matrix": cm,
            }
        }
    }
    hist = {"edges": list(DEFAULT_EDGES), "train": [1] * 8, "val": [1] * 8, "test": [1] * 8}
    return FakeClient(
        [
            version(1, ("2026-11-02", "2026-11-08"), "promoted", 0.30, "2026-11-09T03:00:00+00:00"),
            version(
                2,
                ("2026-11-09", "2026-11-15"),
                "promoted",
                0.40,
                "2026-11-16T03:00:00+00:00",
                artifacts={"metrics.json": logged, "label_histogram.json": hist},
            ),
            version(
                3,
                ("2026-11-09", "2026-11-18"),
                "rejected",
                0.35,
                "2026-11-19T03:00:00+00:00",
                family="logistic",  # it won on validation: the MLP's curves are shown
                curves=CURVES,  # no train_accuracy, as in older runs
            ),
        ],
        alias="2",
    )


def make_settings(root: Path) -> Settings:
    return Settings.load(
        {
            "lake": str(root / "lake"),
            "image_root": str(root / "images"),
            "label_horizon_days": 1,  # the last day's posts wait for their horizon
            "train_window_days": 14,
            "report_recipients": "ml-team@example.com; lead@example.com",
            "report_sender": "postflow@example.com",
        },
        environ={"POSTFLOW_CONFIG": ""},
    )


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


def model_loader(settings, version):
    assert version == "2"
    return NearestMeanModel()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A week before WEEK as the champion's training window, then four days of WEEK whose
    label mix and captions drifted; the report of WEEK built once for the tests below."""
    settings = make_settings(tmp_path_factory.mktemp("report"))
    lake = Lake.from_settings(settings)
    lake.check()
    prev = [(date(2026, 11, 9) + timedelta(days=i)).isoformat() for i in range(7)]
    nxt = write_synthetic_days(lake, prev, 120, seed=1)
    shifted = np.array([0.05, 0.05, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2])
    write_synthetic_days(
        lake, WEEK.days[:4], 120, seed=2, priors=shifted, txt_shift=0.8, first_id=nxt
    )
    write_photos(settings, lake, prev + WEEK.days[:4])
    report = R.build(settings, WEEK, lake=lake, client=registry(), now=NOW, load_model=model_loader)
    return settings, lake, report


# -- weeks, PSI, champion -----------------------------------------------------------------------


def test_week_arithmetic():
    w = Week.parse("2026-W47")
    assert (w.label, str(w.start), str(w.end), str(w.last_day)) == (
        "2026-W47",
        "2026-11-16",
        "2026-11-23",
        "2026-11-22",
    )
    assert w.days[0] == "2026-11-16" and w.days[-1] == "2026-11-22" and len(w.days) == 7
    assert Week.of(datetime(2026, 11, 22, 23, 59, tzinfo=UTC)) == w
    assert Week.of(datetime(2026, 11, 23, tzinfo=UTC)) == w.shift(1)
    assert Week.parse("2026W05").label == "2026-W05"
    assert Week.of("2027-01-01").label == "2026-W53"  # ISO years differ from calendar years
    for bad in ("2026-47", "2025-W53", "W47"):
        with pytest.raises(ValueError):
            Week.parse(bad)
    assert Week.last_complete(datetime(2026, 11, 23, 6, tzinfo=UTC)) == w


def test_psi():
    total, per_bin = drift.psi([100, 100, 100], [100, 100, 100])
    assert total == pytest.approx(0) and per_bin == pytest.approx([0, 0, 0])
    total, per_bin = drift.psi([50, 30, 20], [20, 30, 50])
    assert total == pytest.approx(2 * 0.3 * np.log(2.5))
    assert per_bin[1] == pytest.approx(0) and total > 0.2
    assert drift.psi([1, 0], [0, 1])[0] > 1  # empty bins are floored, not infinite
    with pytest.raises(ValueError):
        drift.psi([0, 0], [1, 1])


def test_champion_is_the_alias_now_and_the_history_for_a_backfilled_week():
    versions, alias = HI.registry_versions(registry(), "post-engagement")
    assert [v["version"] for v in versions] == ["1", "2", "3"] and alias == "2"
    champ, how = HI.pick_champion(versions, alias, WEEK)
    assert champ["version"] == "2" and "alias" in how
    champ, how = HI.pick_champion(versions, alias, Week(2026, 45))  # Nov 2..8
    assert champ["version"] == "1" and "promoted" in how
    assert HI.pick_champion(versions, alias, Week(2026, 44)) == (None, "")
    assert HI.registry_versions(FakeClient(None), "post-engagement") == ([], None)


# -- the whole report ---------------------------------------------------------------------------


def test_report_numbers(built):
    settings, lake, report = built
    data = report.data
    q = data["quality"]
    assert [d["status"] for d in q["days"]] == ["ok"] * 4 + ["missing"] * 3
    raw = sum(lake.read_manifest("posts_raw", d)["rows"] for d in WEEK.days[:4])
    clean = sum(lake.read_manifest("posts_clean", d)["rows"] for d in WEEK.days[:4])
    assert q["totals"]["ingested"] == raw == 480 and q["totals"]["clean"] == clean
    assert q["totals"]["quarantined"] == raw - clean == sum(q["totals"]["reasons"].values())
    assert any("No posts_etl data for 3 day(s)" in n for n in data["notes"])

    lab = data["labels"]
    assert lab["window"] == ["2026-11-09", "2026-11-22"]
    assert sum(lab["train"]) + sum(lab["val"]) + sum(lab["test"]) == lab["rows"]
    # posts created in the window whose 1-day horizon was extracted: those of every day that
    # has a next day (the last day's posts wait for theirs)
    parts = lake.partitions("posts_clean")
    covered = [d for d in parts if (date.fromisoformat(d) + timedelta(days=1)).isoformat() in parts]
    assert lab["rows"] == sum(lake.read_manifest("posts_clean", d)["rows"] for d in covered)
    assert lab["target"].startswith("comments within 1 day of posting, 8 bins: 0, 1-2")

    assert [v["version"] for v in data["history"]["versions"]] == ["1", "2", "3"]
    assert [v["champion"] for v in data["history"]["versions"]] == [False, True, False]
    # v3 registered its logistic model: the history shows that model's scores
    v3 = data["history"]["versions"][2]
    assert v3["family"] == "logistic" and v3["model"] == v3["logistic"] != v3["mlp"]
    assert data["history"]["versions"][1]["model"] == data["history"]["versions"][1]["mlp"]
    assert data["champion"]["version"] == "2"
    assert data["champion"]["window"] == ["2026-11-09", "2026-11-15"]
    assert data["champion"]["image_weights"] == "none" and data["champion"]["rows"] == 1002
    assert [d["version"] for d in data["decisions"]] == ["3"]
    assert data["decisions"][0]["promotion"] == "rejected"
    d = data["decisions"][0]
    assert d["improvement_ci"] == [-0.01, 0.11] and d["champion_ci"] == [0.28, 0.33]
    assert d["challenger_ci"] == pytest.approx([0.32, 0.38]) and d["family"] == "logistic"
    html, text = H.render_html(data, {}, None, "x"), H.render_text(data)
    assert "[-0.010, 0.110]" in html and "gain interval [-0.010, 0.110]" in text
    assert (
        HI.version_info(
            FakeClient(),
            SimpleNamespace(
                **{
                    "version": "9",
                    "run_id": None,
                    "tags": {"postflow.improvement_ci": "oops"},
                    "creation_timestamp": None,
                }
            ),
        )["improvement_ci"]
        is None
    )

    e = data["evaluation"]
    assert e["source"] == "live" and e["n"] == sum(lab["test"])
    assert np.asarray(e["confusion_matrix"]).sum() == e["n"]
    assert 0.6 < e["accuracy"] < 0.95  # the stand-in model knows the class means, in 16 dims

    dr = data["drift"]
    # the four weeks before the week, not the champion's training window (11-09..11-15)
    assert dr["reference_window"] == ["2026-10-19", "2026-11-15"]
    assert dr["labels"]["psi"] > settings.drift_psi_threshold and dr["labels"]["drifted"]
    # captions moved as a whole (their length); photos only through the new class mix
    cap, img = dr["embeddings"]["caption"], dr["embeddings"]["image"]
    assert cap["psi_norm"] > settings.drift_psi_threshold > img["psi_norm"]
    assert img["psi_pc1"] > settings.drift_psi_threshold
    assert len(data["flags"]) == 3 and data["flags"][0].startswith("The labels that settled")
    assert "image embeddings" in data["flags"][1] and "main direction" in data["flags"][1]
    assert "caption embeddings" in data["flags"][2] and "length" in data["flags"][2]
    assert {c["name"] for c in data["charts"]} == {
        "label_histogram",
        "model_history",
        "learning_curves",
        "confusion_matrix",
        "data_quality",
        "drift",
    }


def test_no_drift_against_the_same_distribution(settings, tmp_path):
    lake = Lake.from_settings(settings)
    days = [(date(2026, 11, 9) + timedelta(days=i)).isoformat() for i in range(14)]
    write_synthetic_days(lake, days, 150, seed=5)
    data = R.build(settings, WEEK, lake=lake, client=FakeClient([]), now=NOW).data
    assert data["champion"] is None and data["evaluation"] is None and data["errors"] is None
    assert data["drift"]["reference_window"] == ["2026-10-19", "2026-11-15"]
    assert data["drift"]["labels"]["psi"] < settings.drift_psi_threshold
    assert data["flags"] == []


def test_logged_confusion_matrix_when_there_are_no_features(settings):
    lake = Lake.from_settings(settings)
    write_synthetic_days(lake, WEEK.days, 60, seed=3, features=False)
    data = R.build(settings, WEEK, lake=lake, client=registry(), now=NOW).data
    e = data["evaluation"]
    assert e["source"] == "mlflow" and e["accuracy"] == 0.9
    assert "no features for the test posts" in e["source_text"]
    # the logged matrix is diagonal: no confused pairs, and no posts to show
    assert data["errors"]["pairs"] == [] and data["errors"]["mistakes"] == []
    assert "does not name its posts" in data["errors"]["note"]
    assert any("logged when champion v2 was trained" in n for n in data["notes"])
    assert data["drift"]["embeddings"] == {} and data["drift"]["week_embeddings"] == 0
    assert data["drift"]["week_labels"] == data["labels"]["rows"] > 0


def test_no_test_data_falls_back_to_the_logged_matrix_and_says_so(settings):
    from ml.learn.splits import assign_splits

    lake = Lake.from_settings(settings)
    first = next(i for i in range(1, 10_000) if set(assign_splits(range(i, i + 4), 4)) == {"train"})
    write_synthetic_days(lake, WEEK.days[:1], 4, seed=4, first_id=first, bad_fraction=0)
    write_synthetic_days(lake, WEEK.days[1:2], 0, seed=4, first_id=first + 4)  # the horizon day
    data = R.build(settings, WEEK, lake=lake, client=registry(), now=NOW).data
    assert data["labels"]["rows"] == 4 and sum(data["labels"]["test"]) == 0
    assert any(n.startswith("No test data") for n in data["notes"])
    assert data["evaluation"]["source"] == "mlflow"
    assert "confusion_matrix" in {c["name"] for c in data["charts"]}
    html = H.render_html(data, {}, None, "file:///x")
    assert "No test data" in html and "logged when champion v2 was trained" in html


def test_empty_week_without_champion(settings):
    report = R.build(settings, WEEK, lake=Lake.from_settings(settings), client=FakeClient(None))
    data = report.data
    assert report.charts == [] and data["evaluation"] is None and data["champion"] is None
    text = " ".join(data["notes"])
    for expected in ("Empty week", "No model versions", "No champion", "No labelled posts"):
        assert expected in text
    html = H.render_html(data, {}, None, "file:///x")
    assert "<img" not in html and "Empty week" in html and "There is no champion" in html
    assert "nothing to compare (0 labels settled in the 4 weeks before, 0 this week)" in html
    assert "nothing to compare (0 settled in the 4 weeks before, 0 this week)" in H.render_text(
        data
    )
    assert "no champion" in E.subject_of(data) and "no data" in E.subject_of(data)


# -- archive and email --------------------------------------------------------------------------


def test_archive_round_trip_and_email(built):
    settings, lake, report = built
    uri = A.archive(lake, report)
    folder = Path(uri.removeprefix("file://"))
    assert folder.name == "week=2026-W47"
    names = {p.name for p in folder.iterdir()}
    assert report.thumbnails
    assert names == {"_manifest.json", "report.json", "report.html", "report.txt"} | {
        f"{c.name}.png" for c in report.charts
    } | {f"{n}.jpg" for n in report.thumbnails}
    (folder / "stale.png").write_bytes(b"old")
    A.archive(lake, report)  # re-running a week replaces its report
    assert not (folder / "stale.png").exists()

    archived = A.read_archive(lake, WEEK)
    assert archived.data["week"] == "2026-W47" and set(archived.images) == {
        c.name for c in report.charts
    }
    assert all(png.startswith(b"\x89PNG") for png in archived.images.values())
    assert archived.html.count('src="data:image/png;base64,') == len(report.charts)
    assert archived.thumbnails == report.thumbnails
    assert archived.html.count('src="data:image/jpeg;base64,') == len(report.thumbnails)

    link = E.report_link(lake, WEEK, 3600)
    assert link["url"].startswith("file://") and "local lake" in link["text"]
    msg = E.build_email(archived, settings.report_sender, ["a@example.com"], link)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    text_part, related = parsed.get_payload()
    assert text_part.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    html = html_part.get_content()
    cids = set(re.findall(r'src="cid:([^"]+)"', html))
    assert cids == {p["Content-ID"].strip("<>") for p in images}
    assert len(cids) == len(report.charts) + len(report.thumbnails) == 6 + len(report.thumbnails)
    for p in images:
        name = p["Content-ID"].strip("<>").split(".")[0]
        if name in archived.thumbnails:
            assert p.get_content_type() == "image/jpeg"
            assert p.get_content() == archived.thumbnails[name]
        else:
            assert p.get_content_type() == "image/png" and p.get_content() == archived.images[name]
    e = archived.data["evaluation"]
    body = text_part.get_content()
    assert f"accuracy {e['accuracy']:.3f}" in body and "480" in body
    # the text alternative carries the new sections too
    er, lc = archived.data["errors"], archived.data["curves"]
    assert "5. Where the champion errs" in body and f"{er['errors']} of {e['n']} test posts" in body
    for m in er["mistakes"]:
        assert f"post {m['post_id']} ({m['ds']})" in body
    assert "3. Learning curves of the newest version" in body
    assert "the MLP trained beside v3 (logistic registered)" in body
    assert (
        f"v{lc['version']} (data to {lc['date']}" in body and "not logged: train_accuracy" in body
    )
    assert f"{e['accuracy']:.3f}" in html

    (folder / "report.json").write_text("{}")
    with pytest.raises(A.ArchiveError, match="does not match"):
        A.read_archive(lake, WEEK)
    with pytest.raises(A.ArchiveError, match="build it first"):
        A.read_archive(lake, Week(2026, 1))


# -- error analysis, learning curves, drift reference, images blocked --------------------------


def test_confused_pairs_and_confident_mistakes_by_hand():
    cm = [[5, 3, 0], [1, 4, 3], [0, 6, 2]]
    assert X.confused_pairs(cm, top=3) == [
        {"true": 2, "predicted": 1, "count": 6, "share_of_true": 0.75},
        {"true": 0, "predicted": 1, "count": 3, "share_of_true": 3 / 8},
        {"true": 1, "predicted": 2, "count": 3, "share_of_true": 3 / 8},  # tie: class order
    ]
    assert X.confused_pairs(np.diag([3, 4])) == []
    ids = np.array([10, 11, 12, 13, 14, 15])
    y = np.array([0, 0, 0, 0, 1, 1])
    proba = np.array(
        [
            [0.9, 0.1],  # right
            [0.3, 0.7],  # wrong, 0.7
            [0.1, 0.9],  # wrong, 0.9
            [0.3, 0.7],  # wrong, 0.7: same confidence as 11, larger id
            [0.2, 0.8],  # right
            [0.6, 0.4],  # wrong, 0.6
        ]
    )
    ds = np.array(["d"] * 6, dtype=object)
    got = X.confident_mistakes(ids, y, proba, ds, per_class=2)
    assert [(m["post_id"], m["true"], m["predicted"]) for m in got] == [
        (12, 0, 1),
        (11, 0, 1),
        (15, 1, 0),
    ]
    assert got[0]["confidence"] == pytest.approx(0.9)
    assert got[0]["true_probability"] == pytest.approx(0.1)
    assert X.short_caption("a\n b  c", 10) == "a b c"
    assert X.short_caption("x" * 20, 10) == "x" * 9 + "\u2026"


def test_error_analysis_of_the_champion(built):
    """The mistakes are the most confident wrong predictions of the champion on the test split
    (checked against a brute-force pass over every test post), with caption and thumbnail; a
    post without a photo is reported as such; captions are escaped and cut in the HTML."""
    from PIL import Image

    from ml.learn.dataset import build_split, split_features

    settings, lake, report = built
    data = report.data
    er, e = data["errors"], data["evaluation"]
    cm = np.asarray(e["confusion_matrix"])
    assert er["source"] == "live" and er["errors"] == cm.sum() - np.trace(cm) > 0
    off = cm - np.diag(np.diag(cm))
    assert er["pairs"][0]["count"] == off.max()
    assert [p["count"] for p in er["pairs"]] == sorted(off[off > 0].tolist(), reverse=True)[:5]
    for p in er["pairs"]:
        assert cm[p["true"], p["predicted"]] == p["count"]
        assert p["share_of_true"] == pytest.approx(p["count"] / cm[p["true"]].sum())

    # brute force: every wrong test prediction of the stand-in champion, by class
    split = build_split(
        lake, *data["labels"]["window"], data["labels"]["edges"], settings.label_horizon_days
    )
    test = split_features(lake, split, ("test",))
    proba = NearestMeanModel().predict(test.X)
    wrong: dict[int, list[tuple[float, int]]] = {}
    for pid, yt, p in zip(test.post_ids.tolist(), test.y.tolist(), proba, strict=True):
        if p.argmax() != yt:
            wrong.setdefault(yt, []).append((-float(p.max()), pid))
    expected = [pid for c in sorted(wrong) for _, pid in sorted(wrong[c])[:3]]
    mistakes = er["mistakes"]
    assert [m["post_id"] for m in mistakes] == expected
    for m in mistakes:
        assert m["true"] != m["predicted"] and 0 < m["confidence"] <= 1
        assert m["caption"].startswith(f"post {m['post_id']} <b>bold</b> & long")
        assert len(m["caption"]) <= X.CAPTION_CHARS and m["caption"].endswith("\u2026")

    # thumbnails: the even posts have a photo, the odd ones none, and the report says so
    with_photo = [m for m in mistakes if m["post_id"] % 2 == 0]
    without = [m for m in mistakes if m["post_id"] % 2]
    assert with_photo and without
    assert set(report.thumbnails) == {m["thumbnail"] for m in with_photo}
    for m in with_photo:
        img = Image.open(io.BytesIO(report.thumbnails[m["thumbnail"]]))
        assert img.format == "JPEG" and img.size == (m["thumb_width"], m["thumb_height"])
        assert max(img.size) == X.THUMB_PX and img.size == (96, 58)  # 200x120 shrunk
    for m in without:
        assert m["thumbnail"] is None and "image_missing" in m["photo_problem"]

    images = {n: f"cid:{n}" for n in report.thumbnails}
    html = H.render_html(data, images, None, "file:///x")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; long" in html
    for m in with_photo:
        assert re.search(
            rf'<img src="cid:{m["thumbnail"]}" width="96" height="58" alt="Photo', html
        )
    for m in without:
        assert f"{m['post_id']}<br>" in html
    assert html.count("no photo: image_missing") == len(without)

    # a post kept without a caption (POSTFLOW_REQUIRE_CAPTION=false) says so, in both parts
    no_caption = copy.deepcopy(data)
    no_caption["errors"]["mistakes"][0]["caption"] = ""
    assert "(no caption)" not in html + H.render_text(data)
    assert "(no caption)" in H.render_html(no_caption, images, None, "file:///x")
    assert "(no caption)" in H.render_text(no_caption)


def test_a_photo_that_cannot_be_read_never_fails_the_report(tmp_path):
    from ml.ingest.images import ImageStore

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "ok.png").write_bytes(b"")
    mistakes = [
        {"post_id": 1, "image_uri": "bad.jpg"},
        {"post_id": 2, "image_uri": "gone.jpg"},
        {"post_id": 3, "image_uri": "ok.png"},
        {"post_id": 4, "image_uri": None},
    ]
    assert X.thumbnails(ImageStore(str(tmp_path)), mistakes) == {}
    problems = [m["photo_problem"] for m in mistakes]
    assert problems[0] == "no photo: unreadable (UnidentifiedImageError)"
    assert problems[1:] == [f"no photo: {r}" for r in ("image_missing", "image_empty")] + [
        "no photo: image_uri_invalid"
    ]
    assert "gone.jpg" in mistakes[1]["photo_detail"]


def test_learning_curves_of_the_newest_version():
    versions, _ = HI.registry_versions(registry(), "post-engagement")
    lc = X.learning_curves(registry(), versions, WEEK)
    assert lc["version"] == "3" and lc["epochs"] == [0, 1, 2, 3, 4]
    assert lc["val_loss"] == CURVES["val_loss"] and lc["train_accuracy"] == [None] * 5
    assert lc["missing"] == ["train_accuracy"] and lc["best_epoch"] == 2  # lowest val loss
    assert [r["epoch"] for r in lc["table"]] == [0, 1, 2, 3, 4]
    # a backfilled week: the newest version trained on data up to its end (v1)
    client = registry()
    many = {k: list(np.linspace(1, 0.5, 70)) for k in X.CURVE_KEYS}
    client.versions[0]["curves"] = many
    client.versions[0]["metrics"]["best_epoch"] = 41.0
    versions, _ = HI.registry_versions(client, "post-engagement")
    lc = X.learning_curves(client, versions, Week(2026, 45))
    assert lc["version"] == "1" and lc["missing"] == [] and lc["best_epoch"] == 41
    assert lc["train_accuracy"] == pytest.approx(many["train_accuracy"])
    shown = [r["epoch"] for r in lc["table"]]
    assert len(shown) <= X.CURVE_TABLE_ROWS + 2 and {0, 41, 69} <= set(shown)
    assert lc["table_every"] == 3 and shown[:3] == [0, 3, 6]
    assert X.learning_curves(client, versions, Week(2026, 44)) is None


def test_drift_compares_the_week_with_the_four_weeks_before(built):
    """Even when the champion trained on a window that contains the week, the week is compared
    with the four weeks before it: the week's label shift is not diluted by itself."""
    settings, lake, _ = built
    client = registry()
    client.versions[2]["vtags"]["postflow.promotion"] = "promoted"  # v3: data to 11-18
    client.alias = "3"
    data = R.build(
        settings,
        WEEK,
        lake=lake,
        client=client,
        now=NOW,
        load_model=lambda s, v: NearestMeanModel(),
    ).data
    assert data["champion"]["window"] == ["2026-11-09", "2026-11-18"]
    dr = data["drift"]
    assert dr["reference_window"] == ["2026-10-19", "2026-11-15"] and dr["reference_weeks"] == 4
    parts = lake.partitions("posts_clean")

    def settled(first: str, last: str) -> int:
        """Posts whose 1-day horizon fell in first..last (created the day before, the day
        after extracted: the labels at the training horizon)."""
        day = timedelta(days=1)
        return sum(
            lake.read_manifest("posts_clean", d)["rows"]
            for d in parts
            if (date.fromisoformat(first) - day).isoformat() <= d
            and (date.fromisoformat(d) + day).isoformat() <= last
            and (date.fromisoformat(d) + day).isoformat() in parts
        )

    assert sum(dr["labels"]["reference"]) == settled("2026-10-19", "2026-11-15")
    assert sum(dr["labels"]["week"]) == settled(WEEK.days[0], WEEK.days[-1]) > 0
    assert (
        dr["labels"]["drifted"]
        and "the 4 weeks before (2026-10-19 to 2026-11-15)" in (data["flags"][0])
    )


def test_email_readable_with_images_blocked(built):
    """Every image has an alt text with its key number, and every number of a chart's alt text
    is in the HTML without its images (the tables carry the data)."""
    _, _, report = built
    data = report.data
    images = {c.name: f"cid:{c.name}" for c in report.charts}
    images |= {n: f"cid:{n}" for n in report.thumbnails}
    html = H.render_html(data, images, None, "file:///x")
    tags = re.findall(r"<img\b[^>]*>", html)
    assert len(tags) == len(images)
    blocked = re.sub(r"<img\b[^>]*>", "", html)
    blocked = re.sub(r"<[^>]+>", " ", blocked)
    for tag in tags:
        alt = re.search(r'alt="([^"]*)"', tag).group(1)
        numbers = re.findall(r"\d+(?:\.\d+)?%?", alt)
        assert numbers, tag
        for n in numbers:
            assert n in blocked, (n, alt)
