"""The Great Expectations suite of posts_raw, as data: where it lives, how it loads, and which
reason each row-level expectation stands for.

The suite is `expectations/posts_raw.json`. An expectation's `meta` says what a failure means:
`reason` (an `ml.ingest.reasons.Reason`) makes it row level, its failing rows go to quarantine with
that reason; `severity` (`error`/`warn`) makes it judge a chunk as a whole. Loading checks both, and
that GX built every expectation, so a typo in the suite fails loudly instead of letting bad rows
through. `great_expectations` is imported lazily because importing it costs seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.ingest.reasons import Reason

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

log = logging.getLogger(__name__)

EXPECTATIONS_DIR_ENV = "POSTFLOW_EXPECTATIONS_DIR"
SUITE_FILE = "posts_raw.json"
SEVERITIES = ("error", "warn")


class SuiteError(ValueError):
    """The expectation suite file is missing or malformed; the message says what to fix."""


def expectations_dir() -> Path:
    """`POSTFLOW_EXPECTATIONS_DIR`, else the repo's `expectations/` next to the `ml` package."""
    env = os.environ.get(EXPECTATIONS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "expectations"


def load_suite(path: Path | None = None) -> ExpectationSuite:
    """The posts_raw suite from JSON, checked so a typo fails loudly instead of silently.

    GX's `ExpectationSuite(**json)` logs and *drops* an expectation it cannot build; a dropped
    row-level check would let bad rows through, so the count is compared here. Cached per path
    and modification time.
    """
    path = Path(path) if path is not None else expectations_dir() / SUITE_FILE
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SuiteError(
            f"expectation suite {path} does not exist (set {EXPECTATIONS_DIR_ENV} to the folder "
            f"holding {SUITE_FILE})"
        ) from None
    return _load_suite_cached(str(path.resolve()), stat.st_mtime_ns)


_SUITES: dict[tuple[str, int], Any] = {}
_LOCK = threading.RLock()


def _load_suite_cached(path: str, mtime_ns: int) -> ExpectationSuite:
    with _LOCK:
        key = (path, mtime_ns)
        if key not in _SUITES:
            _SUITES[key] = _read_suite(Path(path))
        return _SUITES[key]


def _read_suite(path: Path) -> ExpectationSuite:
    import great_expectations as gx

    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path} is not valid JSON: {exc}") from exc
    raw = data.get("expectations") or []
    for i, exp in enumerate(raw):
        _check_meta(path, i, exp)
    suite = gx.ExpectationSuite(**data)
    if len(suite.expectations) != len(raw):
        dropped = Counter(e.get("type") for e in raw) - Counter(
            e.expectation_type for e in suite.expectations
        )
        raise SuiteError(
            f"{path}: GX built {len(suite.expectations)} of {len(raw)} expectations; dropped "
            f"{sorted(map(str, dropped.elements()))} (GX logged why)"
        )
    log.info("expectation suite %s: %d expectations", path, len(suite.expectations))
    return suite


def _check_meta(path: Path, i: int, exp: dict[str, Any]) -> None:
    meta = exp.get("meta") or {}
    where = f"{path}: expectation #{i} ({exp.get('type')})"
    if ("reason" in meta) == ("severity" in meta):
        raise SuiteError(f"{where}: meta needs exactly one of 'reason' or 'severity', got {meta}")
    if "reason" in meta and meta["reason"] not in {r.value for r in Reason}:
        raise SuiteError(
            f"{where}: meta.reason {meta['reason']!r} is not an ml.ingest.reasons.Reason"
        )
    if "severity" in meta and meta["severity"] not in SEVERITIES:
        raise SuiteError(f"{where}: meta.severity must be one of {SEVERITIES}")


def row_level_reasons(suite: ExpectationSuite) -> list[tuple[str, Reason]]:
    """(expectation type, reason) of every row-level expectation, in suite order."""
    return [
        (e.expectation_type, Reason(e.meta["reason"]))
        for e in suite.expectations
        if "reason" in (e.meta or {})
    ]
