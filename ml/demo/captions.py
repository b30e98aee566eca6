"""The demo's captions: filler words plus words of the post's topic (which carries the class
signal), and the dirty or unusual captions planted for the sanitiser to clean or quarantine."""

from __future__ import annotations

import random

TOPIC_WORDS: tuple[tuple[str, ...], ...] = (
    ("laundry", "receipt", "spreadsheet", "commute", "parking", "errand", "stapler", "inbox"),
    ("coffee", "desk", "rain", "notebook", "window", "bus", "tea", "pencil"),
    ("garden", "bicycle", "bakery", "park", "sandwich", "bookshop", "puppy", "picnic"),
    ("hiking", "lake", "sunset", "roadtrip", "campfire", "forest", "kayak", "trail"),
    ("concert", "festival", "wedding", "birthday", "fireworks", "dance", "stadium", "parade"),
    ("recipe", "tutorial", "makeover", "diy", "review", "hack", "guide", "tips"),
    ("debate", "opinion", "unpopular", "question", "poll", "hottake", "controversial", "vote"),
    ("giveaway", "contest", "announcement", "celebrity", "viral", "breaking", "exclusive", "prize"),
)
FILLER_WORDS = (
    "today", "just", "my", "the", "a", "with", "friends", "love", "this", "so", "look", "at",
    "new", "weekend", "finally", "again", "photo", "vibes", "life", "moment", "our", "first",
)  # fmt: skip
_EMOJI = ("🌅", "🔥", "❤️", "😂", "👍🏽", "🇯🇵", "✨", "🙌")
_NON_LATIN = ("夕焼け", "пляж", "غروب", "सूर्यास्त", "해변", "Ηλιοβασίλεμα", "קפה", "ขอบคุณ")
_CONTROL = ("\x07", "\x1b", "\x00", "\x1f", "\x7f", "\x0b")
_BLANK_CAPTIONS = ("   ", "\t\t", " \r\n\t ", "\x00\x07 \x1b", " \x1f\x7f\x0c ")


def caption(rng: random.Random, topic: int, kind: str | None) -> str | None:
    """Filler words plus 1-3 words of the post's topic; dirty or unusual per `kind`."""
    if kind == "caption_null":
        return None
    if kind == "caption_empty":
        return ""
    if kind == "caption_blank":
        return rng.choice(_BLANK_CAPTIONS)
    topical = rng.sample(TOPIC_WORDS[topic], rng.randint(1, 3))
    words = rng.sample(FILLER_WORDS, rng.randint(1, 4)) + topical
    rng.shuffle(words)
    if rng.random() < 0.5:
        words.append("#" + rng.choice(topical))
    words[0] = words[0].capitalize()
    if kind == "caption_tabs":
        return "".join(w + rng.choice(("\t", " ", "\t\t")) for w in words).rstrip(" ")
    if kind == "caption_space_runs":
        return "  " + "".join(w + " " * rng.randint(1, 5) for w in words)
    if kind == "caption_control_chars":
        out = []
        forced = rng.choice([i for i, w in enumerate(words) if len(w) > 2])  # at least one
        for i, w in enumerate(words):
            if len(w) > 2 and (i == forced or rng.random() < 0.5):
                cut = rng.randint(1, len(w) - 1)
                w = w[:cut] + rng.choice(_CONTROL) + w[cut:]
            out.append(w)
        return " ".join(out) + rng.choice(_CONTROL)
    if kind == "caption_emoji":
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(_EMOJI))
        return " ".join(words) + rng.choice(_EMOJI)
    if kind == "caption_non_latin":
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(_NON_LATIN))
        return " ".join(words)
    return " ".join(words)
