"""Find a secret in bytes however they were stored or sent: the secret scans of the fault tests.

A leak rarely sits in a file as plain text: an HTTP client sends a password base64-encoded in
`Authorization: Basic`, a mail part is base64 or quoted-printable, a URL percent-encodes it, the
lake keeps strings in compressed Parquet pages, an object store may hold gzip or zstd. `views`
decodes each of those (nested a few levels deep) and `find` searches every decoded view.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import email
import email.policy
import gzip
import io
import lzma
import quopri
import re
import urllib.parse
import zlib
from collections.abc import Iterator, Mapping

# a base64 (standard or URL-safe) run long enough to hold a secret of 8+ bytes
_B64 = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")
_HTTP_HEADERS = re.compile(rb"(?:^|\r\n)([A-Za-z0-9-]+): ([^\r\n]*)")


def _decompressed(data: bytes) -> bytes | None:
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":  # zstd, read by pyarrow's codec
            import pyarrow as pa

            with pa.CompressedInputStream(pa.BufferReader(data), "zstd") as stream:
                return stream.read()
        if data[:3] == b"BZh":
            return bz2.decompress(data)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:1] == b"\x78" and len(data) > 2 and int.from_bytes(data[:2], "big") % 31 == 0:
            return zlib.decompress(data)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return None  # pyarrow raises OSError on a corrupt zstd stream
    return None


def parquet_values(data: bytes) -> bytes | None:
    """Every value of a Parquet file (any codec), as text: what a reader of the lake sees."""
    if not (data[:4] == b"PAR1" and data[-4:] == b"PAR1"):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    out = [repr(table.schema.metadata or {}).encode()]
    for column in table.columns:
        for value in column.to_pylist():
            out.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\n".join(out)


def _mail_parts(data: bytes) -> Iterator[bytes]:
    if not re.match(rb"(?i)^[\w-]+: ", data[:200]) or b"\n\n" not in data.replace(b"\r", b""):
        return
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for part in msg.walk():
        payload = part.get_payload(decode=True)
        if payload:
            yield payload
        for value in part.values():
            yield str(value).encode()


def _http_headers(data: bytes) -> Iterator[bytes]:
    """The decoded credentials of HTTP requests' Authorization headers (Basic: base64)."""
    for name, value in _HTTP_HEADERS.findall(data):
        if name.lower() in (b"authorization", b"proxy-authorization"):
            scheme, _, cred = value.partition(b" ")
            if scheme.lower() == b"basic":
                try:
                    yield base64.b64decode(cred.strip(), validate=True)
                except binascii.Error:
                    pass


def _base64_runs(data: bytes) -> Iterator[bytes]:
    for run in _B64.findall(data):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            for cut in range(4):  # a run glued to other text: try each alignment
                chunk = run[cut:]
                chunk = chunk[: len(chunk) - len(chunk) % 4] if not chunk.endswith(b"=") else chunk
                try:
                    yield decode(chunk)
                except (binascii.Error, ValueError):
                    pass


def views(data: bytes, depth: int = 3) -> Iterator[bytes]:
    """`data` and what it decodes to: decompressed, Parquet values, mail parts, HTTP Basic
    credentials, quoted-printable, URL-unquoted, base64 runs; each decoded view again, to
    `depth` levels."""
    yield data
    if depth == 0 or not data:
        return
    derived: list[bytes] = []
    if (raw := _decompressed(data)) is not None:
        derived.append(raw)
    try:
        if (values := parquet_values(data)) is not None:
            derived.append(values)
    except Exception as exc:  # a file that only looks like Parquet: say so, do not hide it
        derived.append(f"<unreadable parquet: {exc}>".encode())
    derived.extend(_mail_parts(data))
    derived.extend(_http_headers(data))
    if b"=" in data:
        derived.append(quopri.decodestring(data))
    if b"%" in data:
        derived.append(urllib.parse.unquote_to_bytes(data.replace(b"+", b" ")))
    derived.extend(_base64_runs(data))
    for d in derived:
        if d != data:
            yield from views(d, depth - 1)


def find(secret: str | bytes, data: bytes) -> bool:
    """Whether `secret` is in `data` or in any decoded view of it."""
    needle = secret.encode() if isinstance(secret, str) else secret
    return any(needle in v for v in views(data))


def leaks(secrets: Mapping[str, str], haystacks: Mapping[str, bytes]) -> list[str]:
    """'<secret name> in <where>' for every secret found in any haystack."""
    return [
        f"{name} in {where}"
        for where, data in haystacks.items()
        for name, secret in secrets.items()
        if find(secret, data)
    ]
