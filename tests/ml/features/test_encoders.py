"""The CPU speed path of the image encoder (bf16 where the CPU has it, fp32 eager kept as the
baseline) and the progress lines of a long embedding. No timing is checked here: speed is
`bench embed`'s job."""

from __future__ import annotations

import functools
import io
import logging

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ml.features import embed as EM
from ml.features import encoders as E
from ml.ingest.images import ImageStore
from ml.lake.partitions import Lake
from ml.lake.schema import CLEAN_SCHEMA
from ml.progress import Progress

DS = "2024-05-02"


def test_precision_auto_keeps_fp32_on_cpu_and_bf16_is_asked_for():
    # bf16 only where the CPU has it in hardware (emulated bf16 is slower than fp32)
    assert E.resolve_precision("auto", "cpu") == ("bf16" if E.native_bf16() else "fp32")
    assert E.resolve_precision("fp32", "cpu") == "fp32"  # the features of before
    assert E.resolve_precision("auto", "cuda:1") == "fp16"
    assert E.ImageEncoder("none", "cpu", precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        E.ImageEncoder("none", "cpu", precision="int8")


def test_embed_precision_setting_reaches_the_encoder(monkeypatch, tmp_path):
    seen = {}

    def fake_embed(lake, ds, store, image_encoder, text_encoder, opts):
        seen["precision"] = image_encoder.precision
        keys = ("ds", "dataset", "rows", "computed", "cached", "skipped", "seconds")
        return dict.fromkeys(keys, 0) | {"posts_per_s": None, "image_model": "x"}

    monkeypatch.setenv("POSTFLOW_CONFIG", "")
    monkeypatch.setenv("POSTFLOW_LAKE", str(tmp_path))
    monkeypatch.setenv("POSTFLOW_EMBED_PRECISION", "bf16")
    monkeypatch.setattr(EM, "embed_partition", fake_embed)
    assert EM.main(["--ds", DS, "--device", "cpu", "--image-weights", "none"]) == 0
    assert seen["precision"] == "bf16"
    assert (
        EM.main(["--ds", DS, "--device", "cpu", "--image-weights", "none", "--precision", "fp32"])
        == 0
    )
    assert seen["precision"] == "fp32"


def _photos(n: int, seed: int = 3) -> list[bytes]:
    """Smooth colour gradients with a pattern, like the demo's photos, as JPEG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:200] / 160.0
    out = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3)
        wave = np.sin(xx * rng.uniform(3, 20) + yy * rng.uniform(3, 20))[..., None]
        arr = np.clip(base + 80 * wave + rng.normal(0, 8, (160, 200, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.slow
def test_bf16_features_stay_close_to_fp32_eager():
    """The features under bf16 autocast point where fp32's do (they are stored as float16),
    far closer than the features of two different photos are."""
    import torch

    pixels = torch.stack([E.pillow_pixels(b) for b in _photos(4)])
    fp32 = E.ImageEncoder("none", "cpu", batch_size=4, precision="fp32")
    bf16 = E.ImageEncoder("none", "cpu", batch_size=4, precision="bf16")
    with pytest.warns(E.RandomWeightsWarning):
        a, b = fp32.encode(pixels).astype(np.float64), bf16.encode(pixels).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert a.shape == b.shape == (4, 2048)
    assert cos.min() > 0.9999, cos
    assert not np.array_equal(a, b)  # bf16 really ran: the two paths are not the same code
    # ... and "close" means something: random-weights ResNet50 features of four different
    # photos have cosines of 0.997-0.9994 with each other (all positive after the last ReLU), so
    # a cosine bound alone could not tell two photos apart. Same photo at two precisions: at
    # least 10x closer (distance and 1 - cosine) than the closest two different photos.
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    others = ~np.eye(len(a), dtype=bool)
    apart = 1 - (unit @ unit.T)[others]
    distances = np.linalg.norm(a[:, None] - a[None], axis=2)[others]
    assert (1 - cos).max() < 0.1 * apart.min(), (1 - cos, apart)
    assert np.linalg.norm(a - b, axis=1).max() < 0.1 * distances.min()


def test_progress_lines_come_at_the_configured_interval(caplog):
    now = [100.0]
    p = Progress("embed ds=X", 100, every=30, unit="posts", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="ml.progress")
    seen = []
    for _ in range(10):  # a batch of 10 posts every 7 s
        now[0] += 7
        p.add(10)
        seen.append(len(caplog.records))
    # lines after 35 s (5 batches) and 70 s (10 batches), not in between
    assert seen == [0, 0, 0, 0, 1, 1, 1, 1, 1, 2]
    first = caplog.records[0].getMessage()
    assert first == "embed ds=X: 50/100 posts, 1 posts/s, ETA 35s", first
    p.start()  # a step's first line, and its last one whatever the interval
    p.finish()
    assert [r.getMessage() for r in caplog.records[-2:]] == [
        "embed ds=X: starting, 100 posts to do",
        "embed ds=X: 100/100 posts, 1 posts/s, ETA 0s",
    ]


def test_embed_logs_progress_with_rate_and_eta(tmp_path, caplog):
    from datetime import datetime

    root = tmp_path / "images"
    root.mkdir()
    rows = []
    t = datetime(2024, 5, 1, 12)
    for i, data in enumerate(_photos(3)):
        (root / f"p{i}.jpg").write_bytes(data)
        rows.append(
            {"id": 10 + i, "author_id": 1, "caption": f"c{i}", "image_uri": f"p{i}.jpg"}
            | {"hearts": 1, "comment_count": i, "created_at": t, "updated_at": t}
        )
    lake = Lake(str(tmp_path / "lake"))
    cols = {f.name: [r.get(f.name) for r in rows] for f in CLEAN_SCHEMA}
    with lake.writer("posts_clean", DS, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))
    enc = E.ImageEncoder("none", "cpu", batch_size=1)
    caplog.set_level(logging.INFO, logger="ml.progress")
    with pytest.warns(E.RandomWeightsWarning):
        EM.embed_partition(
            lake,
            DS,
            functools.partial(ImageStore, str(root)),
            enc,
            E.TextEncoder(device="cpu"),
            EM.EmbedOptions(batch_size=1, progress_every_s=0),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "ml.progress"]
    # a line before any work, one per batch at interval 0, and the closing one
    assert len(lines) == 5, lines
    assert lines[0] == f"embed ds={DS}: starting, 3 posts to do"
    assert lines[-1].startswith(f"embed ds={DS}: 3/3 posts, ") and "posts/s, ETA 0s" in lines[-1]
