"""Decoding a photo's bytes to decide whether it is usable, and what it is.

The check decodes every image fully (JPEG at 1/8 scale through libjpeg-turbo, which still
entropy-decodes all of the data, with its warnings as errors) because a header-only check lets
truncated uploads through to the embedding pods. Messages say what is wrong, never quote the
bytes (a photo's bytes are user data; a "photo" may be someone's secrets).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from ml.ingest.reasons import Reason

# Formats a photo may come in. Everything else Pillow could open (EPS runs Ghostscript, PSD,
# ICO, ...) is refused as not an image: less attack surface, nothing the GPU step cannot read.
# Multi-picture JPEGs from phones open through the JPEG opener and report format "MPO".
ACCEPTED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "AVIF",
)


class ImageError(Exception):
    """A photo is not usable; `reason` is the quarantine code, `message` says why to a human."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    exif_orientation: int  # 1-8 as in the EXIF tag, 1 when absent; applied by the feature step
    mode: str


# -- checking --------------------------------------------------------------------------------


def check_image(data: bytes, max_pixels: int, min_side: int) -> ImageInfo:
    """Identify, size-check from the header, then decode the whole image; ImageError if unusable.

    The pixel limit is checked before any decoding (decompression bombs). JPEG decodes at 1/8
    scale: libjpeg still Huffman-decodes every coefficient, so a truncated or broken stream fails
    exactly as it would at full size, at a fraction of the IDCT and colour-conversion cost.
    """
    from PIL import Image, UnidentifiedImageError

    Image.init()  # registers every plugin, so `formats=` knows MPO, WEBP, AVIF...; once per process
    fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            Reason.IMAGE_NOT_AN_IMAGE,
            f"not a recognised image ({len(data)} bytes); accepted: {', '.join(ACCEPTED_FORMATS)}",
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(Reason.IMAGE_TOO_LARGE, str(exc)) from None
    except Exception as exc:  # a malformed header: Pillow raises many types here
        raise ImageError(
            Reason.IMAGE_CORRUPT, f"unreadable image header: {_describe(exc)}"
        ) from None

    with im:
        fmt, mode = im.format or "unknown", im.mode
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                Reason.IMAGE_TOO_LARGE,
                f"{fmt} {width}x{height} = {width * height} pixels exceeds {max_pixels}",
            )
        small = min(width, height) < min_side
        also = f" (also smaller than {min_side} px: {width}x{height})" if small else ""
        if fmt in ("JPEG", "MPO"):  # libjpeg's L, RGB and CMYK all convert to RGB
            problem = jpeg_decode_problem(data, mode)
            if problem:
                raise ImageError(Reason.IMAGE_CORRUPT, problem + also)
        else:
            try:
                im.load()
            except Exception as exc:
                raise ImageError(
                    Reason.IMAGE_CORRUPT, _decode_message(exc, fmt, data) + also
                ) from None
            try:
                im.convert("RGB")
            except Exception as exc:
                raise ImageError(
                    Reason.IMAGE_CORRUPT,
                    f"{fmt} mode {mode} cannot convert to RGB: {_describe(exc)}",
                ) from None
        if small:
            raise ImageError(
                Reason.IMAGE_TOO_SMALL,
                f"{fmt} {width}x{height}: a side is below {min_side} px",
            )
        orientation = 1
        try:
            value = im.getexif().get(0x0112, 1)
            if isinstance(value, int) and 1 <= value <= 8:
                orientation = value
        except Exception:  # a broken EXIF block does not make the photo unusable
            pass
    return ImageInfo(fmt, width, height, orientation, mode)


# libjpeg warnings that say nothing about the pixels: a file that only has these is clean.
# Every other warning (premature end of file or of a data segment, bad Huffman code, lost
# restart marker, extraneous bytes in scan data...) means damaged image data.
_HARMLESS_LIBJPEG_WARNINGS = (
    "unknown JFIF revision",
    "Unknown Adobe color transform",
    "bad ICC marker",
    "Invalid SOS parameters for sequential JPEG",
)
# "N extraneous bytes before marker 0xd9" is padding when those N bytes before an EOI are one
# repeated value (some encoders pad); otherwise the decoder lost sync in damaged scan data and
# finished early: the commonest sign of garbage inside a scan.
_EXTRANEOUS_BEFORE_EOI = re.compile(r"(\d+) extraneous bytes before marker 0xd9")


def jpeg_decode_problem(data: bytes, mode: str) -> str | None:
    """Decode a JPEG at 1/8 scale with libjpeg-turbo warnings as errors; what is wrong, or None.

    1/8 scale still entropy-decodes every coefficient of every component, so damage anywhere in
    the data shows, at a fraction of the IDCT and colour-conversion cost (2.3x a full Pillow
    decode, bench/bench_images.py). Pillow drops libjpeg's warnings, and with them a bad
    Huffman code or a premature end of scan data: such files "decode" into grey blocks. Here
    those warnings fail the image, except the few that concern metadata only.
    """
    import simplejpeg

    space = "CMYK" if mode == "CMYK" else "GRAY"  # grey output: chroma still entropy-decoded
    kw = {"colorspace": space, "min_height": 1, "min_width": 1, "min_factor": 8}
    try:
        simplejpeg.decode_jpeg(data, strict=True, **kw)
        return None
    except ValueError as exc:
        text = str(exc).strip() or type(exc).__name__
    if any(harmless in text for harmless in _HARMLESS_LIBJPEG_WARNINGS) or _padded_eoi(data, text):
        # TurboJPEG fails some of these even when not strict: Pillow, which ignores every
        # warning, decides (still at 1/8 scale). Rare files, so the slower path is fine.
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft(im.mode, (1, 1))
                im.load()
            return None
        except Exception as exc:
            text = _describe(exc)
    if "Premature end of JPEG file" in text:
        return f"image file is truncated: JPEG data ends after {len(data)} bytes (libjpeg: {text})"
    return f"JPEG decode failed: {text}"


def _padded_eoi(data: bytes, warning: str) -> bool:
    m = _EXTRANEOUS_BEFORE_EOI.search(warning)
    if not m:
        return False
    n = int(m.group(1))
    eoi = data.find(b"\xff\xd9", n)
    while eoi >= 0:
        if len(set(data[eoi - n : eoi])) == 1:
            return True
        eoi = data.find(b"\xff\xd9", eoi + 2)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode_message(exc: BaseException, fmt: str, data: bytes) -> str:
    text = str(exc)
    if "truncated" in text:
        m = re.search(r"\((\d+) bytes not processed\)", text)
        used = f", {int(m.group(1))} trailing bytes unprocessed" if m else ""
        return f"image file is truncated: {fmt} data ends after {len(data)} bytes{used}"
    return f"{fmt} decode failed: {_describe(exc)}"
