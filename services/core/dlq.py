"""Dead-letter records: the original bytes and headers, plus why and where it failed.

A dead letter is replayable as it stands: strip the ``hs-dlq-*`` headers and
the record is the original again (``hookstream dlq redrive`` does exactly that).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

H_REASON = "hs-dlq-reason"  # closed set: hookstream.core.errors.REASONS
H_STAGE = "hs-dlq-stage"  # "normalizer", "sink:warehouse", ...
H_DETAIL = "hs-dlq-detail"  # human-readable, truncated
H_ORIGIN = "hs-dlq-origin"  # "<topic>/<partition>/<offset>" of the failed record
H_AT = "hs-dlq-at"  # integer ms since the epoch
PREFIX = "hs-dlq-"
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
