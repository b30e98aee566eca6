import pandas as pd
import pytest

from ml.ingest.captions import sanitize_caption, sanitize_captions

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # ZWJ sequence
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # tag sequence
FRANCE = "\U0001f1eb\U0001f1f7"
THUMB_MEDIUM = "\U0001f44d\U0001f3fd"
HEART_EMOJI = "\u2764\ufe0f"  # variation selector 16
KEYCAP = "1\ufe0f\u20e3"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\tb", "a b"),
        ("a    b", "a b"),
        ("  lead and trail \t\n", "lead and trail"),
        ("line1\r\nline2\rline3\nline4", "line1 line2 line3 line4"),
        (
            "nb\u00a0sp, ideographic\u3000space, narrow\u202fnbsp",
            "nb sp, ideographic space, narrow nbsp",
        ),
        ("para\u2029sep\u2028line\x85nel\x0bvt\x0cff", "para sep line nel vt ff"),
        ("nul\x00 esc\x1b[31m del\x7f c1\x9b", "nul esc[31m del c1"),
        ("zero\u200bwidth \ufeffbom word\u2060joiner", "zerowidth bom wordjoiner"),
        ("bidi \u202eevil\u202c \u200emark\u200f", "bidi evil mark"),
        ("a \x00 b", "a b"),  # a removed control does not leave a double space
        ("cafe\u0301", "caf\u00e9"),  # NFC
        ("e\u200b\u0301", "\u00e9"),  # a removed control between base and accent
        ("\u212b", "\u00c5"),  # NFC canonical equivalent
        ("", ""),
        (" \t\r\n\u00a0\u2028 ", ""),
        ("\u200b\ufeff", ""),
    ],
)
def test_sanitize_caption(raw: str, clean: str) -> None:
    assert sanitize_caption(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        f"family {FAMILY} time",
        f"{ENGLAND} vs {FRANCE}",
        f"great {THUMB_MEDIUM} {HEART_EMOJI} {KEYCAP}",
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",  # Arabic
        "\u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \ud55c\uad6d\uc5b4",  # CJK
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0915\u094d\u200d\u0937",  # Devanagari with ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",  # Cyrillic
    ],
)
def test_sanitize_caption_keeps_emoji_and_scripts(text: str) -> None:
    assert sanitize_caption(text) == text
    assert sanitize_caption(f"\t{text}  \n") == text


def test_sanitize_captions_column_keeps_nulls_index_and_dtype() -> None:
    for dtype in (object, "str", "string"):
        values = pd.Series(["a\t b", None, f" {FAMILY} ", ""], index=[10, 11, 12, 13], dtype=dtype)
        out = sanitize_captions(values)
        assert list(out.index) == [10, 11, 12, 13]
        assert out.dtype == values.dtype
        assert out.isna().tolist() == [False, True, False, False]
        assert out[10] == "a b" and out[12] == FAMILY and out[13] == ""


def test_sanitize_captions_matches_single() -> None:
    raw = ["x\x00y", "  a  b ", "cafe\u0301", f"{ENGLAND}\u200b!", "\u3000"]
    assert sanitize_captions(pd.Series(raw)).tolist() == [sanitize_caption(r) for r in raw]


def test_sanitize_captions_empty() -> None:
    assert sanitize_captions(pd.Series([], dtype=object)).tolist() == []
