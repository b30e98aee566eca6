"""ml.demo.posts against a real MariaDB (POSTFLOW_TEST_MYSQL_HOST/PORT/USER/PASSWORD, default
root@127.0.0.1:3306; unreachable: the tests fail, naming them) and a tmp image folder
(moto S3 for the S3 store).

One module-scoped run of 300 posts feeds most tests; each database is uniquely named and
dropped at teardown.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import types
import unicodedata
import urllib.parse
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from ml.config import Settings
from ml.demo import captions as demo_captions
from ml.demo import posts as demo_data
from ml.demo import seed
from ml.ingest.images import ImageError, ImageStore
from ml.ingest.reasons import Reason
from tests.conftest import MYSQL_ADMIN, MYSQL_ADMIN_PASSWORD, MYSQL_HOST, MYSQL_PORT, _admin_connect

MySQLdb = pytest.importorskip("MySQLdb")

pytestmark = pytest.mark.integration

HOST, PORT = MYSQL_HOST, MYSQL_PORT
LOGIN = urllib.parse.quote(MYSQL_ADMIN, safe="") + (
    ":" + urllib.parse.quote(MYSQL_ADMIN_PASSWORD, safe="") if MYSQL_ADMIN_PASSWORD else ""
)
END = date(2026, 11, 20)
DAYS = 3
N = 300
SEED = 11
WINDOW_START = datetime(2026, 11, 17)
WINDOW_END = datetime(2026, 11, 20)
COLS = ("id", "author_id", "caption", "image_uri", "hearts", "comment_count")
COLS += ("created_at", "updated_at")


def _server_conn():
    """An admin connection; unreachable: the test fails naming POSTFLOW_TEST_MYSQL_* (no skip)."""
    return _admin_connect()


@pytest.fixture(scope="module")
def make_db():
    """Unique database URIs; every database handed out is dropped at the end."""
    _server_conn().close()
    names: list[str] = []

    def make() -> str:
        names.append(f"pf_test_demo_{uuid.uuid4().hex[:12]}")
        return f"mysql://{LOGIN}@{HOST}:{PORT}/{names[-1]}"

    yield make
    conn = _server_conn()
    try:
        for name in names:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def _settings(uri: str, root: Path | str, **extra) -> Settings:
    return Settings.load(
        overrides={"mysql_uri": uri, "image_root": str(root), "image_workers": 2, **extra},
        environ={},
    )


def _rows(uri: str) -> list[dict]:
    db = uri.rsplit("/", 1)[-1]
    conn = MySQLdb.connect(
        host=HOST,
        port=PORT,
        user=MYSQL_ADMIN,
        passwd=MYSQL_ADMIN_PASSWORD,
        database=db,
        charset="utf8mb4",
    )
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(COLS)} FROM posts ORDER BY id")
        return [dict(zip(COLS, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


def _path(uri: str, root: Path) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        return None
    return root / uri


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(make_db, tmp_path_factory):
    uri, root = make_db(), tmp_path_factory.mktemp("images")
    truth = seed.generate(
        _settings(uri, root), N, DAYS, END, seed=SEED, image_size=96, replace=True
    )
    rows = _rows(uri)
    return types.SimpleNamespace(
        uri=uri, root=root, truth=truth, rows=rows, by_id={r["id"]: r for r in rows}
    )


def test_truth_names_every_kind_and_matches_the_table(demo):
    t = demo.truth
    assert len(demo.rows) == N and t["first_id"] == 1 and t["last_id"] == N
    assert set(t["bad"].values()) == set(demo_data.BAD_KINDS)
    assert set(t["unusual_valid"].values()) == set(demo_data.UNUSUAL_KINDS)
    assert set(t["bad"]).isdisjoint(t["unusual_valid"])
    assert set(t["bad"]) | set(t["unusual_valid"]) <= set(demo.by_id)
    assert 0.04 <= len(t["bad"]) / N <= 0.07
    assert t["bin_edges"] == list(demo_data.DEFAULT_BIN_EDGES) == [0, 1, 3, 10, 30, 100, 300, 600]
    assert t["window"] == [WINDOW_START.isoformat(), WINDOW_END.isoformat()]
    assert set(demo_data.EXPECTED_REASONS) == set(demo_data.BAD_KINDS)
    reasons = {r.value for r in Reason}
    assert all(set(v) <= reasons for v in demo_data.EXPECTED_REASONS.values())
    json.dumps(t)  # the truth is JSON-serialisable as returned


def _decodes(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def _is_blank(s: str) -> bool:
    return all(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in s)


def test_bad_rows_fail_as_designed_and_only_that_way(demo):
    for pid, kind in demo.truth["bad"].items():
        row = demo.by_id[pid]
        path = _path(row["image_uri"], demo.root)
        if kind in {"image_corrupt", "image_truncated"}:
            data = path.read_bytes()
            assert data[:2] == b"\xff\xd8" and len(data) > 100, pid
            with pytest.raises(OSError):
                _decodes(path)
        elif kind == "image_empty":
            assert path.stat().st_size == 0
        elif kind == "image_missing":
            assert not path.exists()
        elif kind == "image_not_an_image":
            assert path.stat().st_size > 0 and path.suffix == ".jpg"
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
        elif kind == "image_uri_unsupported":
            assert row["image_uri"].startswith("http://")
        else:  # the row's defect is not in the image: the image is fine
            _decodes(path)
        if kind == "caption_null":
            assert row["caption"] is None
        elif kind == "caption_empty":
            assert row["caption"] == ""
        elif kind == "caption_blank":
            assert row["caption"] and _is_blank(row["caption"])
        else:
            assert row["caption"] and not _is_blank(row["caption"])
        assert (row["hearts"] < 0) == (kind == "hearts_negative")
        assert (row["comment_count"] < 0) == (kind == "comment_count_negative")
        assert (row["created_at"].year == 2099) == (kind == "created_at_future")
        assert WINDOW_START <= row["updated_at"] < WINDOW_END


def test_valid_images_decode_and_unusual_ones_are_what_they_claim(demo):
    bad, unusual = demo.truth["bad"], demo.truth["unusual_valid"]
    for row in demo.rows:
        if row["id"] in bad:
            continue
        im = _decodes(_path(row["image_uri"], demo.root))
        assert min(im.size) >= 8
        kind = unusual.get(row["id"], "plain")
        expected = {
            "jpeg_cmyk": ("JPEG", "CMYK"),
            "jpeg_grayscale": ("JPEG", "L"),
            "png_rgba": ("PNG", "RGBA"),
            "webp": ("WEBP", "RGB"),
        }.get(kind, ("JPEG", "RGB"))
        assert (im.format, im.mode) == expected, (row["id"], kind)
        assert bool(im.info.get("progressive")) == (kind == "jpeg_progressive")
        assert (im.getexif().get(0x0112) == 6) == (kind == "jpeg_exif_orientation_6")


def test_unusual_captions_are_dirty_but_keep_words(demo):
    checks = {
        "caption_tabs": lambda s: "\t" in s,
        "caption_space_runs": lambda s: "  " in s,
        "caption_control_chars": lambda s: any(unicodedata.category(c) == "Cc" for c in s.strip()),
        "caption_emoji": lambda s: any(
            ord(c) > 0x2000 and unicodedata.category(c) == "So" for c in s
        ),
        "caption_non_latin": lambda s: any(c.isalpha() and ord(c) > 0x36F for c in s),
    }
    seen = set()
    for pid, kind in demo.truth["unusual_valid"].items():
        if kind in checks:
            caption = demo.by_id[pid]["caption"]
            assert checks[kind](caption), (pid, kind, caption)
            cleaned = "".join(c for c in caption if c.isspace() or c.isprintable()).split()
            assert len(cleaned) >= 2
            seen.add(kind)
    assert seen == set(checks)


def test_time_window_and_late_updates(demo):
    later = 0
    valid = [r for r in demo.rows if r["id"] not in demo.truth["bad"]]
    for r in demo.rows:
        assert WINDOW_START <= r["updated_at"] < WINDOW_END
    for r in valid:
        assert r["created_at"] <= r["updated_at"]
        later += r["created_at"].date() < r["updated_at"].date()
    # created days before (10%), or grown on the day after posting (a second snapshot)
    grown = demo.truth["counts"]["grown_in_window"]
    assert 0.04 * len(valid) + grown <= later <= 0.2 * len(valid) + grown and grown > 0.1 * N
    days = {r["updated_at"].date() for r in demo.rows}
    assert days == {date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)}
    created = [r["created_at"] for r in valid]
    assert created == sorted(created)  # ids follow creation order
    assert demo.truth["counts"]["updated_later"] + grown == later


def _mature(r: dict) -> bool:
    """Labelled at the window's end under the demo's horizon (as `ml.learn.labels` labels it):
    created in the window, its horizon passed, and its count set by then (a post first updated
    after its horizon has no count at it)."""
    h = timedelta(days=demo_data.DEMO_LABEL_HORIZON_DAYS)
    start = WINDOW_END - timedelta(days=DAYS)
    return start <= r["created_at"] <= WINDOW_END - h and r["updated_at"] <= r["created_at"] + h


def _fill(make_db, root: Path, **kw) -> tuple[str, dict]:
    uri = make_db()
    truth = seed.generate(_settings(uri, root), N, DAYS, END, SEED, 0.05, 32, True, **kw)
    return uri, truth


def test_counts_grow_from_one_day_to_the_next(make_db, tmp_path):
    """The table written as of the first day, then moved forward a day at a time, ends as the
    table written at once; a post that grew shows a smaller count on its first day than on the
    next, and both snapshots are in the window."""
    first = WINDOW_START.date()
    uri, truth = _fill(make_db, tmp_path / "a", as_of=first)
    settings = _settings(uri, tmp_path / "a")
    states = [{r["id"]: r for r in _rows(uri)}]
    for k in (1, 2):
        seed.advance(settings, truth, first + timedelta(days=k))
        states.append({r["id"]: r for r in _rows(uri)})
    assert len(states[0]) < len(states[1]) < len(states[2]) == N
    at_once, _ = _fill(make_db, tmp_path / "b")
    prefix_a, prefix_b = (
        f"file://{(tmp_path / 'a').resolve()}/",
        f"file://{(tmp_path / 'b').resolve()}/",
    )
    assert [
        dict(r, image_uri=r["image_uri"].replace(prefix_b, prefix_a)) for r in _rows(at_once)
    ] == [states[2][i] for i in sorted(states[2])]
    grew = [i for i in states[0] if states[0][i]["comment_count"] != states[1][i]["comment_count"]]
    assert len(grew) > 0.1 * len(states[0])
    for pid in grew:
        a, b = states[0][pid], states[1][pid]
        assert a["comment_count"] < b["comment_count"] and a["updated_at"] < b["updated_at"]
        assert a["updated_at"].date() == first and b["updated_at"].date() == first + timedelta(1)


def test_reposts_show_the_same_photo_and_land_in_one_split(demo):
    """Planted reposts: the original's photo file under a new id, every other one with its
    caption; their photo hash (what embed stores) is the original's, so is their split."""
    import torch

    from ml.features.encoders import pillow_pixels
    from ml.features.store import photo_hashes
    from ml.learn.splits import assign_splits, group_keys

    reposts = demo.truth["reposts"]
    assert len(reposts) >= 5 and not set(reposts) & set(demo.truth["bad"])
    ids = [*reposts, *reposts.values()]
    data = [_path(demo.by_id[i]["image_uri"], demo.root).read_bytes() for i in ids]
    hashes = photo_hashes(torch.stack([pillow_pixels(d) for d in data]))
    n = len(reposts)
    assert hashes[:n] == hashes[n:] and data[:n] == data[n:]
    split = assign_splits(group_keys(ids, hashes))
    assert split[:n].tolist() == split[n:].tolist()
    same = [demo.by_id[a]["caption"] == demo.by_id[b]["caption"] for a, b in reposts.items()]
    assert sum(same) >= (n + 1) // 2


def _label(comment_count: int) -> int:
    return int(np.searchsorted(demo_data.DEFAULT_BIN_EDGES, comment_count, side="right") - 1)


def test_engagement_signal_is_learnable_but_not_perfect(demo):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score

    X, y, hearts, zero = [], [], [], 0
    for r in demo.rows:
        if r["id"] in demo.truth["bad"] or not _mature(r):
            continue
        zero += r["hearts"] == 0
        if r["hearts"] < 1:
            continue
        im = Image.open(_path(r["image_uri"], demo.root))
        im.draft("RGB", (24, 24))
        X.append(np.asarray(im.convert("RGB").resize((12, 12)), np.float32).mean((0, 1)) / 255)
        y.append(_label(r["comment_count"]))
        hearts.append(r["hearts"])
    X, y = np.array(X), np.array(y)
    majority = np.bincount(y).max() / len(y)
    acc = cross_val_score(
        LogisticRegression(C=30, max_iter=3000), X, y, cv=KFold(5, shuffle=True, random_state=0)
    ).mean()
    assert acc > majority + 0.12, (acc, majority)
    t = demo.truth
    assert majority < acc < t["bayes_accuracy"] < 0.95
    assert abs(t["bayes_accuracy"] - t["bayes_accuracy_population"]) < 0.08
    assert abs(t["majority_accuracy"] - majority) < 1e-3
    # imbalanced prior, heavy tails, hearts correlated with engagement, ~10% hearts == 0
    counts = np.bincount(y, minlength=8)
    assert counts[0] > 4 * counts[7]
    assert 0.04 <= zero / (t["counts"]["labelled_mature"] + zero) <= 0.17
    assert np.corrcoef(np.log(hearts), y)[0, 1] > 0.4
    assert max(r["comment_count"] for r in demo.rows) >= 600


def test_caption_topic_words_follow_the_class(demo):
    hits = []
    for r in demo.rows:
        if r["id"] in demo.truth["bad"] or r["caption"] is None or _is_blank(r["caption"]):
            continue  # no caption (or a blank one): no topic words to count
        if not _mature(r):
            continue  # its count is still growing: not yet its class's
        words = set(r["caption"].lower().replace("#", " ").split())
        hits.append(bool(words & set(demo_captions.TOPIC_WORDS[_label(r["comment_count"])])))
    assert 0.45 < np.mean(hits) < 0.9


def test_same_seed_same_rows_and_bytes(demo, make_db, tmp_path):
    uri, root = make_db(), tmp_path / "again"
    seed.generate(_settings(uri, root), N, DAYS, END, seed=SEED, image_size=96, replace=True)
    prefix_a, prefix_b = f"file://{demo.root.resolve()}/", f"file://{root.resolve()}/"
    again = _rows(uri)
    for r in again:
        r["image_uri"] = r["image_uri"].replace(prefix_b, prefix_a)
    assert again == demo.rows
    assert _tree_hashes(root) == _tree_hashes(demo.root)
    other = demo_data.build_posts(N, DAYS, END, SEED + 1, 1, 0.05, 96, prefix_a)
    assert other.captions != [r["caption"] for r in demo.rows]


def test_cli_appends_refuses_taken_ids_and_writes_truth(make_db, tmp_path, monkeypatch, capsys):
    uri = make_db()
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", uri)
    monkeypatch.setenv("POSTFLOW_IMAGE_ROOT", str(tmp_path / "img"))
    monkeypatch.setenv("POSTFLOW_IMAGE_WORKERS", "1")
    args = ["--posts", "30", "--days", "2", "--end", "2026-11-20", "--image-size", "32"]
    truth_path = tmp_path / "truth.json"
    assert seed.main([*args, "--replace", "--truth", str(truth_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["counts"]["posts"] == 30 and summary["truth"] == str(truth_path)
    truth = json.loads(truth_path.read_text())
    assert {"bad", "unusual_valid", "bayes_accuracy", "bin_edges", "counts", "window"} <= set(truth)
    assert seed.main([*args, "--seed", "8"]) == 0  # appends after MAX(id)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["first_id"] == 31
    assert len(_rows(uri)) == 60
    assert seed.main([*args, "--first-id", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo-data: error:") and "--replace" in err and "\n" not in err


def test_unreachable_mysql_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    import ml.ingest.source

    monkeypatch.setattr(ml.ingest.source, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", "mysql://root@127.0.0.1:1/nowhere")
    monkeypatch.setenv("POSTFLOW_IMAGE_ROOT", str(tmp_path))
    assert seed.main(["--posts", "5"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("demo-data: error: cannot connect to MySQL")
    assert out.err.count("\n") == 1 and "Traceback" not in out.err


def test_s3_image_store(make_db, s3_server):
    boto3 = pytest.importorskip("boto3")
    bucket = f"demo-{uuid.uuid4().hex[:12]}"  # not there yet: generate creates it
    settings = _settings(make_db(), f"s3://{bucket}/img", s3_endpoint=s3_server.endpoint)
    truth = seed.generate(settings, 40, 1, END, image_size=32, replace=True)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="img/").get("Contents", [])}
    rows = _rows(settings.mysql_uri)
    assert truth["images"] == len(keys) > 0
    for r in rows:
        u = r["image_uri"]
        assert not u.startswith("file://")
        if r["id"] in truth["bad"]:
            continue
        if u.startswith("s3://"):
            assert u.startswith(f"s3://{bucket}/img/")
            assert u.removeprefix(f"s3://{bucket}/") in keys
        else:
            assert "img/" + u in keys


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_image_store_reads_back_what_it_writes(where, tmp_path, request):
    """The demo writes through ml.ingest.images.ImageStore; the pipeline reads through the same
    class."""
    if where == "s3":
        s3_server = request.getfixturevalue("s3_server")
        root = f"s3://demo-{uuid.uuid4().hex[:12]}/photos"
        store = ImageStore(root, s3_server.endpoint)
    else:
        root = str(tmp_path / "link")
        (tmp_path / "real").mkdir()
        Path(root).symlink_to(tmp_path / "real")  # uri_prefix names the resolved folder
        store = ImageStore(root)
    store.ensure_root()
    store.ensure_root()  # the folder or bucket is there: nothing to do
    photos = {
        "2026/11/17/1.jpg": b"\xff\xd8" + bytes(range(256)) * 3,
        "2026/11/18/2.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        "3.webp": b"RIFF\x00\x00\x00\x00WEBP",
    }
    for key, data in photos.items():
        store.put(key, data)
    reader = pickle.loads(pickle.dumps(ImageStore(root, store.s3_endpoint)))
    for key, data in photos.items():
        assert reader.fetch(key) == data
        assert reader.fetch(store.uri_prefix + key) == data  # the absolute form of the same
    if where == "s3":
        bucket = root.removeprefix("s3://").split("/")[0]
        assert store.uri_prefix == f"s3://{bucket}/photos/"
        types_ = {
            k: s3_server.client().head_object(Bucket=bucket, Key=f"photos/{k}")["ContentType"]
            for k in photos
        }
        assert list(types_.values()) == ["image/jpeg", "image/png", "image/webp"]
    else:
        assert store.uri_prefix == f"file://{(tmp_path / 'real').resolve()}/"
    store.put("3.webp", b"again")
    assert reader.fetch("3.webp") == b"again"
    store.delete("3.webp")
    store.delete("3.webp")  # already gone: fine
    with pytest.raises(ImageError) as err:
        reader.fetch("3.webp")
    assert err.value.reason is Reason.IMAGE_MISSING
    with pytest.raises(ValueError, match="relative to the image root"):
        store.put("s3://elsewhere/x.jpg", b"x")


def test_unsupported_image_root_is_a_clear_error(make_db, capsys, monkeypatch):
    with pytest.raises(seed.DemoDataError, match="unsupported image root 'http://cdn/x'"):
        seed.generate(_settings(make_db(), "http://cdn/x"), 10, 1, END)
    monkeypatch.setenv("POSTFLOW_MYSQL_URI", make_db())
    monkeypatch.setenv("POSTFLOW_IMAGE_ROOT", "ftp://host/photos")
    assert seed.main(["--posts", "5"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "demo-data: error: unsupported image root 'ftp://host/photos': "
        "use a folder or s3://bucket/prefix\n"
    )
