"""Independent oracles for the hashes the splits, shards and feature cache rest on: published
splitmix64 outputs, buckets and splits worked out by hand (plain integer arithmetic, below) for
fixed ids, and sha256 digests computed by coreutils' `sha256sum` (printf 'x\\0y' | sha256sum)."""

from __future__ import annotations

import numpy as np

from ml.features.embed import content_hash
from ml.hashing import hash_buckets, mix64
from ml.learn.splits import assign_splits

# SplitMix64 seeded with 0 (Vigna's splitmix64.c): its first three outputs. mix64(x) is the
# finaliser of the state x + golden gamma, so outputs n = mix64(n * 0x9E3779B97F4A7C15).
GAMMA = 0x9E3779B97F4A7C15
SPLITMIX64_SEED0 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_mix64_gives_the_published_splitmix64_outputs():
    states = [0, GAMMA, (2 * GAMMA) % (1 << 64)]
    assert [int(v) for v in mix64(np.array(states, dtype=np.uint64))] == SPLITMIX64_SEED0


# bucket = splitmix64(id XOR 0x5F3759DF) mod 100000 (the split's salt and bucket count), worked
# out with Python integers for these ids; test is [0, 20000), val [50000, 70000), train the rest
BUCKETS = {1: 59380, 2: 89601, 3: 7564, 4: 97084, 5: 67545, 6: 98581, 7: 1149, 10: 15915}
SPLITS = {
    1: "val", 2: "train", 3: "test", 4: "train", 5: "val", 6: "train", 7: "test", 10: "test",
}  # fmt: skip


def test_split_buckets_and_splits_of_fixed_ids():
    ids = np.array(sorted(BUCKETS), dtype=np.int64)
    assert hash_buckets(ids, 0x5F3759DF, 100_000).tolist() == [BUCKETS[i] for i in ids]
    assert assign_splits(ids).tolist() == [SPLITS[i] for i in ids]


def test_content_hash_is_sha256_of_bytes_nul_caption():
    # digests from `printf ... | sha256sum`
    assert content_hash(b"x", "y") == (
        "ce3890a816f5237a17aa7e1436113bbac398dfe216cf965537cd035bdbad900a"
    )
    assert content_hash(b"", None) == (  # no caption hashes as an empty one: b"\0"
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert content_hash("café".encode(), "héllo wörld") == (  # the caption as UTF-8
        "64b37c21439fd1f71e1778afa8648bf6f4789bc910af9964ffdb769b607d8694"
    )
