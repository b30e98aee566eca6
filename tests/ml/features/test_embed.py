"""Embedding step on a dozen tiny photos: random ResNet50 weights (no network here) and the real
offline MiniLM. Encoders are loaded once per module to keep the suite fast on shared cores."""

from __future__ import annotations

import argparse
import functools
import io
import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ml.features import embed as EM
from ml.features import encoders as E
from ml.features import store as F
from ml.ingest.images import ImageStore
from ml.lake import schema as S
from ml.lake.partitions import Lake
from ml.lake.schema import CLEAN_SCHEMA

DS = "2024-05-02"
N_GOOD = 12
BAD_ID = 999


def _jpeg(rng: np.random.Generator, orientation: int = 1) -> bytes:
    arr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    arr[:16] = 255  # a bright band so orientation matters
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _write_clean(lake: Lake, rows: list[dict]) -> None:
    cols = {f.name: [r.get(f.name) for r in rows] for f in CLEAN_SCHEMA}
    with lake.writer("posts_clean", DS, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[str, list[dict]]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    rows = []
    t = datetime(2024, 5, 1, 12)
    for i in range(N_GOOD):
        name = f"p{i}.png" if i == 3 else f"p{i}.jpg"
        if i == 3:
            Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(root / name)
        else:
            (root / name).write_bytes(_jpeg(rng, orientation=6 if i == 5 else 1))
        rows.append(
            dict(
                id=100 + i,
                author_id=1,
                caption=f"caption number {i}",
                image_uri=name,
                hearts=i,
                comment_count=i * 3,
                created_at=t,
                updated_at=t,
                exif_orientation=1,
            )
        )
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    rows.append(
        dict(
            id=BAD_ID,
            author_id=1,
            caption="broken",
            image_uri="bad.jpg",
            hearts=1,
            comment_count=0,
            created_at=t,
            updated_at=t,
        )
    )
    return str(root), rows


@pytest.fixture(scope="module")
def encoders():
    img = E.ImageEncoder("none", "cpu", batch_size=8)
    with pytest.warns(E.RandomWeightsWarning, match="RANDOM"):
        img.load()
    return img, E.TextEncoder(device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, photos, encoders):
    """One lake embedded once; tests below read it or rerun over it."""
    root, rows = photos
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    _write_clean(lake, rows)
    store = functools.partial(ImageStore, root)
    summary = EM.embed_partition(lake, DS, store, *encoders, EM.EmbedOptions(batch_size=5))
    return lake, store, summary


def _by_id(lake: Lake, dataset: str = "features") -> dict[int, dict]:
    t = lake.read_partition(dataset, DS)
    return {r["post_id"]: r for r in t.to_pylist()}


def test_random_weights_warn_and_are_tagged(encoders):
    img, txt = encoders
    assert img.model_id == "resnet50:random-seed0"
    assert txt.model_id == "all-MiniLM-L6-v2"


def test_features_shape_dtype_and_skip_recorded(embedded):
    lake, _, summary = embedded
    assert summary["computed"] == N_GOOD and summary["cached"] == 0 and summary["skipped"] == 1
    t = lake.read_partition("features", DS)
    assert t.schema.equals(S.FEATURES_SCHEMA)
    assert t.num_rows == N_GOOD and BAD_ID not in t["post_id"].to_pylist()
    img, txt = F.vectors(t["img"], S.IMG_DIM), F.vectors(t["txt"], S.TXT_DIM)
    assert img.dtype == np.float16 and img.shape == (N_GOOD, 2048)
    assert txt.dtype == np.float16 and txt.shape == (N_GOOD, 384)
    assert np.isfinite(img.astype(np.float32)).all()
    np.testing.assert_allclose(np.linalg.norm(txt.astype(np.float32), axis=1), 1, atol=2e-3)
    manifest = lake.read_manifest("features", DS)
    assert [s["post_id"] for s in manifest["skipped"]] == [BAD_ID]
    assert manifest["skipped"][0]["reason"].startswith("decode:")


def test_content_hash_is_image_bytes_plus_caption(embedded, photos):
    lake, _, _ = embedded
    root, rows = photos
    rec = _by_id(lake)[100]
    data = ImageStore(root).fetch(rows[0]["image_uri"])
    assert rec["content_hash"] == EM.content_hash(data, rows[0]["caption"])
    assert EM.content_hash(data, "other") != rec["content_hash"]
    assert EM.content_hash(b"x", "y") == EM.content_hash(b"x", "y")


def test_rerun_with_nothing_new_does_no_model_work(embedded, capsys, monkeypatch):
    lake, store, _ = embedded
    before = _by_id(lake)
    img, txt = E.ImageEncoder("none", "cpu"), E.TextEncoder()  # fresh: would have to load
    summary = EM.embed_partition(lake, DS, store, img, txt, EM.EmbedOptions(batch_size=5))
    assert summary["computed"] == 0 and summary["cached"] == N_GOOD and summary["skipped"] == 1
    assert not img.loaded and not txt.loaded and img.calls == txt.calls == 0
    after = _by_id(lake)
    assert after.keys() == before.keys()
    for pid in before:
        assert after[pid]["content_hash"] == before[pid]["content_hash"]
        assert after[pid]["img"] == before[pid]["img"]

    # the CLI, through settings, the same: a one-line JSON summary, nothing computed
    monkeypatch.setenv("POSTFLOW_LAKE", lake.root)
    monkeypatch.setenv("POSTFLOW_IMAGE_ROOT", store.args[0])
    monkeypatch.delenv("POSTFLOW_CONFIG", raising=False)
    argv = ["--ds", DS, "--device", "cpu", "--image-weights", "none", "--workers", "0"]
    assert EM.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["computed"] == 0 and out["cached"] == N_GOOD and out["skipped"] == 1

    # with no flags, the settings choose the weights and the device (as the README shows)
    monkeypatch.setenv("POSTFLOW_IMAGE_WEIGHTS", "none")
    monkeypatch.setenv("POSTFLOW_DEVICE", "cpu")
    assert EM.main(["--ds", DS, "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["image_model"] == "resnet50:random-seed0" and out["computed"] == 0


def test_changed_caption_recomputes_only_that_post_deterministically(embedded, encoders, photos):
    lake, store, _ = embedded
    _, rows = photos
    before = _by_id(lake)
    img_enc, txt_enc = encoders
    calls = img_enc.calls
    changed = [dict(r) for r in rows]
    changed[0]["caption"] = "a brand new caption"
    _write_clean(lake, changed)
    try:
        summary = EM.embed_partition(lake, DS, store, img_enc, txt_enc, EM.EmbedOptions())
        assert summary["computed"] == 1 and summary["cached"] == N_GOOD - 1
        assert img_enc.calls == calls + 1
        after = _by_id(lake)
        # same photo, same seeded weights: identical image vector; new caption: new text vector
        assert after[100]["img"] == before[100]["img"]
        assert after[100]["txt"] != before[100]["txt"]
        assert after[100]["content_hash"] != before[100]["content_hash"]
    finally:
        _write_clean(lake, rows)
        EM.embed_partition(lake, DS, store, img_enc, txt_enc, EM.EmbedOptions())


def test_random_init_is_deterministic(encoders):
    px = E.pillow_pixels(_jpeg(np.random.default_rng(1))).unsqueeze(0)
    other = E.ImageEncoder("none", "cpu")
    with pytest.warns(E.RandomWeightsWarning):
        other.load()
    np.testing.assert_array_equal(encoders[0].encode(px), other.encode(px))


def test_shards_split_the_day_and_merge(embedded):
    lake, store, _ = embedded
    ids = np.arange(10_000)
    masks = [EM.shard_mask(ids, i, 3) for i in range(3)]
    assert (sum(m.astype(int) for m in masks) == 1).all()  # disjoint and covering
    assert all(abs(m.mean() - 1 / 3) < 0.03 for m in masks)

    img, txt = E.ImageEncoder("none", "cpu"), E.TextEncoder()
    with pytest.raises(FileNotFoundError, match="shards"):
        EM.merge_shards(lake, DS, 2)
    rows = 0
    for i in range(2):
        s = EM.embed_partition(lake, DS, store, img, txt, EM.EmbedOptions(shard=(i, 2)))
        assert s["dataset"] == f"features_shards/shard={i}-of-2" and s["computed"] == 0
        rows += s["rows"]
    assert rows == N_GOOD and not img.loaded  # all served from features/ds
    before = _by_id(lake)
    merged = EM.merge_shards(lake, DS, 2)
    assert merged["rows"] == N_GOOD and merged["skipped"] == 1
    assert _by_id(lake) == before


def test_oom_halves_the_batch_and_goes_on():
    import torch

    class Owner:
        batch_size = 8

    seen = []

    def fn(sl: slice):
        n = sl.stop - sl.start
        if n > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        seen.append((sl.start, sl.stop))
        return np.arange(sl.start, sl.stop)

    owner = Owner()
    out = np.concatenate(E._run_halving(fn, 7, owner, "test"))
    assert owner.batch_size == 2 and out.tolist() == list(range(7))


def test_device_decode_path_matches_pillow_on_cpu(encoders):
    """The nvJPEG path (here on CPU) gives the same crop as Pillow, orientation included."""
    import torch

    data = _jpeg(np.random.default_rng(3), orientation=6)
    item = E.Item(0, "jpeg", "h", torch.frombuffer(bytearray(data), dtype=torch.uint8), 6)
    broken = E.Item(1, "jpeg", "h", torch.frombuffer(bytearray(b"\xff\xd8junk"), dtype=torch.uint8))
    dev, bad = encoders[0].decode_jpegs([item, broken])
    assert bad is None and broken.reason.startswith("decode:")
    ref = E.pillow_pixels(data)
    assert dev.shape == ref.shape == (3, 224, 224) and dev.dtype == torch.uint8
    assert (dev.float() - ref.float()).abs().mean() < 12
    rot = E.pillow_pixels(_jpeg(np.random.default_rng(3), orientation=1))
    assert (dev.float() - ref.float()).abs().mean() < (rot.float() - ref.float()).abs().mean()


# torchvision's own (deprecated) JPEG decoder is the independent oracle of TorchCodec's pixels.
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_device_decode_resizes_each_size_once_and_keeps_order(encoders, monkeypatch):
    """Photos of one size share a resize call; every crop equals the photo's own resize, its
    pixels those torchvision's decoder gives."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    rng = np.random.default_rng(11)
    datas = [_jpeg(rng, o) for o in (1, 6, 1, 8, 1)]  # 64x48, then 48x64 once rotated
    items = [
        E.Item(k, "jpeg", "h", torch.frombuffer(bytearray(d), dtype=torch.uint8), o)
        for k, (d, o) in enumerate(zip(datas, (1, 6, 1, 8, 1), strict=True))
    ]
    calls = []
    real_resize = TF.resize
    monkeypatch.setattr(
        TF, "resize", lambda t, *a, **k: calls.append(t.shape) or real_resize(t, *a, **k)
    )
    got = encoders[0].decode_jpegs(items)
    assert sorted(c[0] for c in calls) == [2, 3]  # two sizes, two calls
    for item, out in zip(items, got, strict=True):
        img = decode_jpeg(item.payload, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        want = TF.center_crop(real_resize(img, [E.RESIZE], antialias=True), [E.CROP, E.CROP])
        assert torch.equal(out, want)


def test_imagenet_weights_missing_from_cache_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enc = E.ImageEncoder("imagenet", "cpu")
    assert enc.model_id == "resnet50:imagenet1k_v2"
    with pytest.raises(E.WeightsUnavailable, match="--allow-download"):
        enc.load()


def test_parse_shard():
    assert EM.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            EM.parse_shard(bad)
