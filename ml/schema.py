"""Arrow schemas of the lake datasets: the contract between pipeline stages."""

from __future__ import annotations

import pyarrow as pa

from ml.source import RAW_SCHEMA

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

DATASET_CLEAN = "posts_clean"
DATASET_QUARANTINE = "quarantine"
DATASET_FEATURES = "features"
