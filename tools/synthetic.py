"""One recipe for synthetic features with a learnable class, and the writers that put them (and
the posts they belong to) into a lake. Used by the tests and the training bench; ships in no
image.

The recipe (`class_features`): a class `y` per row (drawn from `priors`, or given), class means
in a random `LATENT`-d subspace of the N_FEATURES dimensions (orthonormal basis, means scaled by
`sep`), unit latent noise around them, all scaled by 6, plus isotropic noise of sd 0.5 in every
dimension. PCA has a subspace to find and the classes overlap as much as `sep` says.

RNG order, from `default_rng(seed)`: y (when not given), the basis, the means (both from
`default_rng(space_seed)` instead when given), then per chunk the isotropic noise and the latent
noise. A caller's numbers stay the same as long as its seed, knobs and row count do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ml.lake.schema import (
    CLEAN_SCHEMA,
    DATASET_CLEAN,
    DATASET_FEATURES,
    FEATURES_SCHEMA,
    N_FEATURES,
)

PRIORS = (0.30, 0.20, 0.15, 0.10, 0.10, 0.07, 0.05, 0.03)  # the demo's class prior
LATENT = 16
SCALE = 6.0  # of the latent part, against isotropic noise of sd NOISE
NOISE = 0.5
CHUNK = 10_000  # rows made at once: their float64 temporaries stay under ~1 GB

IMAGE_MODEL = "resnet50:random-seed0"
TEXT_MODEL = "all-MiniLM-L6-v2"


class SyntheticSet(NamedTuple):
    X: np.ndarray  # (n, N_FEATURES) of `dtype`
    y: np.ndarray  # class of each row
    bayes_accuracy: float  # of the Bayes classifier on these rows (before the cast to dtype)


def synthetic_set(
    n: int,
    seed: int = 0,
    *,
    sep: float = 1.2,
    priors: Sequence[float] | np.ndarray = PRIORS,
    y: np.ndarray | None = None,
    space_seed: int | None = None,
    dtype: Any = np.float32,
    chunk: int = CHUNK,
) -> SyntheticSet:
    """`n` rows of the recipe (module docstring), made `chunk` rows at a time into one array of
    `dtype`, so memory stays at X plus one chunk's temporaries (1M rows: X and under ~1 GB).

    `y`: the classes of the rows (n of them) instead of drawing them from `priors`;
    `space_seed`: draw basis and means from their own generator, so that several calls with
    different `seed`s share one class geometry. The Bayes accuracy is exact: the rows' projection
    on the subspace, divided by SCALE, is the class mean plus Gaussian noise of variance
    1 + (NOISE / SCALE)^2, and the rest of a row carries no class information."""
    priors = np.asarray(priors, dtype=float)
    k = len(priors)
    rng = np.random.default_rng(seed)
    if y is None:
        y = rng.choice(k, n, p=priors)
    elif len(y) != n:
        raise ValueError(f"{len(y)} classes given for {n} rows")
    space = rng if space_seed is None else np.random.default_rng(space_seed)
    basis = np.linalg.qr(space.normal(size=(N_FEATURES, LATENT)))[0].T  # (LATENT, N_FEATURES)
    means = space.normal(size=(k, LATENT)) * sep
    var = 1 + (NOISE / SCALE) ** 2
    log_prior = np.log(np.maximum(priors, 1e-300))
    X = np.empty((n, N_FEATURES), dtype)
    hits = 0
    for i in range(0, n, max(1, chunk)):
        j = min(n, i + chunk)
        Xc = (
            rng.normal(size=(j - i, N_FEATURES)) * NOISE
            + (means[y[i:j]] + rng.normal(size=(j - i, LATENT))) @ basis * SCALE
        )
        z = Xc @ basis.T / SCALE
        ll = log_prior - ((z[:, None, :] - means[None]) ** 2).sum(-1) / (2 * var)
        hits += int((ll.argmax(1) == y[i:j]).sum())
        X[i:j] = Xc
    return SyntheticSet(X, y, hits / max(n, 1))


def class_features(n: int, seed: int = 0, **knobs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of `synthetic_set(n, seed, **knobs)`."""
    s = synthetic_set(n, seed, **knobs)
    return s.X, s.y


# -- into a lake --------------------------------------------------------------------------------


def write_features(
    lake: Any,
    ds: str,
    ids: Sequence[int] | np.ndarray,
    X: np.ndarray,
    *,
    image_model: str = IMAGE_MODEL,
    text_model: str = TEXT_MODEL,
    hashes: Sequence[str] | None = None,
    photo_hashes: Sequence[str | None] | None = None,
) -> None:
    """The `features` partition `ds`: one row per post of `ids`, img ++ txt = the row of `X`
    (stored as float16). Content hashes default to `h<post id>`; photo hashes to null (each post
    then is a split group of its own, keyed by its id)."""
    from ml.features.store import features_table
    from ml.lake.schema import IMG_DIM

    X = np.asarray(X).reshape(len(ids), N_FEATURES)
    table = features_table(
        ids,
        [f"h{i}" for i in ids] if hashes is None else hashes,
        X[:, :IMG_DIM],
        X[:, IMG_DIM:],
        image_model,
        text_model,
        photo_hashes,
    )
    with lake.writer(DATASET_FEATURES, ds, FEATURES_SCHEMA) as w:
        w.write(table)


def write_posts_clean(lake: Any, ds: str, columns: Mapping[str, Sequence[Any]]) -> None:
    """The `posts_clean` partition `ds` of these columns; CLEAN_SCHEMA columns not given are
    null."""
    import pyarrow as pa

    n = len(next(iter(columns.values())))
    cols = {f.name: columns.get(f.name, [None] * n) for f in CLEAN_SCHEMA}
    with lake.writer(DATASET_CLEAN, ds, CLEAN_SCHEMA) as w:
        w.write(pa.table(cols, schema=CLEAN_SCHEMA))
