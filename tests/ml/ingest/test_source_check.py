"""The label's assumption checked against the source (issue 20 §2): a comment count that moves
without `updated_at` is found by re-reading a sample from MySQL on the SELECT-only account, kept
in the lake, and above the threshold the window's labels are held back. Real MariaDB."""

from __future__ import annotations

from datetime import datetime, timedelta

import MySQLdb

from ml.ingest import source_check as SC
from ml.lake.partitions import Lake
from tools.synthetic import write_posts_clean

DAY = "2024-03-01"
T0 = datetime(2024, 3, 1, 9)


def _seed(db, lake, n: int = 200) -> None:
    """n posts in MySQL, and the lake's posts_clean/DAY as the nightly extract read them."""
    rows = [
        (i, 1, f"c{i}", "x", 3, i % 40, T0 + timedelta(minutes=i), T0 + timedelta(minutes=i))
        for i in range(1, n + 1)
    ]
    db.execute(
        "INSERT INTO posts (id, author_id, caption, image_uri, hearts, comment_count, created_at,"
        " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        rows,
        many=True,
    )
    cols = ["id", "author_id", "caption", "image_uri", "hearts", "comment_count"]
    cols += ["created_at", "updated_at"]
    write_posts_clean(lake, DAY, {c: [r[k] for r in rows] for k, c in enumerate(cols)})


def test_a_count_that_moves_without_updated_at_is_found_and_holds_the_labels(
    fresh_mysql_db, tmp_path
):
    db, lake = fresh_mysql_db, Lake(str(tmp_path / "lake"))
    _seed(db, lake)
    # the app's ordinary update: the table's ON UPDATE moves updated_at, the next extract reads
    # it, so it is no finding (planted defect, ON UPDATE removed from posts.sql: 20 findings)
    db.execute("UPDATE posts SET comment_count = comment_count + 1 WHERE id <= 20")
    r = SC.check_source(lake, db.reader, DAY, DAY, sample=500, max_fraction=0.01)
    assert r["sampled"] == 200 and r["silent_changes"] == 0 and not r["held"]
    assert r["unchanged"] == 180  # the 20 updated posts moved: the next extract's business
    # a write that bypasses updated_at: the label's assumption broken for 5 of the 180
    db.execute(
        "UPDATE posts SET comment_count = comment_count + 7, updated_at = updated_at "
        "WHERE id BETWEEN 101 AND 105"
    )
    r = SC.check_source(lake, db.reader, DAY, DAY, sample=500, max_fraction=0.01)
    assert r["silent_changes"] == 5 and r["held"] and "5 of 180" in r["reason"]
    assert sorted(f["id"] for f in r["findings"]) == [101, 102, 103, 104, 105]
    f = r["findings"][0]
    assert f["source_comment_count"] == f["lake_comment_count"] + 7
    SC.write_result(lake, DAY, r)
    held = SC.held_back(lake, DAY, DAY)
    assert held and "without moving updated_at" in held
    kept = lake.read_partition("source_check", DAY).to_pylist()
    assert [x["id"] for x in kept] == [101, 102, 103, 104, 105]
    # under the threshold: a finding, the labels kept
    r = SC.check_source(lake, db.reader, DAY, DAY, sample=500, max_fraction=0.05)
    assert r["silent_changes"] == 5 and not r["held"]
    SC.write_result(lake, DAY, r)
    assert SC.held_back(lake, DAY, DAY) is None


def test_the_sample_is_bounded_and_read_on_the_select_only_account(fresh_mysql_db, tmp_path):
    db, lake = fresh_mysql_db, Lake(str(tmp_path / "lake"))
    _seed(db, lake)
    r = SC.check_source(lake, db.reader, DAY, DAY, sample=50, max_fraction=0.01)
    assert r["sampled"] == 50 and r["unchanged"] == 50
    conn = db.reader.connect()
    try:
        try:
            conn.cursor().execute("UPDATE posts SET hearts = 0 WHERE id = 1")
            raise AssertionError("the reader account could write")
        except MySQLdb.OperationalError:
            pass
    finally:
        conn.close()


def test_the_finding_is_in_the_reports_data_quality(tmp_path):
    from ml.report.data import data_quality
    from ml.weeks import Week

    lake = Lake(str(tmp_path / "lake"))
    finding = {
        "id": 7,
        "ds": DAY,
        "lake_comment_count": 2,
        "source_comment_count": 9,
        "updated_at": T0.isoformat(),
    }
    result = {
        "window": [DAY, DAY],
        "sampled": 50,
        "unchanged": 50,
        "silent_changes": 1,
        "fraction": 0.02,
        "max_fraction": 0.01,
        "held": True,
        "reason": "1 of 50 re-read posts (2.0%) changed comment_count without moving updated_at",
        "findings": [finding],
    }
    SC.write_result(lake, DAY, result)
    q = data_quality(lake, Week.of(DAY))
    assert q["source_checks"] == [
        {
            "ds": DAY,
            "sampled": 50,
            "unchanged": 50,
            "silent_changes": 1,
            "fraction": 0.02,
            "held": True,
            "reason": result["reason"],
        }
    ]


def test_train_refuses_a_window_whose_labels_are_held_back_and_says_why(
    tmp_path, monkeypatch, capsys
):
    from ml.learn import train as T

    lake = Lake(str(tmp_path / "lake"))
    reason = "5 of 180 re-read posts (2.8%) changed comment_count without moving updated_at"
    result = {"sampled": 200, "unchanged": 180, "silent_changes": 5, "fraction": 0.028}
    SC.write_result(lake, DAY, result | {"held": True, "reason": reason, "findings": []})
    monkeypatch.setenv("POSTFLOW_LAKE", lake.root)
    monkeypatch.setenv("POSTFLOW_CONFIG", "")
    assert T.main(["--start", DAY, "--end", DAY, "--no-mlflow"]) == 3
    err = capsys.readouterr().err
    assert "held back" in err and reason in err
