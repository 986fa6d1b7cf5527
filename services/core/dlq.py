"""Dead-letter records: the original bytes and headers, plus why and where it failed.

A dead letter is replayable as it stands: strip the ``hs-dlq-*`` headers and
the record is the original again (``hookstream dlq redrive`` does exactly that).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from . import headers as _names

# The header names (core/headers.py), under the names this module always gave them.
H_REASON = _names.H_DLQ_REASON
H_STAGE = _names.H_DLQ_STAGE
H_DETAIL = _names.H_DLQ_DETAIL
H_ORIGIN = _names.H_DLQ_ORIGIN
H_AT = _names.H_DLQ_AT
PREFIX = _names.DLQ_PREFIX

MAX_DETAIL_BYTES = 2000


def dead_letter_headers(
    original: Sequence[tuple[str, bytes]],
    *,
    reason: str,
    stage: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in original if not k.startswith(PREFIX)]
    return [
        *kept,
        (H_REASON, reason.encode()),
        (H_STAGE, stage.encode()),
        (H_DETAIL, detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]),
        (H_ORIGIN, f"{topic}/{partition}/{offset}".encode()),
        (H_AT, str(time.time_ns() // 1_000_000).encode()),
    ]


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers the record had before it was dead-lettered."""
    return [(k, v) for k, v in headers if not k.startswith(PREFIX)]


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None
