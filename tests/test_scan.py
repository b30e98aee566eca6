"""The secret scanner of the fault tests (tests/scan.py) finds a password in every encoding a
leak would take, where a plain byte search finds none of them."""

from __future__ import annotations

import base64
import gzip
import io
import urllib.parse
from email.message import EmailMessage

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.scan import find, leaks, parquet_values

SECRET = "pw=Zq8vN3xT/kLm2R9s"  # "=" and "/": quoted-printable and URL encoding change it


def _parquet(value: str, compression: str) -> bytes:
    buf = io.BytesIO()
    # enough text that zstd compresses it (a few bytes would be stored as a raw block)
    messages = [f"row {i}: could not read the photo of post {i * 7919}" for i in range(300)]
    messages[123] = f"could not read {value}"
    table = pa.table({"id": list(range(300)), "message": messages})
    # no statistics: a column's min/max would hold the value as plain text in the footer
    pq.write_table(table, buf, compression=compression, write_statistics=False)
    return buf.getvalue()


def _mail(cte: str) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = "weekly report"
    msg.set_content(("x" * 70) + f" the login is {SECRET} " + ("y" * 70), cte=cte)
    msg.add_attachment(f"user={SECRET}".encode(), maintype="application", subtype="octet-stream")
    return msg.as_bytes()


def _encoded() -> dict[str, bytes]:
    basic = base64.b64encode(f"postflow:{SECRET}".encode()).decode()
    return {
        "zstd parquet": _parquet(SECRET, "zstd"),
        "snappy parquet": _parquet(SECRET, "snappy"),
        "gzip object": gzip.compress(f'{{"password": "{SECRET}"}}'.encode()),
        "base64 mail part": _mail("base64"),
        "quoted-printable mail part": _mail("quoted-printable"),
        "url-encoded": f"mysql://u:{urllib.parse.quote(SECRET, safe='')}@h/db".encode(),
        "http basic auth": (
            f"GET /api/2.0/mlflow/experiments/get HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Basic {basic}\r\n\r\n"
        ).encode(),
        "base64 in gzip": gzip.compress(b"token " + base64.b64encode(SECRET.encode())),
    }


@pytest.mark.parametrize("where", sorted(_encoded()))
def test_a_secret_is_found_in_each_encoding(where):
    data = _encoded()[where]
    if where != "snappy parquet":  # snappy keeps a short value as a literal
        assert SECRET.encode() not in data, "the encoding must hide it from a plain search"
    assert find(SECRET, data), where


def test_nothing_is_found_where_the_secret_is_not():
    other = "pw=Zq8vN3xT/kLm2R9X"  # one character differs
    assert leaks({"s": other}, _encoded()) == []
    assert not find(SECRET, _parquet(SECRET[:-1], "zstd"))


def test_parquet_values_are_decoded_values():
    assert f"could not read {SECRET}".encode() in parquet_values(_parquet(SECRET, "zstd"))
    assert parquet_values(b"not parquet") is None
