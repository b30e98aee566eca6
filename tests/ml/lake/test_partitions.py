"""Lake writer details that the ETL relies on."""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.lake.partitions import Lake

SCHEMA = pa.schema([("id", pa.int64()), ("caption", pa.large_string()), ("hearts", pa.int64())])


def encodings(lake: Lake, ds: str) -> dict[str, set[str]]:
    manifest = lake.read_manifest("t", ds)
    path = posixpath.join(lake.partition_path("t", ds), manifest["files"][0])
    rg = pq.ParquetFile(path).metadata.row_group(0)
    return {rg.column(i).path_in_schema: set(rg.column(i).encodings) for i in range(3)}


def test_distinct_columns_are_written_plain_the_rest_dictionary_encoded(tmp_path):
    lake = Lake(str(tmp_path))
    table = pa.table(
        {"id": range(1000), "caption": [f"c{i}" for i in range(1000)], "hearts": [1, 2] * 500},
        schema=SCHEMA,
    )
    with lake.writer("t", "2026-11-20", SCHEMA, distinct_columns=("id", "caption")) as w:
        w.write(table)
    enc = encodings(lake, "2026-11-20")
    assert not any("DICTIONARY" in e for e in enc["id"] | enc["caption"]), enc
    assert any("DICTIONARY" in e for e in enc["hearts"]), enc
    assert lake.read_partition("t", "2026-11-20").equals(table)

    with lake.writer("t", "2026-11-21", SCHEMA) as w:  # default: dictionary everywhere
        w.write(table)
    assert all(any("DICTIONARY" in e for e in v) for v in encodings(lake, "2026-11-21").values())


def test_unknown_distinct_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="captions"):
        with Lake(str(tmp_path)).writer("t", "2026-11-20", SCHEMA, distinct_columns=("captions",)):
            pass
