"""The closed vocabulary of quarantine reasons: every quarantined row carries exactly one."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # row shape and values
    ID_NULL = "id_null"
    DUPLICATE_SUPERSEDED = "duplicate_superseded"
    COUNT_NULL = "count_null"
    COUNT_NEGATIVE = "count_negative"
    TIMESTAMP_NULL = "timestamp_null"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMPS_INCONSISTENT = "timestamps_inconsistent"  # updated before it was created
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    # caption
    # caption_null / caption_empty only when POSTFLOW_REQUIRE_CAPTION: a post may have none
    CAPTION_NULL = "caption_null"
    CAPTION_EMPTY = "caption_empty"
    CAPTION_NOT_UTF8 = "caption_not_utf8"  # bytes the source returned were not UTF-8
    CAPTION_TOO_LONG = "caption_too_long"
    # image
    IMAGE_URI_INVALID = "image_uri_invalid"
    IMAGE_MISSING = "image_missing"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_EMPTY = "image_empty"
    IMAGE_NOT_AN_IMAGE = "image_not_an_image"
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"


# When a row fails several checks, the first reason in this order is recorded (the others are
# listed in its message), so a row's reason does not depend on which check ran first.
PRECEDENCE: tuple[Reason, ...] = tuple(Reason)
