"""Caption sanitising: the text the ETL keeps and the text model embeds.

Captions are typed on phones, pasted from other apps and edited by bots, so they carry tabs,
line and paragraph separators, NBSPs, zero-width and bidi controls, BOMs and decomposed accents.
We keep what a reader sees (letters of every script, emoji with their ZWJ sequences, skin tones,
flags and keycaps) and drop what only confuses tokenizers, dedup and length checks.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Format characters that are part of what a reader sees, so they stay:
# ZWJ (emoji sequences, Indic conjuncts), ZWNJ (Persian, Indic), and TAG characters
# (subdivision flags such as England). Variation selectors (U+FE0E/F, U+E0100..) are category
# Mn, not Cf, so they are never removed.
_KEEP = frozenset([0x200C, 0x200D, *range(0xE0020, 0xE0080)])


def _ranges(codepoints: list[int]) -> str:
    """A regex character-class body for sorted code points, as ranges."""
    out: list[str] = []
    start = prev = codepoints[0]
    for cp in codepoints[1:] + [-1]:
        if cp == prev + 1:
            prev = cp
            continue
        out.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
        start = prev = cp
    return "".join(out)


@functools.cache
def _controls() -> re.Pattern[str]:
    """Runs of characters to delete, built once from this Python's Unicode tables.

    Whitespace controls (tab, CR, LF, VT, FF, NEL, U+2028/9, NBSP...) are not in it: `str.split()`
    turns every `str.isspace()` run into one separator. Built lazily: scanning the code space
    takes ~0.1 s, which an import should not pay.
    """
    drop = [
        cp
        for cp in range(0x110000)
        if cp not in _KEEP
        and not chr(cp).isspace()
        and unicodedata.category(chr(cp)) in ("Cc", "Cf", "Cs")
    ]  # NUL, ESC, DEL, C1, ZWSP, LRM/RLM, bidi overrides, word joiner, BOM, lone surrogates
    return re.compile(f"[{_ranges(drop)}]+")


def sanitize_caption(text: str) -> str:
    """One caption: controls dropped, NFC, every whitespace run to one space, trimmed."""
    s = text
    if not s.isprintable():  # C-speed pre-check: true for most captions, skips the regex
        s = _controls().sub("", s)
    if not s.isascii():
        s = unicodedata.normalize("NFC", s)
    return " ".join(s.split())


def sanitize_captions(values: pd.Series) -> pd.Series:
    """`sanitize_caption` over a column; NULL stays NULL (the validator reports NULL captions).

    A plain loop with the compiled patterns bound locally: pandas' `.str` methods run the same
    per-element Python underneath, in several passes instead of one.
    """
    import pandas as pd

    dsub, normalize = _controls().sub, unicodedata.normalize
    missing = values.isna().to_numpy()
    out: list[Any] = []
    append = out.append
    for v, na in zip(values.to_numpy(dtype=object), missing, strict=True):
        if na:
            append(None)
            continue
        s = v if isinstance(v, str) else str(v)
        if not s.isprintable():
            s = dsub("", s)
        if not s.isascii():
            s = normalize("NFC", s)
        append(" ".join(s.split()))
    dtype = values.dtype if isinstance(values.dtype, pd.StringDtype) else object
    return pd.Series(out, index=values.index, name=values.name, dtype=dtype)
