"""Bounds on the header values the verifiers read, checked before any arithmetic,
decoding or hashing.

Every value a verifier uses comes from an unauthenticated request. A value out of
bounds (missing, empty, not ASCII, longer than its limit) is simply not valid: the
delivery is refused like any other bad credential (401), never an exception (500).
The limits are far above what a genuine sender produces.
"""

from __future__ import annotations

from typing import Any

MAX_ID_CHARS = 256  # webhook-id (Standard Webhooks ids are ~30 characters)
MAX_TIMESTAMP_DIGITS = 12  # webhook-timestamp: integer seconds (10 digits until 2286)
# A Saaya signature header in any configured form: space-separated "v1,<base64>" (~47
# each), "sha256=<hex>" (71), or "t=<timestamp>,v1=<sig>,..." (Saaya's document names none).
MAX_SIGNATURES_CHARS = 2048
MAX_CREDENTIAL_CHARS = 1024  # a shared-secret header or an Authorization: Basic value


def bounded(value: Any, limit: int) -> str | None:
    """``value`` if it is a non-empty ASCII string of at most ``limit`` characters."""
    if not isinstance(value, str) or not value or len(value) > limit or not value.isascii():
        return None
    return value
