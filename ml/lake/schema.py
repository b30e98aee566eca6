"""The lake's contracts: every dataset name, its Arrow schema and the feature dimensions.

Stages meet only through these names and schemas, so they live in one module at the bottom of the
layers: the extract writes `posts_raw`, the ETL `posts_clean` and `quarantine`, the embed step
`features` (via `features_shards` when it runs sharded), the report `reports`, the source
check `source_check`.

The Arrow schemas are built on first access (PEP 562 `__getattr__`): Airflow's DAG files and
plugins import the dataset names at parse time, which must not pay for importing pyarrow.
"""

from __future__ import annotations

from typing import Any

# -- dataset names ------------------------------------------------------------------------------

DATASET_RAW = "posts_raw"
DATASET_CLEAN = "posts_clean"
DATASET_QUARANTINE = "quarantine"
DATASET_FEATURES = "features"
DATASET_FEATURES_SHARDS = "features_shards"
DATASET_REPORTS = "reports"
DATASET_SOURCE_CHECK = "source_check"  # `ml.ingest.source_check`: counts that moved silently

# -- the source rows ----------------------------------------------------------------------------

POSTS_COLUMNS = (
    "id",
    "author_id",
    "caption",
    "image_uri",
    "hearts",
    "comment_count",
    "created_at",
    "updated_at",
)

# Columns whose values are (nearly) all distinct: Parquet dictionary encoding would be tried and
# abandoned on every page. Writing them plain makes the extract's Parquet write 30% cheaper and
# the file half the size (bench/bench_extract.py data).
DISTINCT_COLUMNS = ("id", "caption", "image_uri", "created_at", "updated_at")

# -- features -----------------------------------------------------------------------------------

IMG_DIM = 2048  # ResNet50 without its fc, after global average pooling
TXT_DIM = 384  # all-MiniLM-L6-v2
N_FEATURES = IMG_DIM + TXT_DIM  # a model's input: img ++ txt


def shard_dataset(index: int, count: int) -> str:
    """Dataset of shard `index` of `count` of a sharded embed run."""
    return f"{DATASET_FEATURES_SHARDS}/shard={index}-of-{count}"


def _build_schemas() -> dict[str, Any]:
    import pyarrow as pa

    # posts_raw: the `posts` columns as extracted (timestamps naive UTC).
    RAW_SCHEMA = pa.schema(
        [
            ("id", pa.int64()),
            ("author_id", pa.int64()),
            ("caption", pa.large_string()),
            ("image_uri", pa.large_string()),
            ("hearts", pa.int64()),
            ("comment_count", pa.int64()),
            ("created_at", pa.timestamp("us")),
            ("updated_at", pa.timestamp("us")),
        ]
    )

    # posts_clean: the source columns (caption sanitised) plus what the image check learned.
    CLEAN_SCHEMA = pa.schema(
        [
            *RAW_SCHEMA,
            ("image_format", pa.string()),
            ("image_width", pa.int32()),
            ("image_height", pa.int32()),
            # EXIF orientation tag (1-8, 1 = upright); applied by the feature step, recorded here.
            ("exif_orientation", pa.int8()),
        ]
    )

    # quarantine: the original row as extracted, the reason code and a human message.
    QUARANTINE_SCHEMA = pa.schema([*RAW_SCHEMA, ("reason", pa.string()), ("message", pa.string())])

    # features (and features_shards): one row per embedded post, keyed for the cache.
    FEATURES_SCHEMA = pa.schema(
        [
            ("post_id", pa.int64()),
            ("content_hash", pa.string()),
            ("img", pa.list_(pa.float16(), IMG_DIM)),
            ("txt", pa.list_(pa.float16(), TXT_DIM)),
            ("image_model", pa.string()),
            ("text_model", pa.string()),
            # dHash of the photo (`ml.features.store.photo_hashes`): the split key of reposts; null
            # in rows written before it existed (their partitions lack the column: still readable)
            ("photo_hash", pa.string()),
        ]
    )
    # source_check: posts whose comment_count moved at the source without updated_at moving
    SOURCE_CHECK_SCHEMA = pa.schema(
        [
            ("id", pa.int64()),
            ("ds", pa.string()),  # the posts_clean partition of the lake's snapshot
            ("lake_comment_count", pa.int64()),
            ("source_comment_count", pa.int64()),
            ("updated_at", pa.timestamp("us")),
        ]
    )
    return {
        "SOURCE_CHECK_SCHEMA": SOURCE_CHECK_SCHEMA,
        "RAW_SCHEMA": RAW_SCHEMA,
        "CLEAN_SCHEMA": CLEAN_SCHEMA,
        "QUARANTINE_SCHEMA": QUARANTINE_SCHEMA,
        "FEATURES_SCHEMA": FEATURES_SCHEMA,
    }


_SCHEMA_NAMES = (
    "RAW_SCHEMA",
    "CLEAN_SCHEMA",
    "QUARANTINE_SCHEMA",
    "FEATURES_SCHEMA",
    "SOURCE_CHECK_SCHEMA",
)


def __getattr__(name: str) -> Any:
    if name in _SCHEMA_NAMES:
        globals().update(_build_schemas())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
