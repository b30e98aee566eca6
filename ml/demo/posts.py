"""`python -m ml demo-data`: realistic demo posts in MySQL and their photos in the image store.

Why it exists: the pipeline needs data that looks like the app's (skewed counts, odd images,
dirty captions, rows that must be quarantined) and carries a learnable engagement signal whose
ceiling is known, so that a trained model and the quarantine can both be checked end to end.

Generative model (all of it is in this file, so the Bayes-optimal accuracy is computable;
`ml.demo.photos` renders the photos it describes):
each post has a latent class c in 0..7 with an imbalanced prior; c is the bin of its
comment_count (`DEFAULT_BIN_EDGES`). Three observable, independent-given-c cues carry it:
the photo's dominant colour (= c with probability `P_COLOUR`, else uniform), the photo's
pattern (= c // 2 with probability `P_PATTERN`, else uniform) and the caption's topic words
(topic = c with probability `P_TOPIC`, else uniform). hearts is lognormal around a class mean,
with a class-dependent chance of 0 (about 10% overall); only hearts >= 1 posts get a label.
Time, so that label maturity is exercised: most posts with comments (`P_GROWS`) have a partial
count on their creation day and the final one (c's) the next day, so a count is final once the
post is `DEMO_LABEL_HORIZON_DAYS` old (the final count lands the day after posting: within 2
days); `generate(as_of=D)` and `advance` give the table of each day.
Reposts (`FRACTION_REPOSTS`) copy an earlier post's photo file, cues and counts: leakage bait.

Output is deterministic for a seed: same rows, same image bytes (each image has its own RNG
seeded by (seed, index), so the worker count does not matter).

This module draws the rows and is the `demo-data` step; `ml.demo.mysql` writes the rows,
`ml.demo.photos` renders and writes the photos.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from ml.demo.captions import caption
from ml.demo.photos import (
    DAMAGED_IMAGE_KINDS,
    EXTENSIONS,
    N_PATTERNS,
    UNUSUAL_IMAGE_KINDS,
)
from ml.ingest.reasons import Reason

log = logging.getLogger(__name__)

# comment_count bins [0,1), [1,3), ..., [300,600), [600, inf): the label's 8 classes.
DEFAULT_BIN_EDGES: tuple[int, ...] = (0, 1, 3, 10, 30, 100, 300, 600)
N_CLASSES = len(DEFAULT_BIN_EDGES)
# Many quiet posts, few viral ones.
CLASS_PRIOR: tuple[float, ...] = (0.30, 0.22, 0.17, 0.12, 0.09, 0.05, 0.03, 0.02)
# How often each cue tells the truth (otherwise it is uniform noise): Bayes accuracy ~0.7.
P_COLOUR = 0.55
P_PATTERN = 0.40
P_TOPIC = 0.50
# P(hearts == 0 | c): quiet posts get no hearts more often; ~10% overall under CLASS_PRIOR.
P_HEARTS_ZERO: tuple[float, ...] = (0.16, 0.11, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02)
HEARTS_LOG_MEAN = tuple(1.0 + 0.75 * c for c in range(N_CLASSES))
HEARTS_LOG_SD = 1.1
FRACTION_UPDATED_LATER = 0.10  # created on an earlier day, updated (comments grew) in the window
# Of the other posts with comments, those whose comments keep coming the next day: their creation
# day's snapshot holds a partial count, the next day's the final one (the label).
P_GROWS = 0.7
GROWN_BY_THEN = (0.2, 0.7)  # the partial count as a fraction of the final one, uniform
DEMO_LABEL_HORIZON_DAYS = 2  # counts are final within 2 days of posting: what `make demo` sets
FRACTION_REPOSTS = 0.02  # the same photo file posted again under a new id; half keep the caption
FRACTION_ABSOLUTE_URI = 0.07  # file:///... (local store) or s3://bucket/key (S3 store)
FIRST_AUTHOR_ID = 1_000

# Rows the pipeline must quarantine. Names are stable: downstream tests key on them.
BAD_KINDS: tuple[str, ...] = (
    "image_corrupt",  # garbage (a stray SOI marker + random bytes) inside the entropy data
    "image_truncated",  # JPEG cut in half
    "image_empty",  # zero-byte file
    "image_missing",  # URI points to nothing
    "image_not_an_image",  # an HTML error page saved as .jpg
    "image_uri_unsupported",  # http://... (not s3://, file://, or relative)
    "hearts_negative",
    "comment_count_negative",
    "created_at_future",  # created_at in 2099 while updated_at is in the window
)
# The quarantine reason(s) a row of each bad kind may carry; the first is the intended one.
EXPECTED_REASONS: dict[str, tuple[str, ...]] = {
    "image_corrupt": (Reason.IMAGE_CORRUPT, Reason.IMAGE_UNREADABLE),
    "image_truncated": (Reason.IMAGE_CORRUPT, Reason.IMAGE_UNREADABLE),
    "image_empty": (Reason.IMAGE_EMPTY,),
    "image_missing": (Reason.IMAGE_MISSING,),
    "image_not_an_image": (Reason.IMAGE_NOT_AN_IMAGE, Reason.IMAGE_UNREADABLE),
    "image_uri_unsupported": (Reason.IMAGE_URI_INVALID,),
    "hearts_negative": (Reason.COUNT_NEGATIVE,),
    "comment_count_negative": (Reason.COUNT_NEGATIVE,),
    "created_at_future": (Reason.TIMESTAMP_IN_FUTURE,),
}
EXPECTED_REASONS = {k: tuple(str(r) for r in v) for k, v in EXPECTED_REASONS.items()}
# Valid but unusual rows: they must reach posts_clean (captions cleaned, images accepted).
UNUSUAL_CAPTION_KINDS: tuple[str, ...] = (
    "caption_tabs",
    "caption_space_runs",
    "caption_control_chars",  # control characters inside real words
    "caption_emoji",
    "caption_non_latin",
    # no caption at all (~1% of real posts): kept with "" (POSTFLOW_REQUIRE_CAPTION=false)
    "caption_null",
    "caption_empty",
    "caption_blank",  # only whitespace and control characters
)
UNUSUAL_KINDS: tuple[str, ...] = UNUSUAL_IMAGE_KINDS + UNUSUAL_CAPTION_KINDS

# -- the generative model --------------------------------------------------------------------


def _likelihoods() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """P(colour|c) [8,8], P(pattern|c) [8,4], P(topic|c) [8,8], P(hearts>=1|c) [8]."""
    c = np.arange(N_CLASSES)
    p_col = P_COLOUR * np.eye(N_CLASSES) + (1 - P_COLOUR) / N_CLASSES
    p_pat = P_PATTERN * (np.arange(N_PATTERNS)[None, :] == (c // 2)[:, None])
    p_pat = p_pat + (1 - P_PATTERN) / N_PATTERNS
    p_top = P_TOPIC * np.eye(N_CLASSES) + (1 - P_TOPIC) / N_CLASSES
    p_h1 = 1 - np.asarray(P_HEARTS_ZERO)
    return p_col, p_pat, p_top, p_h1


def population_bayes_accuracy() -> float:
    """Exact Bayes-optimal accuracy on labelled posts (hearts >= 1) under the model."""
    p_col, p_pat, p_top, p_h1 = _likelihoods()
    prior = np.asarray(CLASS_PRIOR) * p_h1
    joint = (
        prior[:, None, None, None]
        * p_col[:, :, None, None]
        * p_pat[:, None, :, None]
        * p_top[:, None, None, :]
    )
    return float(joint.max(axis=0).sum() / prior.sum())


def sample_bayes_accuracy(
    colour: np.ndarray, pattern: np.ndarray, topic: np.ndarray, colour_seen: np.ndarray
) -> float:
    """Mean over the given (labelled) posts of max_c p(c | colour, pattern, topic, hearts>=1).

    This is the expected accuracy of the Bayes classifier on these very posts; a model can only
    approach it if its features recover the colour, pattern and topic. Greyscale photos hide the
    colour (`colour_seen` False), so their posterior leaves it out.
    """
    if len(colour) == 0:
        return float("nan")
    p_col, p_pat, p_top, p_h1 = _likelihoods()
    post = np.asarray(CLASS_PRIOR)[None, :] * p_h1[None, :]
    post = post * np.where(colour_seen[:, None], p_col[:, colour].T, 1.0)
    post = post * p_pat[:, pattern].T * p_top[:, topic].T
    return float((post.max(axis=1) / post.sum(axis=1)).mean())


def _comments_in_bin(rng: np.random.Generator, cls: np.ndarray) -> np.ndarray:
    """Heavy-tailed (truncated Pareto) counts inside each class's bin; the last bin is open."""
    edges = np.asarray(DEFAULT_BIN_EDGES + (math.inf,), dtype=np.float64)
    lo, hi = edges[cls], edges[cls + 1]
    u = rng.random(len(cls))
    lo_pos = np.maximum(lo, 1.0)
    alpha = np.where(np.isinf(hi), 1.6, 1.1)
    tail = np.where(np.isinf(hi), 0.0, (lo_pos / np.where(np.isinf(hi), 1.0, hi)) ** alpha)
    x = lo_pos * (1.0 - u * (1.0 - tail)) ** (-1.0 / alpha)
    x = np.floor(np.minimum(x, np.where(np.isinf(hi), 5_000_000.0, hi - 1)))
    return np.where(cls == 0, 0, x).astype(np.int64)


def _hearts(rng: np.random.Generator, cls: np.ndarray) -> np.ndarray:
    mean = np.asarray(HEARTS_LOG_MEAN)[cls]
    h = np.maximum(1, np.rint(np.exp(rng.normal(mean, HEARTS_LOG_SD))))
    zero = rng.random(len(cls)) < np.asarray(P_HEARTS_ZERO)[cls]
    return np.where(zero, 0, np.minimum(h, 50_000_000)).astype(np.int64)


# -- posts (rows) ------------------------------------------------------------------------------


@dataclass
class Posts:
    """The generated rows plus the hidden variables, index-aligned, sorted by creation."""

    ids: np.ndarray
    cls: np.ndarray
    colour: np.ndarray
    pattern: np.ndarray
    topic: np.ndarray
    author: np.ndarray
    hearts: np.ndarray
    comments: np.ndarray
    created_us: np.ndarray  # microseconds since the epoch, UTC
    updated_us: np.ndarray
    later: np.ndarray  # created on an earlier day than updated
    grows: np.ndarray  # a partial-count snapshot (first_us, first_comments) precedes the final one
    first_us: np.ndarray
    first_comments: np.ndarray
    render: np.ndarray  # whose photo each post shows: its own index, or its original's (reposts)
    reposts: dict[int, int]  # repost id -> original id
    start_us: int  # the window's first day
    captions: list[str | None]
    uris: list[str]
    keys: list[str | None]  # key under the image root to write, None for nothing
    image_mode: list[str]  # "jpeg", an unusual image kind, a bad image kind, or "none"
    width: np.ndarray
    height: np.ndarray
    bad: dict[int, str]
    unusual: dict[int, str]


_EPOCH = datetime(1970, 1, 1)
DAY_US = 86_400_000_000


def to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def to_us(d: datetime) -> int:
    return (d - _EPOCH) // timedelta(microseconds=1)


def build_posts(
    n: int,
    days: int,
    end: date,
    seed: int,
    first_id: int,
    bad_fraction: float,
    image_size: int,
    uri_prefix: str,
) -> Posts:
    """Draw every row (no I/O). `uri_prefix` is the absolute form of the image root
    (`file:///abs/` or `s3://bucket/prefix/`) used for a few absolute image_uri values."""
    rng = np.random.default_rng(seed)
    cls = rng.choice(N_CLASSES, n, p=np.asarray(CLASS_PRIOR))
    colour = np.where(rng.random(n) < P_COLOUR, cls, rng.integers(0, N_CLASSES, n))
    pattern = np.where(rng.random(n) < P_PATTERN, cls // 2, rng.integers(0, N_PATTERNS, n))
    topic = np.where(rng.random(n) < P_TOPIC, cls, rng.integers(0, N_CLASSES, n))
    comments = _comments_in_bin(rng, cls)
    hearts = _hearts(rng, cls)
    n_authors = max(20, n // 15)
    author = FIRST_AUTHOR_ID + (rng.zipf(1.3, n) - 1) % n_authors

    # Timestamps: a diurnal day (quiet at night UTC), most posts updated the day they were made.
    start_us = to_us(datetime.combine(end, datetime.min.time())) - days * DAY_US
    hour_w = 1.0 + 0.8 * np.sin((np.arange(24) - 9) / 24 * 2 * np.pi)
    day = rng.integers(0, days, n)
    hour = rng.choice(24, n, p=hour_w / hour_w.sum())
    within = hour * 3_600_000_000 + rng.integers(0, 3_600_000_000, n)
    later = rng.random(n) < FRACTION_UPDATED_LATER
    day_start = start_us + day * DAY_US
    gap = np.minimum(rng.exponential(2 * 3_600_000_000, n).astype(np.int64), DAY_US)
    same_created = day_start + within
    room = day_start + DAY_US - 1 - same_created  # stay in the day without piling up at 23:59
    gap = np.where(gap < room, gap, (rng.random(n) * room).astype(np.int64))
    same_updated = same_created + gap
    back = rng.integers(1, 4, n)  # created 1-3 days before the update day
    later_created = day_start - back * DAY_US + rng.integers(0, DAY_US, n)
    later_updated = day_start + within
    created_us = np.where(later, later_created, same_created)
    updated_us = np.where(later, later_updated, same_updated)

    order = np.argsort(created_us, kind="stable")  # ids grow with creation, like AUTO_INCREMENT
    cls, colour, pattern, topic = cls[order], colour[order], pattern[order], topic[order]
    comments, hearts, author = comments[order], hearts[order], author[order]
    created_us, updated_us, later = created_us[order], updated_us[order], later[order]
    ids = first_id + np.arange(n, dtype=np.int64)

    shape = rng.random(n)
    size = max(8, int(image_size))
    # 70% square, 15% portrait 4:5, 15% landscape 4:3.
    portrait, landscape = (shape >= 0.70) & (shape < 0.85), shape >= 0.85
    width = np.where(portrait, max(8, round(size * 0.8)), size).astype(np.int64)
    height = np.where(landscape, max(8, round(size * 0.75)), size).astype(np.int64)

    # Which rows are bad / unusual: disjoint, spread over the whole id range.
    n_bad = round(bad_fraction * n) if bad_fraction > 0 else 0
    if bad_fraction > 0 and n >= 200:
        n_bad = max(n_bad, len(BAD_KINDS))
    n_bad = min(n_bad, n)
    perm = rng.permutation(n)
    bad_idx = perm[:n_bad]
    bad_kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)]
    rng.shuffle(bad_kinds)
    per_unusual = max(3, round(0.003 * n))
    rest = perm[n_bad:]
    unusual_kinds = [k for k in UNUSUAL_KINDS for _ in range(per_unusual)][: len(rest)]
    unusual_idx = rest[: len(unusual_kinds)]
    bad = {int(i): k for i, k in zip(bad_idx, bad_kinds, strict=True)}
    unusual = {int(i): k for i, k in zip(unusual_idx, unusual_kinds, strict=True)}

    text_rng = random.Random(seed * 1_000_003 + 17)
    absolute = rng.random(n) < FRACTION_ABSOLUTE_URI
    captions: list[str | None] = []
    uris: list[str] = []
    keys: list[str | None] = []
    modes: list[str] = []
    for i in range(n):
        pid = int(ids[i])
        kind = bad.get(i) or unusual.get(i)
        captions.append(caption(text_rng, int(topic[i]), kind))
        ext = EXTENSIONS.get(kind or "", "jpg")
        key = f"{to_datetime(created_us[i]):%Y/%m/%d}/{pid}.{ext}"
        uri = uri_prefix + key if absolute[i] else key
        mode = kind if kind in UNUSUAL_IMAGE_KINDS or kind in DAMAGED_IMAGE_KINDS else "jpeg"
        if kind == "image_missing":
            mode = "delete"  # make sure nothing is there (a previous run may have written it)
        elif kind == "image_uri_unsupported":
            uri, key, mode = f"http://cdn.example.com/photos/{key}", None, "none"
        uris.append(uri)
        keys.append(key)
        modes.append(mode)

    for i, kind in bad.items():
        if kind == "hearts_negative":
            hearts[i] = -int(rng.integers(1, 50))
        elif kind == "comment_count_negative":
            comments[i] = -int(rng.integers(1, 6))
        elif kind == "created_at_future":
            created = to_datetime(created_us[i])
            created_us[i] = to_us(created.replace(year=2099, day=min(created.day, 28)))

    # Reposts: a plain post j shows the photo (the same file) of an earlier plain post i, with
    # its engagement and cues; every other repost keeps i's caption too.
    plain = np.setdiff1d(np.arange(n), np.array([*bad, *unusual], dtype=np.int64))
    n_rep = round(FRACTION_REPOSTS * n) if n >= 100 else 0
    render, reposts = np.arange(n), {}
    for k, j in enumerate(np.sort(rng.choice(plain[1:], n_rep, replace=False))):
        i = int(rng.choice(plain[plain < j]))
        i = int(render[i])  # a repost of a repost shows the original
        render[j] = i
        for a in (cls, colour, pattern, topic, comments, hearts, width, height):
            a[j] = a[i]
        if k % 2 == 0:
            captions[j] = captions[i]
        reposts[int(ids[j])] = int(ids[i])

    # Comments that keep coming the next day: a second, final snapshot.
    day_of = (updated_us - start_us) // DAY_US
    grows = ~later & (comments > 0) & (rng.random(n) < P_GROWS)
    frac = rng.uniform(*GROWN_BY_THEN, n)
    next_us = start_us + (day_of + 1) * DAY_US + rng.integers(0, DAY_US, n)
    first_us, first_comments = updated_us.copy(), np.floor(comments * frac).astype(np.int64)
    updated_us = np.where(grows, next_us, updated_us)
    first_comments = np.where(grows, first_comments, comments)

    return Posts(
        ids=ids,
        cls=cls,
        colour=colour,
        pattern=pattern,
        topic=topic,
        author=author,
        hearts=hearts,
        comments=comments,
        created_us=created_us,
        updated_us=updated_us,
        later=later,
        grows=grows,
        first_us=np.where(grows, first_us, updated_us),
        first_comments=first_comments,
        render=render,
        reposts=reposts,
        start_us=int(start_us),
        captions=captions,
        uris=uris,
        keys=keys,
        image_mode=modes,
        width=width,
        height=height,
        bad={int(ids[i]): k for i, k in sorted(bad.items())},
        unusual={int(ids[i]): k for i, k in sorted(unusual.items())},
    )
