"""ml.ingest.validate: the posts_raw suite, row reasons with precedence, batch checks, edge
cases."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from ml.config import Settings
from ml.ingest.expectations import (
    EXPECTATIONS_DIR_ENV,
    SuiteError,
    expectations_dir,
    load_suite,
    row_level_reasons,
)
from ml.ingest.reasons import PRECEDENCE, Reason
from ml.ingest.validate import ValidationOutcome, render_summary, validate_posts
from ml.lake.schema import POSTS_COLUMNS, RAW_SCHEMA

START = datetime(2024, 5, 1)
END = datetime(2024, 5, 2)
NOW = datetime(2024, 5, 2, 2, 0)
MAX_CHARS = 40
SETTINGS = Settings(caption_max_chars=MAX_CHARS, require_caption=True)
REPO = Path(__file__).resolve().parents[3]


def row(i: int, **changes: Any) -> dict[str, Any]:
    base = {
        "id": i,
        "author_id": 7,
        "caption": f"post {i}",
        "image_uri": f"s3://photos/{i}.jpg",
        "hearts": 3,
        "comment_count": 1,
        "created_at": START - timedelta(days=2),
        "updated_at": START + timedelta(hours=1),
    }
    base.update(changes)
    return base


DTYPES = ["numpy", "arrow", "nullable"]


def frame(rows: list[dict[str, Any]], index: list[Any] | None = None, dtypes: str = "numpy"):
    """Rows as the extract hands them over: through RAW_SCHEMA, then pandas.

    `numpy` is pyarrow's default (nullable ints become float64), `arrow` keeps Arrow dtypes,
    `nullable` uses pandas' masked Int64: the validator must give the same answers for all.
    """
    table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    if dtypes == "arrow":
        df = table.to_pandas(types_mapper=pd.ArrowDtype)
    elif dtypes == "nullable":
        df = table.to_pandas().convert_dtypes()
    else:
        df = table.to_pandas()
    if index is not None:
        df.index = pd.Index(index, name="label")
    return df


def validate(df: pd.DataFrame, settings: Settings = SETTINGS, **kw: Any) -> ValidationOutcome:
    return validate_posts(df, START, END, NOW, settings, **kw)


@pytest.fixture(scope="module", autouse=True)
def gx_context():
    """Build the process-wide GX context once (import + context take seconds), then reuse it."""
    validate(frame([row(1)]))


GOOD_ROWS = [
    row(1),
    row(2, updated_at=START),  # window start is inclusive
    row(3, updated_at=END - timedelta(microseconds=1)),
    row(4, caption="x" * MAX_CHARS, hearts=0, comment_count=0),
    row(5, image_uri="file:///srv/images/5.jpg"),
    row(6, image_uri="2024/05/01/6 final.jpg"),  # relative to POSTFLOW_IMAGE_ROOT
    row(7, created_at=START + timedelta(hours=1)),  # created == updated
    row(8, caption=""),  # empty is the sanitiser's call (caption_empty), not a raw-data error
    row(9, image_uri="a..b/c.jpg"),  # '..' inside a name is not a parent segment
]


@pytest.mark.parametrize("dtypes", DTYPES)
def test_good_sample_passes(dtypes: str) -> None:
    out = validate(frame(GOOD_ROWS, dtypes=dtypes))
    assert out.row_reasons.empty, out.row_reasons.to_dict("records")
    assert out.errors == [] and out.warnings == []
    assert out.ok and out.passed_mask.all()
    assert {c.name for c in out.batch} == {
        "columns",
        "row_count",
        "id_unique",
        "caption_null_fraction",
    }
    json.dumps(out.result_json)  # kept with the partition: must be plain JSON
    assert "all passed" in render_summary(out)


# label -> (row, expected reason); labels make a non-default (string, named) index.
BAD = {
    "id-null": (row(0, id=None), Reason.ID_NULL),
    "hearts-null": (row(11, hearts=None), Reason.COUNT_NULL),
    "comments-negative": (row(12, comment_count=-3), Reason.COUNT_NEGATIVE),
    "created-null": (row(13, created_at=None), Reason.TIMESTAMP_NULL),
    "updated-null": (row(14, updated_at=None), Reason.TIMESTAMP_NULL),
    "created-future": (row(15, created_at=NOW + timedelta(days=1)), Reason.TIMESTAMP_IN_FUTURE),
    "created-after-updated": (
        row(16, created_at=START + timedelta(hours=2), updated_at=START + timedelta(hours=1)),
        Reason.TIMESTAMPS_INCONSISTENT,
    ),
    "updated-at-end": (row(17, updated_at=END), Reason.TIMESTAMP_OUT_OF_WINDOW),
    "updated-before": (
        row(18, updated_at=START - timedelta(seconds=1)),
        Reason.TIMESTAMP_OUT_OF_WINDOW,
    ),
    "caption-null": (row(19, caption=None), Reason.CAPTION_NULL),
    "caption-long": (row(20, caption="x" * (MAX_CHARS + 1)), Reason.CAPTION_TOO_LONG),
    "caption-not-utf8": (row(28, caption="caf\ufffd"), Reason.CAPTION_NOT_UTF8),
    "uri-null": (row(21, image_uri=None), Reason.IMAGE_URI_INVALID),
    "uri-http": (row(22, image_uri="http://cdn/x.jpg"), Reason.IMAGE_URI_INVALID),
    "uri-absolute": (row(23, image_uri="/etc/passwd"), Reason.IMAGE_URI_INVALID),
    "uri-parent": (row(24, image_uri="imgs/../../etc/passwd"), Reason.IMAGE_URI_INVALID),
    "uri-bucketless": (row(25, image_uri="s3://photos"), Reason.IMAGE_URI_INVALID),
    # two problems each: the earlier reason in PRECEDENCE wins, the other is in the message
    "negative-and-bad-uri": (row(26, hearts=-1, image_uri="ftp://x"), Reason.COUNT_NEGATIVE),
    "caption-long-and-out": (
        row(27, caption="y" * 100, updated_at=START - timedelta(days=1)),
        Reason.TIMESTAMP_OUT_OF_WINDOW,
    ),
}


@pytest.mark.parametrize("dtypes", DTYPES)
def test_bad_sample_one_reason_per_row(dtypes: str) -> None:
    labels = ["good-a", *BAD, "good-b"]
    rows = [row(100), *(r for r, _ in BAD.values()), row(101)]
    df = frame(rows, index=labels, dtypes=dtypes)
    out = validate(df)

    got = out.row_reasons["reason"].to_dict()
    assert got == {label: reason.value for label, (_, reason) in BAD.items()}
    assert out.row_reasons.index.name == "label"
    assert out.errors == []
    msg = out.row_reasons["message"]
    assert msg["comments-negative"] == "comment_count is -3 (must be >= 0)"
    assert msg["caption-long"] == f"caption has {MAX_CHARS + 1} characters (must be <= {MAX_CHARS})"
    assert "image_uri_invalid" in msg["negative-and-bad-uri"]
    assert "caption_too_long" in msg["caption-long-and-out"]
    assert "2024-05-02 00:00:00" in msg["updated-at-end"]

    clean, quarantined = out.split(df)
    assert list(clean.index) == ["good-a", "good-b"]
    assert list(quarantined.index) == list(BAD)
    assert list(quarantined.columns) == [*POSTS_COLUMNS, "reason", "message"]
    summary = render_summary(out)
    assert "count_negative: 2" in summary and f"{len(BAD)} quarantined" in summary


def test_precedence_does_not_depend_on_suite_order() -> None:
    """Within the suite the window check comes after the null checks; precedence still rules."""
    ranks = [PRECEDENCE.index(r) for r in (Reason.ID_NULL, Reason.TIMESTAMP_IN_FUTURE)]
    assert ranks == sorted(ranks)
    df = frame([row(1, id=None, created_at=NOW + timedelta(days=9), caption=None)])
    out = validate(df)
    assert out.row_reasons["reason"].tolist() == ["id_null"]
    message = out.row_reasons["message"].iloc[0]
    assert message.startswith("id is null; also ")
    assert "timestamp_in_future" in message and "caption_null" in message


def test_duplicate_index_labels_map_by_position() -> None:
    df = frame([row(1), row(2, hearts=-5), row(3)], index=[7, 7, 7])
    out = validate(df)
    assert out.row_positions.tolist() == [1]
    assert out.passed_mask.tolist() == [True, False, True]


def test_window_boundaries() -> None:
    df = frame(
        [
            row(1, updated_at=START),
            row(2, updated_at=END),
            row(3, updated_at=END - timedelta(microseconds=1)),
        ]
    )
    out = validate(df)
    assert out.row_reasons["reason"].to_dict() == {1: "timestamp_out_of_window"}


def test_aware_window_is_converted_to_naive_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    df = frame([row(1, updated_at=START), row(2, updated_at=END)])
    out = validate_posts(
        df,
        (START + timedelta(hours=2)).replace(tzinfo=plus2),
        (END + timedelta(hours=2)).replace(tzinfo=plus2),
        NOW.replace(tzinfo=UTC),
        SETTINGS,
    )
    assert out.row_reasons["reason"].to_dict() == {1: "timestamp_out_of_window"}


def test_duplicate_ids_fail_the_batch() -> None:
    out = validate(frame([row(1), row(2), row(2, caption="again")]))
    assert [c.name for c in out.errors] == ["id_unique"]
    assert out.errors[0].observed["unexpected_count"] == 2
    assert out.row_reasons.empty  # a bug upstream, not bad rows: nothing is quarantined
    assert not out.ok


def test_many_null_captions_warn() -> None:
    out = validate(frame([row(i, caption=None if i < 2 else "ok") for i in range(10)]))
    assert [c.name for c in out.warnings] == ["caption_null_fraction"]
    assert out.errors == []
    assert (out.row_reasons["reason"] == "caption_null").sum() == 2


def test_a_null_caption_is_valid_unless_required() -> None:
    df = frame([row(1, caption=None), row(2)])
    assert validate(df, Settings(caption_max_chars=MAX_CHARS)).row_reasons.empty
    assert validate(df).row_reasons["reason"].tolist() == ["caption_null"]


def test_empty_frame() -> None:
    empty = RAW_SCHEMA.empty_table().to_pandas()
    out = validate(empty)
    assert out.row_reasons.empty and out.errors == [] and out.n_rows == 0
    strict = validate(empty, Settings(min_rows_error=1))
    assert [c.name for c in strict.errors] == ["row_count"]
    assert validate(empty, Settings(min_rows_error=1), min_rows=0).errors == []


def test_missing_column_is_a_batch_error_not_a_crash() -> None:
    out = validate(frame([row(1)]).drop(columns=["caption"]))
    names = [c.name for c in out.errors]
    assert names[0] == "columns" and "caption" in out.errors[0].message
    assert len(names) > 1  # the caption expectations could not run: they fail the run too


def test_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="empty window"):
        validate_posts(frame([row(1)]), END, START, NOW, SETTINGS)


# ------------------------------------------------------------------ the suite file

EXPECTED_ROW_LEVEL = [
    ("expect_column_values_to_not_be_null", "id", Reason.ID_NULL),
    ("expect_column_values_to_not_be_null", "hearts", Reason.COUNT_NULL),
    ("expect_column_values_to_not_be_null", "comment_count", Reason.COUNT_NULL),
    ("expect_column_values_to_be_between", "hearts", Reason.COUNT_NEGATIVE),
    ("expect_column_values_to_be_between", "comment_count", Reason.COUNT_NEGATIVE),
    ("expect_column_values_to_not_be_null", "created_at", Reason.TIMESTAMP_NULL),
    ("expect_column_values_to_not_be_null", "updated_at", Reason.TIMESTAMP_NULL),
    ("expect_column_values_to_be_between", "created_at", Reason.TIMESTAMP_IN_FUTURE),
    ("expect_column_values_to_be_between", "updated_at", Reason.TIMESTAMP_IN_FUTURE),
    ("expect_column_pair_values_a_to_be_greater_than_b", None, Reason.TIMESTAMPS_INCONSISTENT),
    ("expect_column_values_to_be_between", "updated_at", Reason.TIMESTAMP_OUT_OF_WINDOW),
    ("expect_column_values_to_not_be_null", "caption", Reason.CAPTION_NULL),
    ("expect_column_values_to_not_match_regex", "caption", Reason.CAPTION_NOT_UTF8),
    ("expect_column_value_lengths_to_be_between", "caption", Reason.CAPTION_TOO_LONG),
    ("expect_column_values_to_not_be_null", "image_uri", Reason.IMAGE_URI_INVALID),
    ("expect_column_values_to_match_regex", "image_uri", Reason.IMAGE_URI_INVALID),
]
EXPECTED_BATCH = {
    "columns": "error",
    "row_count": "error",
    "id_unique": "error",
    "caption_null_fraction": "warn",
}
GX_SEVERITY = {"error": "critical", "warn": "warning"}


def test_suite_file_lists_the_expected_checks() -> None:
    assert expectations_dir() == REPO / "expectations"
    suite = load_suite()
    raw = json.loads((REPO / "expectations" / "posts_raw.json").read_text())
    assert len(suite.expectations) == len(raw["expectations"])

    row_level = [
        (e.expectation_type, getattr(e, "column", None), Reason(e.meta["reason"]))
        for e in suite.expectations
        if "reason" in e.meta
    ]
    assert row_level == EXPECTED_ROW_LEVEL
    assert [r for _, r in row_level_reasons(suite)] == [r for *_, r in EXPECTED_ROW_LEVEL]
    batch = {e.meta["name"]: e.meta["severity"] for e in suite.expectations if "severity" in e.meta}
    assert batch == EXPECTED_BATCH
    for e in suite.expectations:  # GX's own severity agrees with ours (Data Docs show it)
        want = GX_SEVERITY[e.meta["severity"]] if "severity" in e.meta else "info"
        assert e.severity.value == want, e


def test_suite_parameters_are_the_ones_validate_supplies() -> None:
    text = (REPO / "expectations" / "posts_raw.json").read_text()
    used = set(pd.Series(text.split('"$PARAMETER": "')[1:]).str.split('"').str[0])
    assert used == {"window_start", "window_end", "now", "caption_max_chars", "min_rows"}


def _write_suite(tmp_path: Path, mutate) -> Path:
    data = json.loads((REPO / "expectations" / "posts_raw.json").read_text())
    mutate(data["expectations"])
    path = tmp_path / "posts_raw.json"
    path.write_text(json.dumps(data))
    return path


def test_expectations_dir_env_override(tmp_path: Path, monkeypatch) -> None:
    _write_suite(tmp_path, lambda exps: exps.pop())  # drop the URI regex
    monkeypatch.setenv(EXPECTATIONS_DIR_ENV, str(tmp_path))
    suite = load_suite()
    assert len(suite.expectations) == len(EXPECTED_ROW_LEVEL) + len(EXPECTED_BATCH) - 1
    out = validate(frame([row(1, image_uri="http://x/y.jpg")]), suite=suite)
    assert out.row_reasons.empty  # the custom suite was used


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda exps: exps[-1]["meta"].update(reason="nope"), "not an ml.ingest.reasons.Reason"),
        (lambda exps: exps[0]["meta"].update(severity="fatal"), "severity must be one of"),
        (lambda exps: exps[-1].update(meta={}), "exactly one of"),
        (lambda exps: exps[-1].update(type="expect_column_to_be_pretty"), "built 19 of 20"),
    ],
)
def test_malformed_suite_is_refused(tmp_path: Path, mutate, match: str) -> None:
    with pytest.raises(SuiteError, match=match):
        load_suite(_write_suite(tmp_path, mutate))


def test_missing_suite_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=EXPECTATIONS_DIR_ENV):
        load_suite(tmp_path / "nope.json")


def test_importing_validate_does_not_import_gx() -> None:
    code = "import sys, ml.ingest.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
