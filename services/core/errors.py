"""The three outcomes of processing one message, decided in one place.

Every message ends as exactly one of: done; retry later (``Retryable``: a
transient failure such as a broker or database outage, the batch is retried
with backoff and nothing is committed); or dead letter (``Invalid``: permanent,
with a reason from a closed set, the partition moves on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

# Dead-letter reasons every sink may give, on its own topic hookstream.sink.<name>.dlq.v1
# (the sink runner's; INTERNAL_ERROR above too). A sink adds the reasons its ``write``
# gives with :func:`sink_reasons`; REASONS above is the normalizer's alone, which the
# hookstream.dlq.v1 schema closes.
MALFORMED_EVENT = "malformed_event"  # not a canonical event JSON object, or missing a field
RETRIES_EXHAUSTED = "retries_exhausted"  # parked past the last of its retry delays
SINK_ERROR = "sink_error"  # the sink raised on this event alone

SINK_REASONS = (MALFORMED_EVENT, RETRIES_EXHAUSTED, SINK_ERROR, INTERNAL_ERROR)

NORMALIZER_STAGE = "normalizer"
# The registry: the closed set of dead-letter reasons of every stage ("normalizer",
# "sink:<name>"), filled by the sinks' modules as they are imported.
_REGISTRY: dict[str, tuple[str, ...]] = {NORMALIZER_STAGE: REASONS}


def sink_stage(sink: str) -> str:
    """The ``hs-dlq-stage`` of sink ``sink``'s dead letters."""
    return f"sink:{sink}"


def sink_reasons(sink: str, *reasons: str) -> tuple[str, ...]:
    """Register the dead-letter reasons sink ``sink`` gives of its own (beyond
    ``SINK_REASONS``) and return them, in order: ``A, B = sink_reasons("x", "a", "b")``."""
    for reason in reasons:
        if not reason or reason != reason.lower() or " " in reason:
            raise ValueError(f"a dead-letter reason is a snake_case word: {reason!r}")
        if reason in REASONS or reason in SINK_REASONS:
            raise ValueError(f"{reason!r} is a reason of the normalizer or of every sink")
    stage = sink_stage(sink)
    known = _REGISTRY.get(stage, SINK_REASONS)
    _REGISTRY[stage] = known + tuple(r for r in reasons if r not in known)
    return reasons


def reasons_of(stage: str) -> tuple[str, ...]:
    """The dead-letter reasons of ``stage`` (``"normalizer"`` or ``"sink:<name>"``)."""
    if stage in _REGISTRY:
        return _REGISTRY[stage]
    return SINK_REASONS if stage.startswith("sink:") else ()


def registered() -> dict[str, tuple[str, ...]]:
    """Every stage's reasons registered so far (the sinks' once their modules are imported)."""
    return dict(_REGISTRY)


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


class NotDue(Retryable):
    """Not a failure: the batch holds a parked record that is not due yet. The loop
    reads the batch again at once, without backoff and staying healthy; the handler
    has already waited a slice of the time, so the loop polls at least once per
    slice and the consumer keeps its group membership (``max.poll.interval.ms``).

    ``resume_at`` (partition -> offset): the handler has finished the batch's records
    before these offsets (the ones that were due), so the loop commits them and reads
    on from there; a partition not named is read again from the batch's start."""

    def __init__(self, message: str, resume_at: Mapping[Any, int] | None = None) -> None:
        super().__init__(message)
        self.resume_at: dict[Any, int] = dict(resume_at or {})
