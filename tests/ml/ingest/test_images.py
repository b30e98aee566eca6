import io
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.config import Settings
from ml.ingest.image_decode import ImageError, ImageInfo, check_image
from ml.ingest.images import ImageStore, check_uris
from ml.ingest.reasons import Reason

MAX_PIXELS = 40_000_000
MIN_SIDE = 8


def photo(w: int = 256, h: int = 192, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photo, not like a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    arr = (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype("uint8")
    return Image.fromarray(arr, "RGB")


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(**kw: object) -> bytes:
    return encode(photo(), "JPEG", quality=90, **kw)


def check(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> ImageInfo:
    return check_image(data, max_pixels, min_side)


def reason_of(data: bytes, **kw: int) -> Reason | None:
    try:
        check(data, **kw)
    except ImageError as exc:
        return exc.reason
    return None


def full_decode_fails(data: bytes) -> bool:
    """Plain Pillow, full size: the reference the 1/8-scale check must be at least as strict as."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return True
    return False


# -- valid images, including unusual ones ------------------------------------------------------


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(), "JPEG", exif=exif.tobytes())


def rgba() -> Image.Image:
    im = photo().convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    return im


def palette_png() -> bytes:
    im = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


VALID = {
    "rgb_jpeg": (lambda: jpeg(), "JPEG", "RGB"),
    "progressive_jpeg": (lambda: jpeg(progressive=True), "JPEG", "RGB"),
    "cmyk_jpeg": (lambda: encode(photo().convert("CMYK"), "JPEG"), "JPEG", "CMYK"),
    "grey_jpeg": (lambda: encode(photo().convert("L"), "JPEG"), "JPEG", "L"),
    "jpeg_444_restart_markers": (
        lambda: jpeg(subsampling=0, restart_marker_blocks=3),
        "JPEG",
        "RGB",
    ),
    "grey_jpeg_restart_markers": (
        lambda: encode(photo(203, 101).convert("L"), "JPEG", restart_marker_blocks=5),
        "JPEG",
        "L",
    ),
    "rgba_png": (lambda: encode(rgba(), "PNG"), "PNG", "RGBA"),
    "palette_png": (palette_png, "PNG", "P"),
    "grey_png": (lambda: encode(photo().convert("L"), "PNG"), "PNG", "L"),
    "png_16bit": (
        lambda: encode(Image.fromarray(np.full((32, 32), 40000, "uint16")), "PNG"),
        "PNG",
        "I;16",
    ),
    "webp": (lambda: encode(photo(), "WEBP", quality=80), "WEBP", "RGB"),
    "webp_lossless_rgba": (
        lambda: encode(rgba(), "WEBP", lossless=True),
        "WEBP",
        "RGBA",
    ),
    "gif": (lambda: encode(photo().convert("P"), "GIF"), "GIF", "P"),
    "bmp": (lambda: encode(photo(), "BMP"), "BMP", "RGB"),
    "tiff": (lambda: encode(photo(), "TIFF", compression="tiff_deflate"), "TIFF", "RGB"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_images_pass(name: str) -> None:
    make, fmt, mode = VALID[name]
    data = make()
    info = check(data)
    assert (info.format, info.mode) == (fmt, mode)
    with Image.open(io.BytesIO(data)) as im:
        assert (info.width, info.height) == im.size  # full size, not the 1/8 draft size
    assert info.exif_orientation == 1


def test_exif_orientation_recorded_not_applied() -> None:
    info = check(exif_rotated_jpeg())
    assert info.exif_orientation == 6
    assert (info.width, info.height) == (256, 192)


# -- bad images --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"hello, I am a caption", b"%PDF-1.4\n%...", b"\x00" * 100, b"%!PS-Adobe-3.0 EPSF-3.0\n"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError) as err:
        check(data)
    assert err.value.reason is Reason.IMAGE_NOT_AN_IMAGE


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_RSS_PROBE = """
import resource, sys
from pathlib import Path
from ml.ingest.image_decode import ImageError, check_image
data = sys.stdin.buffer.read()
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a defect fails, the host lives
def kib(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in lines if x.startswith(field)).split()[1])
import io
from PIL import Image
warm = io.BytesIO()
Image.new("RGB", (16, 16)).save(warm, "PNG")
check_image(warm.getvalue(), 1 << 20, 8)  # Pillow's plugins imported before measuring
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = kib("VmRSS:")
try:
    check_image(data, int(sys.argv[1]), int(sys.argv[2]))
    reason = "accepted"
except ImageError as exc:
    reason = exc.reason.value
except MemoryError:
    reason = "MemoryError"
print(reason, (kib("VmHWM:") - before) * 1024)
"""


def _peak_rss_growth(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int]:
    """(reason or "accepted", growth of the peak RSS in bytes) of check_image(data) in a fresh
    process: the whole process, Pillow's C allocations included (tracemalloc sees only
    Python's allocator)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(max_pixels), str(MIN_SIDE)],
        input=data,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    reason, growth = out.stdout.decode().split()
    return reason, int(growth)


def test_decompression_bomb_header_rejected_before_decoding() -> None:
    data = png_header_only(100_000, 100_000)  # 10 gigapixels claimed in 100 bytes
    reason, growth = _peak_rss_growth(data)
    assert reason == Reason.IMAGE_TOO_LARGE.value
    assert growth < 5_000_000, growth
    # under Pillow's own bomb limit, over ours: a real PNG of 15 megapixels (45 KB on disk,
    # 45 MB decoded) is never decoded
    rows = zlib.compress(b"\x00" * (1 + 5000 * 3) * 3000, 9)  # filter byte + RGB, each row
    bomb = png_header_only(5000, 3000, idat=rows)
    assert len(bomb) < 100_000
    reason, growth = _peak_rss_growth(bomb, max_pixels=10_000_000)
    assert reason == Reason.IMAGE_TOO_LARGE.value
    assert growth < 5_000_000, growth
    # the probe sees C allocations: a photo decoded for real raises the peak by its pixels
    big = io.BytesIO()
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(big, "PNG")
    reason, growth = _peak_rss_growth(big.getvalue(), max_pixels=50_000_000)
    assert reason == "accepted" and growth > 3000 * 2000 * 3, (reason, growth)


def test_too_large_by_our_limit_checked_from_header() -> None:
    data = png_header_only(5000, 3000)  # under Pillow's own bomb limit, over ours; no pixel data
    with pytest.raises(ImageError) as err:
        check(data, max_pixels=10_000_000)
    assert err.value.reason is Reason.IMAGE_TOO_LARGE
    assert "5000x3000" in err.value.message


def test_too_small() -> None:
    with pytest.raises(ImageError) as err:
        check(encode(photo(64, 4), "PNG"))
    assert err.value.reason is Reason.IMAGE_TOO_SMALL
    assert "64x4" in err.value.message


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_is_corrupt_with_draft(progressive: bool) -> None:
    data = jpeg(progressive=progressive)
    for cut in (0.3, 0.6, 0.95):
        part = data[: int(len(data) * cut)]
        with pytest.raises(ImageError) as err:
            check(part)
        assert err.value.reason is Reason.IMAGE_CORRUPT
        assert "truncated" in err.value.message
        assert str(len(part)) in err.value.message


def test_truncated_png_is_corrupt() -> None:
    data = encode(photo(), "PNG")
    with pytest.raises(ImageError) as err:
        check(data[: len(data) // 2])
    assert err.value.reason is Reason.IMAGE_CORRUPT


def test_header_only_jpeg_is_corrupt() -> None:
    data = jpeg()
    sos = data.index(b"\xff\xda")
    assert reason_of(data[: sos + 20]) is Reason.IMAGE_CORRUPT


def scan_start(data: bytes) -> int:
    return data.index(b"\xff\xda") + 2 + int.from_bytes(data[data.index(b"\xff\xda") + 2 :][:2])


@pytest.mark.parametrize("progressive", [False, True])
def test_bogus_marker_mid_stream_is_corrupt(progressive: bool) -> None:
    data = bytearray(jpeg(progressive=progressive))
    mid = (scan_start(data) + len(data)) // 2
    data[mid : mid + 2] = b"\xff\x4a"
    assert reason_of(bytes(data)) is Reason.IMAGE_CORRUPT


def test_random_garbage_mid_stream_is_corrupt() -> None:
    data = bytearray(jpeg())
    mid = (scan_start(data) + len(data)) // 2
    data[mid : mid + 256] = np.random.default_rng(3).integers(0, 256, 256, "uint8").tobytes()
    data[mid + 100 : mid + 102] = b"\xff\xc1"  # a frame header in the middle of a scan
    assert reason_of(bytes(data)) is Reason.IMAGE_CORRUPT


@pytest.mark.parametrize("kw", [{}, {"restart_marker_rows": 1}], ids=["plain", "rst"])
def test_cut_and_reterminated_jpeg_is_corrupt(kw: dict) -> None:
    # libjpeg only *warns* on a premature end of scan data and Pillow drops the warning, so a
    # cut file closed with EOI decodes "fine" in Pillow at any scale; the check fails on it.
    data = jpeg(**kw)
    cut = data[: len(data) * 2 // 3] + b"\xff\xd9"
    assert not full_decode_fails(cut)
    with pytest.raises(ImageError) as err:
        check(cut)
    assert err.value.reason is Reason.IMAGE_CORRUPT
    assert "premature end of data segment" in err.value.message


def test_garbage_in_scan_data_that_pillow_hides_is_corrupt() -> None:
    """A run of disk garbage inside the scan: Pillow paints grey blocks and says nothing,
    libjpeg warns (premature end of data segment, extraneous bytes, bad Huffman code)."""
    data = jpeg()
    rng = np.random.default_rng(5)
    hidden_by_pillow = caught = 0
    for pos in np.linspace(scan_start(data) + 100, len(data) - 200, 10).astype(int):
        bad = bytearray(data)
        bad[pos : pos + 64] = rng.integers(0, 256, 64, "uint8").tobytes()
        if not full_decode_fails(bytes(bad)):
            hidden_by_pillow += 1
            caught += reason_of(bytes(bad)) is Reason.IMAGE_CORRUPT
    assert hidden_by_pillow >= 5 and caught >= hidden_by_pillow - 2, (hidden_by_pillow, caught)


def test_metadata_only_libjpeg_warnings_leave_the_photo_clean() -> None:
    data = jpeg()
    assert data[6:11] == b"JFIF\x00"
    odd_jfif = data[:11] + b"\x02\x07" + data[13:]  # JFIF 2.07: libjpeg warns, pixels intact
    padded = data[:-2] + b"\x00" * 7 + b"\xff\xd9"  # padding before EOI (some cameras)
    trailing = data + b"trailing bytes after EOI"
    for name, ok in (("odd_jfif", odd_jfif), ("padded", padded), ("trailing", trailing)):
        assert reason_of(ok) is None, name


def test_lost_block_between_restart_markers_is_corrupt() -> None:
    data = jpeg(restart_marker_blocks=2, subsampling=0)
    first_rst = data.index(b"\xff\xd0", scan_start(data))
    lost = data[: first_rst + 1000] + data[first_rst + 3000 :]  # spans at least one RST
    assert reason_of(lost) is Reason.IMAGE_CORRUPT


def corruptions(data: bytes) -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    start = scan_start(data)
    for _ in range(12):
        pos = int(rng.integers(start + 50, len(data) - 300))
        d = bytearray(data)
        d[pos : pos + 64] = rng.integers(0, 256, 64, "uint8").tobytes()
        yield f"random64@{pos}", bytes(d)
        yield f"truncated@{pos}", data[:pos]
        yield f"deleted@{pos}", data[:pos] + data[pos + 200 :]


@pytest.mark.parametrize(
    "kw", [{}, {"progressive": True}, {"restart_marker_rows": 1}], ids=["base", "prog", "rst"]
)
def test_check_at_least_as_strict_as_full_decode(kw: dict) -> None:
    """1/8-scale decoding still entropy-decodes everything: whatever a full Pillow decode
    rejects, the check rejects too, and libjpeg's warnings let it reject far more."""
    data = jpeg(**kw)
    assert reason_of(data) is None
    caught_full = caught_draft = 0
    for name, bad in corruptions(data):
        if full_decode_fails(bad):
            caught_full += 1
            assert reason_of(bad) is Reason.IMAGE_CORRUPT, name
        caught_draft += reason_of(bad) is not None
    assert caught_full >= 12  # at least every truncation
    assert caught_draft > caught_full  # the damaged-but-decodable ones too


# -- the store ---------------------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "2024" / "05").mkdir(parents=True)
    (root / "2024" / "05" / "a.jpg").write_bytes(jpeg())
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"not a photo")
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    return root


def fetch_reason(store: ImageStore, uri: str | None) -> Reason | None:
    try:
        store.fetch(uri)
    except ImageError as exc:
        return exc.reason
    return None


def test_local_store(image_root: Path) -> None:
    store = ImageStore(str(image_root))
    assert store.fetch("2024/05/a.jpg")[:2] == b"\xff\xd8"
    assert store.fetch("./2024/../2024/05/a.jpg")[:2] == b"\xff\xd8"
    inside = image_root / "2024" / "05" / "a.jpg"
    assert store.fetch(f"file://{inside}")[:2] == b"\xff\xd8"
    outside = image_root.parent / "outside.jpg"
    assert fetch_reason(store, f"file://{outside}") is Reason.IMAGE_URI_INVALID
    extra = ImageStore(str(image_root), allowed_roots=[str(image_root.parent)])
    assert extra.fetch(f"file://{outside}")[:2] == b"\xff\xd8"
    assert fetch_reason(store, "2024/05/nope.jpg") is Reason.IMAGE_MISSING
    assert fetch_reason(store, "2024/05") is Reason.IMAGE_MISSING
    assert fetch_reason(store, "empty.jpg") is Reason.IMAGE_EMPTY


@pytest.mark.parametrize(
    "uri",
    [
        "../../etc/passwd",
        "../outside.jpg",
        "2024/../../outside.jpg",
        "/etc/passwd",
        "http://example.com/a.jpg",
        "https://example.com/a.jpg",
        "ftp://example.com/a.jpg",
        "gs://bucket/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "file://otherhost/etc/passwd",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        "s3://Bad_Bucket!/a.jpg",
        "",
        "   ",
        None,
        "a\x00.jpg",
    ],
)
def test_invalid_uris(image_root: Path, uri: str | None) -> None:
    assert fetch_reason(ImageStore(str(image_root)), uri) is Reason.IMAGE_URI_INVALID


def test_messages_never_quote_the_bytes_of_a_file(image_root: Path) -> None:
    secret = b"SHELL=/bin/bash\0AWS_SECRET_ACCESS_KEY=hunter2\0"
    (image_root / "environ.jpg").write_bytes(secret)
    result = check_uris(["environ.jpg"], Settings(image_root=str(image_root), image_workers=1))[0]
    assert result.reason is Reason.IMAGE_NOT_AN_IMAGE
    assert "SHELL" not in result.message and "hunter2" not in result.message


def test_a_file_over_the_byte_limit_is_too_large(image_root: Path) -> None:
    store = ImageStore(str(image_root), max_bytes=10)
    (image_root / "big.jpg").write_bytes(b"x" * 11)
    assert fetch_reason(store, "big.jpg") is Reason.IMAGE_TOO_LARGE
    (image_root / "fits.jpg").write_bytes(b"x" * 10)
    assert store.fetch("fits.jpg") == b"x" * 10


def test_from_settings_confines_like_the_image_check(tmp_path: Path) -> None:
    store = ImageStore.from_settings(
        Settings(image_root=str(tmp_path), image_allowed_roots=f"{tmp_path}/extra, s3://cdn-x")
    )
    assert fetch_reason(store, "file:///etc/passwd") is Reason.IMAGE_URI_INVALID
    assert fetch_reason(store, f"file://{tmp_path}/extra/nope.jpg") is Reason.IMAGE_MISSING
    assert store.resolve("s3://cdn-x/a.jpg") == ("cdn-x", "a.jpg")
    assert fetch_reason(store, "s3://cdn-y/a.jpg") is Reason.IMAGE_URI_INVALID


def test_check_uris_in_process_keeps_order(image_root: Path) -> None:
    settings = Settings(image_root=str(image_root), image_workers=1)
    uris = ["2024/05/a.jpg", None, "empty.jpg", "text.jpg", "../../etc/passwd", "nope.jpg"]
    results = check_uris(uris, settings)
    assert [r.uri for r in results] == uris
    assert [r.reason for r in results] == [
        None,
        Reason.IMAGE_URI_INVALID,
        Reason.IMAGE_EMPTY,
        Reason.IMAGE_NOT_AN_IMAGE,
        Reason.IMAGE_URI_INVALID,
        Reason.IMAGE_MISSING,
    ]
    ok = results[0]
    assert (ok.format, ok.width, ok.height, ok.exif_orientation, ok.mode) == (
        "JPEG",
        256,
        192,
        1,
        "RGB",
    )
    assert all(r.message for r in results[1:]) and results[0].message == ""
    assert all(r.width is None for r in results[1:])


def test_check_uris_worker_processes(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(encode(photo(16 + i, 16, seed=i), "PNG"))
    (tmp_path / "bad.png").write_bytes(encode(photo(16, 16), "PNG")[:60])
    uris = [f"{i % 3}.png" if i % 7 else "bad.png" for i in range(150)]
    results = check_uris(uris, Settings(image_root=str(tmp_path), image_workers=2))
    assert len(results) == 150
    for i, r in enumerate(results):
        if i % 7:
            assert r.reason is None and r.width == 16 + i % 3, (i, r)
        else:
            assert r.reason is Reason.IMAGE_CORRUPT, (i, r)


# -- S3 ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="posts/2024/a.jpg", Body=jpeg())
    s3.put_object(Bucket="photos", Key="posts/2024/b.webp", Body=encode(photo(), "WEBP"))
    s3.put_object(Bucket="photos", Key="posts/empty.jpg", Body=b"")
    s3.put_object(Bucket="photos", Key="posts/cut.jpg", Body=jpeg()[:3000])
    return "photos"


def test_s3_uris_and_relative_under_s3_root(s3_endpoint: str, bucket: str) -> None:
    settings = Settings(image_root=f"s3://{bucket}/posts", s3_endpoint=s3_endpoint, image_workers=1)
    uris = [
        f"s3://{bucket}/posts/2024/a.jpg",
        "2024/b.webp",
        "2024/missing.jpg",
        f"s3://{bucket}/posts/nope.jpg",
        "s3://no-such-bucket/a.jpg",  # not the root's bucket: never asked for
        "empty.jpg",
        "cut.jpg",
        "../../etc/passwd",
    ]
    assert [r.reason for r in check_uris(uris, settings)] == [
        None,
        None,
        Reason.IMAGE_MISSING,
        Reason.IMAGE_MISSING,
        Reason.IMAGE_URI_INVALID,
        Reason.IMAGE_EMPTY,
        Reason.IMAGE_CORRUPT,
        Reason.IMAGE_URI_INVALID,
    ]


def test_s3_object_over_the_byte_limit_is_too_large(s3_endpoint: str, bucket: str) -> None:
    store = ImageStore(f"s3://{bucket}/posts", s3_endpoint, max_bytes=len(jpeg()) - 1)
    assert fetch_reason(store, "2024/a.jpg") is Reason.IMAGE_TOO_LARGE
    assert ImageStore(f"s3://{bucket}/posts", s3_endpoint).fetch("2024/a.jpg") == jpeg()


def test_s3_unreachable_is_unreadable() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    store = ImageStore("s3://photos", f"http://127.0.0.1:{free_port()}", attempts=2, backoff_s=0.01)
    with pytest.raises(ImageError) as err:
        store.fetch("a.jpg")
    assert err.value.reason is Reason.IMAGE_UNREADABLE
    assert "after 2 attempts" in err.value.message


def test_store_pickles_without_client(s3_endpoint: str, bucket: str) -> None:
    import pickle

    store = ImageStore(f"s3://{bucket}", s3_endpoint)
    assert store.fetch("posts/2024/a.jpg")[:2] == b"\xff\xd8"
    clone = pickle.loads(pickle.dumps(store))
    assert clone.fetch("posts/2024/a.jpg")[:2] == b"\xff\xd8"


def _check_in_a_daemon(root: str, uris: list[str], out) -> None:
    try:
        results = check_uris(uris, Settings(image_root=root, image_workers=2))
        out.put([(r.reason and r.reason.value, r.width) for r in results])
    except BaseException as exc:  # the parent asserts on what came back
        out.put(repr(exc))


def test_check_uris_in_a_daemonic_process(tmp_path: Path) -> None:
    """A Celery prefork worker's task is a daemonic process, which may start no child process:
    the check must still run all its photos (over threads) instead of failing the task."""
    import multiprocessing

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(encode(photo(16 + i, 16, seed=i), "PNG"))
    (tmp_path / "bad.png").write_bytes(encode(photo(16, 16), "PNG")[:60])
    uris = [f"{i % 3}.png" if i % 7 else "bad.png" for i in range(150)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_check_in_a_daemon, args=(str(tmp_path), uris, out), daemon=True)
    proc.start()
    got = out.get(timeout=120)
    proc.join(30)
    assert isinstance(got, list), got
    expected = [
        (None, 16 + i % 3) if i % 7 else (Reason.IMAGE_CORRUPT.value, None) for i in range(150)
    ]
    assert got == expected
