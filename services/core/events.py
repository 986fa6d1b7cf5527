"""The canonical event: one envelope for every provider's events (schema v1).

Contract: ``schemas/canonical/v1/event.schema.json``; field-by-field meaning and
the provider-to-canonical mapping table: ``docs/canonical.md``. Adding a field
is backwards compatible; renaming or retyping one is a new envelope version.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
import uuid
from typing import Any

import orjson

ENVELOPE = "hookstream.event.v1"

# A fixed namespace: event ids are uuid5(namespace, "<provider>:<dedupe key>"),
# so every redelivery, replay or redrive of one event gets the same id.
EVENT_ID_NAMESPACE = uuid.UUID("7b1f0c52-7d7e-4c55-9a8e-2f4a6c1d9e30")


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def event_id(provider: str, dedupe_key: str) -> str:
    """``str(uuid.uuid5(EVENT_ID_NAMESPACE, ...))``, without building UUID objects
    (this runs once per event on the normalizer's hot path)."""
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + f"{provider}:{dedupe_key}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=4096)
def _iso_second(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-23T14:48:34.941Z`` (exact integer
    arithmetic; the formatted second is cached: a batch's events share a few seconds)."""
    return f"{_iso_second(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


@dataclasses.dataclass(frozen=True, slots=True)
class TranscriptTurn:
    role: str  # "agent" | "customer" | "system" | the provider's own role, lower-cased
    text: str


@dataclasses.dataclass(slots=True, kw_only=True)
class CanonicalEvent:
    # Field order is the JSON order: orjson serialises this dataclass natively.
    envelope: str = dataclasses.field(default=ENVELOPE, init=False)
    event_id: str
    provider: str
    source: str
    type: str  # canonical name, e.g. "call.ended"
    provider_type: str  # the provider's own event name
    received_at: str  # ISO 8601, from the ingest receive time
    occurred_at: str | None  # ISO 8601, as the provider stated it, when it did
    data: dict[str, Any]  # the provider's payload, whole
    provider_version: str | None = None
    type_inferred: bool = False  # no routing key: the type inferred from the payload's shape
    request_id: str | None = None  # ingest receipt of the delivery this came from
    # A test delivery (issue 13): kept in the warehouse's events, flagged, and kept out
    # of the folded call state, the CRM, alerts and recordings. Absent in events written
    # before the field existed: read those as false (``is_test``).
    test: bool = False
    # Subject ids, whichever exist.
    call_id: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    campaign_id: str | None = None
    # Typed common fields where the providers overlap.
    status: str | None = None
    previous_status: str | None = None
    direction: str | None = None  # "inbound" | "outbound"
    customer_number: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    cost: float | None = None
    cost_currency: str | None = None
    sentiment: float | None = None  # as the provider gives it (e.g. a score in -1..1)
    sentiment_label: str | None = None  # "positive" | "neutral" | "negative" | provider's
    summary: str | None = None
    outcome: str | None = None  # e.g. a not-connected reason, a campaign row's outcome
    transcript: list[TranscriptTurn] | None = None
    transcript_url: str | None = None
    recording_url: str | None = None
    tool_name: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    reason: str | None = None  # escalation / pause reason
    # A session's channel as the provider names it (e.g. "voice"). Added within v1: an
    # event written before the field existed has none (read it as null).
    channel: str | None = None

    @property
    def subject_id(self) -> str | None:
        """The partition key on the canonical topic: one call's events stay in order."""
        return self.call_id or self.session_id or self.campaign_id or self.agent_id

    def to_dict(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.to_json())
        return parsed

    def to_json(self) -> bytes:
        return orjson.dumps(self)


def is_test(event: dict[str, Any]) -> bool:
    """Whether a canonical event (as parsed JSON) is a test delivery. An event written
    before the field existed has no ``test``: it is a real one."""
    return event.get("test") is True
