"""Sarj.ai adapter: payload.type, dedupe on call_id + type, complete and not-connected mapping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hookstream.core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, Invalid
from hookstream.core.events import CanonicalEvent, TranscriptTurn, event_id
from hookstream.core.record import RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.providers.sarj.adapter import ADAPTER

REGISTRY = SchemaRegistry()
SAMPLES = list(samples("sarj"))
BODIES = {s.name: s.body for s in SAMPLES}
RAW = RawDelivery(source="sarj-main", provider="sarj", received_at_ms=1_775_989_853_500,
                  request_id="req-sarj", body=b"")
NOT_CONNECTED = ["no_answer", "user_rejected", "user_unavailable", "automation", "failed"]


def payload_of(name: str) -> dict[str, Any]:
    return orjson.loads(BODIES[name])


def run(name: str) -> CanonicalEvent:
    payload = payload_of(name)
    event_type, version, inferred = ADAPTER.identify(RAW, payload)
    REGISTRY.validate("sarj", version, event_type, payload)
    key = ADAPTER.dedupe_key(event_type, payload)
    return ADAPTER.to_canonical(RAW, payload, event_type, version, inferred,
                                event_id("sarj", key))


def test_canonical_types() -> None:
    assert ADAPTER.canonical_types == {
        "complete": "call.ended", "no_answer": "call.not_connected",
        "user_rejected": "call.not_connected", "user_unavailable": "call.not_connected",
        "automation": "call.not_connected", "failed": "call.not_connected",
    }


# --- identify ----------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_identify_reads_payload_type(sample: Any) -> None:
    assert ADAPTER.identify(RAW, orjson.loads(sample.body)) == (sample.event, None, False)


@pytest.mark.parametrize("body", [
    {"call_id": "c"},
    {"call_id": "c", "payload": None},
    {"call_id": "c", "payload": "complete"},
    {"call_id": "c", "payload": {}},
    {"call_id": "c", "payload": {"type": 3}},
    {"call_id": "c", "payload": {"type": ""}},
])
def test_missing_payload_type_is_unknown_event_type(body: dict[str, Any]) -> None:
    with pytest.raises(Invalid) as info:
        ADAPTER.identify(RAW, body)
    assert info.value.reason == UNKNOWN_EVENT_TYPE


def test_unknown_payload_type_is_rejected_by_the_registry() -> None:
    body = {"call_id": "c", "payload": {"type": "voicemail_left"}}
    event_type, version, _ = ADAPTER.identify(RAW, body)
    with pytest.raises(Invalid) as info:
        REGISTRY.validate("sarj", version, event_type, body)
    assert info.value.reason == UNKNOWN_EVENT_TYPE


# --- dedupe ------------------------------------------------------------------------


def test_dedupe_key_is_call_id_and_type() -> None:
    assert ADAPTER.dedupe_key("complete", payload_of("complete")) == (
        "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b:complete")
    assert ADAPTER.dedupe_key("no_answer", payload_of("no_answer")) == (
        "call_3c1e7a92-0b4d-4e8f-9a2c-6d5b8e1f0a34:no_answer")


def test_redelivery_with_a_fresh_recording_url_is_the_same_event() -> None:
    """Retries may carry a re-signed recording URL; the call is still the same event."""
    first = payload_of("complete")
    retry = payload_of("complete")
    retry["payload"]["call_data"]["recording_url"] = "https://storage.example/x.wav?sig=new"
    assert ADAPTER.dedupe_key("complete", first) == ADAPTER.dedupe_key("complete", retry)
    assert run("complete").event_id == event_id("sarj", ADAPTER.dedupe_key("complete", retry))


def test_test_webhook_dedupes_like_any_complete() -> None:
    body = payload_of("complete.test_webhook")
    assert ADAPTER.identify(RAW, body) == ("complete", None, False)
    assert ADAPTER.dedupe_key("complete", body) == (
        "call_00000000-7e57-4b1d-9a0c-d45b0a4d7e57:complete")


def test_dedupe_without_call_id_is_mapping_failed() -> None:
    with pytest.raises(Invalid) as info:
        ADAPTER.dedupe_key("no_answer", {"payload": {"type": "no_answer"}})
    assert info.value.reason == MAPPING_FAILED


def test_all_example_keys_distinct() -> None:
    keys = {ADAPTER.dedupe_key(s.event, orjson.loads(s.body)) for s in SAMPLES}
    assert len(keys) == len(SAMPLES) == 7


# --- mapping -----------------------------------------------------------------------


def test_complete_is_call_ended() -> None:
    event = run("complete")
    assert (event.type, event.provider_type) == ("call.ended", "complete")
    assert event.provider == "sarj" and event.provider_version is None
    assert event.type_inferred is False
    assert event.call_id == "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
    assert event.agent_id is None
    assert event.status == "completed" and event.direction == "outbound"
    assert event.customer_number == "+966512345678"
    assert event.started_at == "2026-04-12T10:30:05Z"
    assert event.ended_at == event.occurred_at == "2026-04-12T10:30:52Z"
    assert event.duration_s == 47
    assert event.recording_url is not None and event.recording_url.startswith(
        "https://storage.googleapis.com/sarj-recordings-prod/org_4412/"
        "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b.wav?")
    assert event.outcome is None
    transcript = event.transcript or []
    assert [t.role for t in transcript] == ["agent", "customer", "agent", "customer", "agent"]
    assert transcript[1] == TranscriptTurn("customer", "إيه نعم، أنا خالد.")
    assert event.received_at == "2026-04-12T10:30:53.500Z"
    assert event.data["payload"]["call_data"]["report"]["intent"] == "will_pay"


def test_test_webhook_maps_like_a_complete() -> None:
    event = run("complete.test_webhook")
    assert event.type == "call.ended"
    assert event.call_id == "call_00000000-7e57-4b1d-9a0c-d45b0a4d7e57"
    assert event.duration_s == 12
    assert event.transcript == [TranscriptTurn("agent", "Hello, this is a test call from Sarj.ai."),
                                TranscriptTurn("customer", "Test received.")]


@pytest.mark.parametrize("kind", NOT_CONNECTED)
def test_not_connected(kind: str) -> None:
    event = run(kind)
    assert (event.type, event.provider_type, event.outcome) == ("call.not_connected", kind, kind)
    assert event.call_id == orjson.loads(BODIES[kind])["call_id"]
    assert event.occurred_at is None and event.transcript is None
    assert event.status is None and event.recording_url is None and event.duration_s is None


def test_transcript_text_from_content_or_text() -> None:
    payload = payload_of("complete")
    payload["payload"]["call_data"]["enhanced_transcript"]["transcript"]["messages"] = [
        {"role": "assistant", "text": "from text"},
        {"role": "user", "content": [{"type": "text", "text": "part one, "},
                                     {"type": "text", "text": "part two"}]},
        {"role": "system", "content": "system note"},
        {"role": "User", "content": None},
        {"role": "assistant", "content": None, "text": "text beside a null content"},
        {"role": None, "content": "no role"},
    ]
    REGISTRY.validate("sarj", None, "complete", payload)
    event = ADAPTER.to_canonical(RAW, payload, "complete", None, False, "id")
    assert event.transcript == [
        TranscriptTurn("agent", "from text"),
        TranscriptTurn("customer", "part one, part two"),
        TranscriptTurn("system", "system note"),
        TranscriptTurn("customer", ""),
        TranscriptTurn("agent", "text beside a null content"),
        TranscriptTurn("unknown", "no role"),
    ]


def test_complete_without_transcript_or_times() -> None:
    payload = {"call_id": "c1", "payload": {"type": "complete", "call_data": {},
                                            "call_started": "2026-04-12T10:30:05Z"}}
    REGISTRY.validate("sarj", None, "complete", payload)
    event = ADAPTER.to_canonical(RAW, payload, "complete", None, False, "id")
    assert event.transcript is None and event.occurred_at is None
    assert event.started_at == "2026-04-12T10:30:05Z"  # falls back to payload.call_started


def test_message_not_an_object_is_mapping_failed() -> None:
    payload = payload_of("complete")
    payload["payload"]["call_data"]["enhanced_transcript"]["transcript"]["messages"] = ["hi"]
    with pytest.raises(Invalid) as info:
        ADAPTER.to_canonical(RAW, payload, "complete", None, False, "id")
    assert info.value.reason == MAPPING_FAILED


def test_total_duration_may_be_any_number() -> None:
    """Issue 13: the document's 47 is not a promise of whole seconds; 47.5 is passed on
    as is (the warehouse column is double precision, the CRM rounds to milliseconds)."""
    payload = payload_of("complete")
    payload["payload"]["call_data"]["total_duration"] = 47.5
    REGISTRY.validate("sarj", None, "complete", payload)
    event = ADAPTER.to_canonical(RAW, payload, "complete", None, False, "id")
    assert event.duration_s == 47.5
    assert orjson.loads(event.to_json())["duration_s"] == 47.5
