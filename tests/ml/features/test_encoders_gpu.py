"""The CUDA path of the encoders (nvJPEG batch decode, fp16 channels_last, out-of-memory
halving), checked against the CPU path. Skipped without CUDA; `bench/gpu-check.sh` runs them
first thing on a GPU machine. Needs only torch, torchvision, sentence-transformers, pyarrow and
Pillow (what a bare GPU machine has); the text model comes from POSTFLOW_TEXT_MODEL when the
packaged MiniLM is absent."""

from __future__ import annotations

import functools
import io
import os
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from ml.features import embed as EM
from ml.features import encoders as E
from ml.ingest.images import ImageStore
from ml.lake.partitions import Lake
from ml.lake.schema import CLEAN_SCHEMA

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
DS = "2024-05-02"


def _jpegs(n: int, seed: int = 5) -> list[bytes]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:300, 0:400] / 300.0
    out = []
    for i in range(n):
        wave = np.sin(xx * rng.uniform(3, 20) + yy * rng.uniform(3, 20))[..., None]
        arr = np.clip(rng.uniform(0, 255, 3) + 80 * wave, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr if i % 2 else arr.transpose(1, 0, 2).copy())
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cuda_fp16_features_match_cpu_fp32():
    pixels = torch.stack([E.pillow_pixels(b) for b in _jpegs(6)])
    with pytest.warns(E.RandomWeightsWarning):
        cpu = E.ImageEncoder("none", "cpu", 8, "fp32").encode(pixels)
        gpu = E.ImageEncoder("none", "cuda", 8, "auto").encode(pixels)
    assert E.resolve_precision("auto", "cuda") == "fp16"
    assert _cos(cpu, gpu).min() > 0.999


def test_nvjpeg_decode_matches_pillow():
    enc = E.ImageEncoder("none", "cuda", 8)
    raws = _jpegs(4)
    items = [
        E.Item(i, "jpeg", payload=torch.frombuffer(bytearray(b), dtype=torch.uint8))
        for i, b in enumerate(raws)
    ]
    out = enc.decode_jpegs(items)
    for raw, dev in zip(raws, out, strict=True):
        assert dev is not None and dev.is_cuda and tuple(dev.shape) == (3, E.CROP, E.CROP)
        ref = E.pillow_pixels(raw).float()
        # nvJPEG decodes at full scale, Pillow with draft: close, not equal
        assert (dev.cpu().float() - ref).abs().mean() < 12


def test_embed_partition_on_cuda_with_device_decode(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    t = datetime(2024, 5, 1, 12)
    rows = []
    for i, data in enumerate(_jpegs(5)):
        (root / f"p{i}.jpg").write_bytes(data)
        rows.append(
            {"id": 1 + i, "author_id": 1, "caption": f"c{i}", "image_uri": f"p{i}.jpg"}
            | {"hearts": 1, "comment_count": i, "created_at": t, "updated_at": t}
        )
    lake = Lake(str(tmp_path / "lake"))
    cols = {f.name: [r.get(f.name) for r in rows] for f in CLEAN_SCHEMA}
    with lake.writer("posts_clean", DS, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))
    text = E.TextEncoder(os.environ.get("POSTFLOW_TEXT_MODEL") or None, "cuda")
    with pytest.warns(E.RandomWeightsWarning):
        summary = EM.embed_partition(
            lake,
            DS,
            functools.partial(ImageStore, str(root)),
            E.ImageEncoder("none", "cuda", 4),
            text,
            EM.EmbedOptions(batch_size=4, decode="device"),
        )
    assert summary["computed"] == 5 and summary["skipped"] == 0
    feats = lake.read_partition("features", DS)
    assert feats.num_rows == 5


def test_oom_on_cuda_halves_the_batch():
    enc = E.ImageEncoder("none", "cuda", 4096)
    with pytest.warns(E.RandomWeightsWarning):
        enc.load()
    free, _ = torch.cuda.mem_get_info()
    # leave ~1 GiB: 128 photos at once do not fit (~3 GiB of fp16 activations), 16 do
    n = 128
    pixels = torch.randint(0, 256, (n, 3, E.CROP, E.CROP), dtype=torch.uint8)
    hog = torch.empty(max(0, free - (1 << 30)), dtype=torch.uint8, device="cuda")
    try:
        out = enc.encode(pixels)
    finally:
        del hog
        torch.cuda.empty_cache()
    assert out.shape == (n, 2048)
    assert enc.batch_size < n  # it halved, and kept the smaller size
