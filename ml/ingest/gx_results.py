"""Great Expectations results in words: the message of each quarantined row (which value broke
which expectation), the batch checks that judge a chunk as a whole, and the validation result
trimmed to a bounded JSON kept with the partition (GX lists every failing index otherwise)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- messages


# Kept in result_json per failed expectation; the quarantine itself holds every bad row.
RESULT_INDEX_CAP = 1000
RESULT_VALUES_CAP = 20


@dataclass(frozen=True)
class BatchCheck:
    """One batch-level expectation's verdict on a chunk."""

    name: str
    severity: Literal["error", "warn"]
    success: bool
    observed: Any
    message: str


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime, pd.Timestamp)):
        return pd.Timestamp(value).isoformat(sep=" ")
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return str(value)


def _bounds(kwargs: dict[str, Any]) -> str:
    parts = []
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None:
        parts.append(f"{'>' if kwargs.get('strict_min') else '>='} {_fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if kwargs.get('strict_max') else '<='} {_fmt(hi)}")
    return " and ".join(parts) or "in range"


def row_messages(
    work: pd.DataFrame, etype: str, kwargs: dict[str, Any], meta: dict[str, Any], pos: np.ndarray
) -> list[str]:
    """A human sentence per failing row, e.g. `comment_count is -3 (must be >= 0)`."""
    col = kwargs.get("column")
    builder = _ROW_MESSAGES.get(etype)
    if builder is None:
        return [f"fails {describe(etype, kwargs)}"] * len(pos)
    msgs = builder(work, col, kwargs, pos)
    if meta.get("hint"):
        msgs = [f"{m} ({meta['hint']})" for m in msgs]
    return msgs


def _values(work: pd.DataFrame, col: str, pos: np.ndarray) -> list[Any]:
    return work[col].iloc[pos].tolist()


def _msg_not_null(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    return [f"{col} is null"] * len(pos)


def _msg_between(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    bounds = _bounds(kwargs)
    return [f"{col} is {_fmt(v)} (must be {bounds})" for v in _values(work, col, pos)]


def _msg_lengths(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    bounds = _bounds(kwargs)
    lengths = work[col].iloc[pos].astype(str).str.len().tolist()
    return [f"{col} has {n} characters (must be {bounds})" for n in lengths]


def _msg_regex(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    return [f"{col} is {_fmt(v)}" for v in _values(work, col, pos)]


def _msg_pair_greater(work: pd.DataFrame, col: str, kwargs: dict, pos: np.ndarray) -> list[str]:
    a, b = kwargs["column_A"], kwargs["column_B"]
    op = ">=" if kwargs.get("or_equal") else ">"
    return [
        f"{a} is {_fmt(x)} (must be {op} {b} {_fmt(y)})"
        for x, y in zip(_values(work, a, pos), _values(work, b, pos), strict=True)
    ]


_ROW_MESSAGES: dict[str, Callable[[pd.DataFrame, str, dict, np.ndarray], list[str]]] = {
    "expect_column_values_to_not_be_null": _msg_not_null,
    "expect_column_values_to_be_between": _msg_between,
    "expect_column_value_lengths_to_be_between": _msg_lengths,
    "expect_column_values_to_match_regex": _msg_regex,
    "expect_column_values_to_not_match_regex": _msg_regex,
    "expect_column_pair_values_a_to_be_greater_than_b": _msg_pair_greater,
}


def describe(etype: str, kwargs: dict[str, Any]) -> str:
    target = kwargs.get("column") or ",".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    return f"{etype}({target})" if target else etype


def batch_check(
    etype: str, kwargs: dict[str, Any], meta: dict[str, Any], success: bool, result: dict
) -> BatchCheck:
    name = meta.get("name") or describe(etype, kwargs)
    severity = meta["severity"]
    if "observed_value" in result:
        observed = result["observed_value"]
        if etype == "expect_table_columns_to_match_set":
            want, got = set(kwargs.get("column_set") or []), set(observed or [])
            message = (
                "columns as expected"
                if success
                else f"missing columns {sorted(want - got)}, unexpected {sorted(got - want)}"
            )
        else:
            message = f"{name} is {_fmt(observed)} (must be {_bounds(kwargs)})"
    else:
        count = int(result.get("unexpected_count") or 0)
        pct = float(result.get("unexpected_percent") or 0.0)
        observed = {"unexpected_count": count, "unexpected_percent": pct}
        mostly = kwargs.get("mostly")
        allowed = f"at most {100 * (1 - mostly):.3g}%" if mostly is not None else "none"
        message = f"{describe(etype, kwargs)}: {count} rows ({pct:.3g}%) fail, {allowed} allowed"
    if success:
        message = f"ok: {message}"
    return BatchCheck(
        name=name, severity=severity, success=bool(success), observed=observed, message=message
    )


def exception_message(info: Any) -> str | None:
    """GX keeps either one exception dict or a dict of them keyed by metric."""
    if not info:
        return None
    if "raised_exception" in info:
        if not info["raised_exception"]:
            return None
        return info.get("exception_message") or "unknown error"
    for sub in info.values():
        msg = exception_message(sub) if isinstance(sub, dict) else None
        if msg:
            return msg
    return None


def cap_lists(result: dict[str, Any]) -> bool:
    """Cap per-row lists in a GX result in place (before JSON conversion, which is slow on them).

    The quarantine holds every bad row; the kept result only needs counts and examples.
    """
    capped = False
    for key, cap in (
        ("unexpected_index_list", RESULT_INDEX_CAP),
        ("unexpected_list", RESULT_VALUES_CAP),
        ("partial_unexpected_index_list", RESULT_VALUES_CAP),
    ):
        values = result.get(key)
        if isinstance(values, list) and len(values) > cap:
            result[key] = values = values[:cap]
            capped = True
        if isinstance(values, list) and key != "unexpected_index_list":
            result[key] = [_short(v) for v in values]
    return capped


def _short(value: Any, limit: int = 200) -> Any:
    """A 3000-character caption is no better an example than its first 200 characters."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...[{len(value)} chars]"
    return value


def result_json(result: Any, trimmed: bool, params: dict[str, Any]) -> dict[str, Any]:
    data = result.to_json_dict()
    data.setdefault("meta", {})["postflow"] = {
        "expectation_parameters": {
            k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()
        },
        "index": "row positions within the validated chunk",
        "lists_capped_at": {"index": RESULT_INDEX_CAP, "values": RESULT_VALUES_CAP},
        "trimmed": trimmed,
    }
    return data
