"""The three outcomes of processing one message, decided in one place.

Every message ends as exactly one of: done; retry later (``Retryable``: a
transient failure such as a broker or database outage, the batch is retried
with backoff and nothing is committed); or dead letter (``Invalid``: permanent,
with a reason from a closed set, the partition moves on).
"""

from __future__ import annotations

# Dead-letter reasons: a closed set, used as a metric label and a DLQ header.
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_METADATA = "missing_metadata"
UNKNOWN_PROVIDER = "unknown_provider"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNKNOWN_VERSION = "unknown_version"
SCHEMA_VIOLATION = "schema_violation"
MAPPING_FAILED = "mapping_failed"
TOO_DEEP = "too_deep"  # nesting beyond the normalizer's cap (HOOKSTREAM_NORMALIZER_MAX_DEPTH)
TOO_LARGE = "too_large"  # a body beyond HOOKSTREAM_NORMALIZER_MAX_BODY_BYTES
# Anything else one record raised: a bug or an input nobody foresaw. The record is
# dead-lettered with the exception's type and message, and the partition moves on.
INTERNAL_ERROR = "internal_error"

REASONS = (
    INVALID_UTF8, MALFORMED_JSON, NOT_AN_OBJECT, MISSING_METADATA, UNKNOWN_PROVIDER,
    UNKNOWN_EVENT_TYPE, UNKNOWN_VERSION, SCHEMA_VIOLATION, MAPPING_FAILED, TOO_DEEP,
    TOO_LARGE, INTERNAL_ERROR,
)

# Dead-letter reasons of the transcripts sink, on its own topic
# hookstream.sink.transcripts.dlq.v1 (docs/sinks-transcripts.md). A closed set of its
# own: REASONS above is the normalizer's, which the hookstream.dlq.v1 schema closes.
# url_rejected: not http(s), a host not allowed, or one resolving to a non-public address.
TRANSCRIPT_URL_REJECTED = "transcript_url_rejected"
TRANSCRIPT_UNAVAILABLE = "transcript_unavailable"  # 4xx other than 408/425/429
TRANSCRIPT_TOO_LARGE = "transcript_too_large"  # past HOOKSTREAM_TRANSCRIPTS_MAX_BYTES
NOT_A_TRANSCRIPT = "not_a_transcript"  # the body is not a JSON object or array

TRANSCRIPT_REASONS = (
    TRANSCRIPT_URL_REJECTED, TRANSCRIPT_UNAVAILABLE, TRANSCRIPT_TOO_LARGE, NOT_A_TRANSCRIPT,
)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an unexpected exception, for a dead letter's detail."""
    return f"{type(exc).__name__}: {exc}"


class Invalid(Exception):
    """A permanent failure: the message goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Retryable(Exception):
    """A transient failure: retry the whole batch later; commit nothing."""
