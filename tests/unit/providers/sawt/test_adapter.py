"""Sawt adapter: routing key header or inference (every key), dedupe key, mapping."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from hookstream.core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, Invalid
from hookstream.core.events import CanonicalEvent, TranscriptTurn, event_id
from hookstream.core.record import RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.providers.sawt import adapter as sawt
from hookstream.providers.sawt.adapter import ADAPTER

REGISTRY = SchemaRegistry()
SAMPLES = list(samples("sawt"))
BODIES = {s.name: s.body for s in SAMPLES}
KEYS = ("call.initializing", "call.started", "call.updated", "call.ended", "call.analyzed",
        "tool.knowledge_base.failed", "tool.function.failed")


def raw(routing_key: str | None = None) -> RawDelivery:
    return RawDelivery(source="sawt-main", provider="sawt", received_at_ms=1_746_093_915_000,
                       request_id="req-sawt", body=b"", routing_key=routing_key)


def payload_of(name: str) -> dict[str, Any]:
    return orjson.loads(BODIES[name])


def run(name: str, routing_key: str | None = None) -> CanonicalEvent:
    delivery = raw(routing_key)
    payload = payload_of(name)
    event_type, version, inferred = ADAPTER.identify(delivery, payload)
    REGISTRY.validate("sawt", version, event_type, payload)
    key = ADAPTER.dedupe_key(event_type, payload)
    return ADAPTER.to_canonical(delivery, payload, event_type, version, inferred,
                                event_id("sawt", key))


def test_canonical_types() -> None:
    assert ADAPTER.canonical_types == {
        "call.initializing": "call.initializing", "call.started": "call.started",
        "call.updated": "call.updated", "call.ended": "call.ended",
        "call.analyzed": "call.analyzed",
        "tool.knowledge_base.failed": "tool.failed", "tool.function.failed": "tool.failed",
    }


def test_every_key_has_an_example() -> None:
    assert {s.event for s in SAMPLES} == set(KEYS)


# --- identify: inference -----------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_every_example_is_inferred_as_its_key_without_a_header(sample: Any) -> None:
    payload = orjson.loads(sample.body)
    assert ADAPTER.identify(raw(None), payload) == (sample.event, None, True)
    event = run(sample.name)
    assert event.type_inferred is True
    assert event.provider_type == sample.event


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_header_names_the_event(sample: Any) -> None:
    payload = orjson.loads(sample.body)
    assert ADAPTER.identify(raw(sample.event), payload) == (sample.event, None, False)
    assert run(sample.name, sample.event).type_inferred is False


def test_header_wins_over_the_shape() -> None:
    """A terminal call.updated looks like call.ended; the header says what it is."""
    payload = payload_of("call.ended")
    assert ADAPTER.identify(raw(None), payload)[0] == "call.ended"
    assert ADAPTER.identify(raw("call.updated"), payload) == ("call.updated", None, False)
    event = run("call.ended", "call.updated")
    assert (event.type, event.provider_type, event.type_inferred) == (
        "call.updated", "call.updated", False)
    assert event.status == "finished"


def test_header_whitespace_is_ignored_and_empty_means_absent() -> None:
    payload = payload_of("call.started")
    assert ADAPTER.identify(raw("  call.started \t"), payload) == ("call.started", None, False)
    assert ADAPTER.identify(raw(""), payload) == ("call.started", None, True)
    assert ADAPTER.identify(raw("   "), payload) == ("call.started", None, True)


@pytest.mark.parametrize("header", ["call.finished", "CALL.ENDED", "tool.failed", "x",
                                    "call.ended.v2"])
def test_unknown_routing_key_header_is_unknown_event_type(header: str) -> None:
    with pytest.raises(Invalid) as info:
        ADAPTER.identify(raw(header), payload_of("call.ended"))
    assert info.value.reason == UNKNOWN_EVENT_TYPE
    assert header in info.value.detail


BASE = {"call_id": "c1", "agent_id": "a1", "to_number": "966500000000",
        "from_number": "966511111111", "direction": "OUTBOUND"}


@pytest.mark.parametrize(("body", "expected"), [
    # rule 1: analysis fields
    ({"call_id": "c1", "call_summary": "s"}, "call.analyzed"),
    ({"call_id": "c1", "call_summary": "s", "user_sentiment": "NEGATIVE"}, "call.analyzed"),
    ({"call_id": "c1", "call_summary": "s", "structured_data_result": None}, "call.analyzed"),
    # rule 2: tool failures; the tool name decides, error_type alone does not
    ({"call_id": "c1", "tool_name": "knowledge_base", "error_message": "m"},
     "tool.knowledge_base.failed"),
    ({"call_id": "c1", "tool_name": "send_sms", "error_message": "m", "error_type": "TIMEOUT"},
     "tool.function.failed"),
    ({"call_id": "c1", "tool_name": "book", "error_message": "m"}, "tool.function.failed"),
    # rule 3: transitions
    ({**BASE, "call_status": "RINGING", "previous_call_status": "CALLING"}, "call.updated"),
    ({**BASE, "call_status": "IN_CALL", "previous_call_status": None}, "call.updated"),
    ({**BASE, "call_status": "IN_CALL", "call_start_timestamp": "2025-05-01T10:00:00Z"},
     "call.updated"),
    ({**BASE, "call_status": "FINISHED", "previous_call_status": "IN_CALL"}, "call.ended"),
    ({**BASE, "call_status": "no_answer", "previous_call_status": "RINGING"}, "call.ended"),
    ({**BASE, "call_status": "BUSY"}, "call.ended"),
    ({**BASE, "call_status": "CANCELLED", "previous_call_status": "CALLING"}, "call.ended"),
    ({**BASE, "call_status": "IN_CALL", "previous_call_status": "IN_CALL",
      "call_end_timestamp": "2025-05-01T10:05:00Z"}, "call.ended"),
    ({**BASE, "call_status": "IN_CALL", "previous_call_status": "IN_CALL",
      "transcript_object": []}, "call.ended"),
    # rule 4: initial events
    ({**BASE, "call_status": "RECEIVED_REQUEST_TO_AGENT"}, "call.initializing"),
    ({**BASE, "call_status": "RECEIVED_REQUEST_TO_AGENT", "agent_version": "v2"},
     "call.initializing"),
    ({**BASE, "call_status": "CALLING"}, "call.initializing"),
    ({**BASE, "call_status": "IN_CALL"}, "call.started"),
    ({**BASE, "call_status": "IN_CALL", "agent_version": "v2"}, "call.started"),
    ({**BASE, "call_status": "CALLING", "agent_version": "v2"}, "call.started"),
])
def test_inference_rules(body: dict[str, Any], expected: str) -> None:
    assert sawt.infer(body) == expected
    assert ADAPTER.identify(raw(None), body) == (expected, None, True)
    # The inferred key names a schema the body is valid against.
    REGISTRY.validate("sawt", None, expected, body)


def test_tool_failure_without_tool_name_falls_back_on_error_type() -> None:
    assert sawt.infer({"call_id": "c", "error_type": "NO_RESULTS", "error_message": "m"}) == (
        "tool.knowledge_base.failed")
    assert sawt.infer({"call_id": "c", "error_message": "m"}) == "tool.function.failed"


# --- dedupe ------------------------------------------------------------------------


def digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_dedupe_key_parts(sample: Any) -> None:
    """``call_id``, the event name, then the SHA-256 of the canonical JSON."""
    payload = orjson.loads(sample.body)
    key = ADAPTER.dedupe_key(sample.event, payload)
    assert key == "\x1f".join([payload["call_id"], sample.event, digest(payload)])
    assert key.split("\x1f")[2] == sawt.content_digest(payload)


def test_dedupe_key_is_the_same_for_the_same_content() -> None:
    """A redelivery: the same bytes, or the same JSON re-serialised (key order,
    whitespace), is the same event."""
    body = BODIES["call.updated"]
    key = ADAPTER.dedupe_key("call.updated", orjson.loads(body))
    assert ADAPTER.dedupe_key("call.updated", orjson.loads(bytes(body))) == key
    shuffled = dict(reversed(list(orjson.loads(body).items())))
    assert ADAPTER.dedupe_key("call.updated", shuffled) == key
    spaced = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    assert spaced != body and ADAPTER.dedupe_key("call.updated", orjson.loads(spaced)) == key
    nested = payload_of("call.ended")
    turns = [dict(reversed(list(t.items()))) for t in nested["transcript_object"]]
    assert ADAPTER.dedupe_key("call.ended", nested | {"transcript_object": turns}) == (
        ADAPTER.dedupe_key("call.ended", nested))


def test_a_repeated_transition_is_a_new_event() -> None:
    """Issue 13: X->Y, Y->X, X->Y again: the second X->Y differs from the first in what
    it reports (duration, cost), so it is an event of its own, not a duplicate."""
    first = payload_of("call.updated")
    back = first | {"previous_call_status": "IN_CALL", "call_status": "ON_HOLD",
                    "duration_s": 60, "call_cost": 1.5}
    again = first | {"previous_call_status": "ON_HOLD", "duration_s": 75}
    keys = {ADAPTER.dedupe_key("call.updated", p) for p in (first, back, again)}
    assert len(keys) == 3


@pytest.mark.parametrize("change", [
    {"call_status": "RINGING"}, {"previous_call_status": "RINGING"},
    {"call_start_timestamp": "2025-05-01T10:00:01.000Z"},
    {"call_end_timestamp": "2025-05-01T10:09:00.000Z"}, {"call_id": "call_124"},
    {"transcript_object": []}, {"duration_s": 43}, {"call_cost": 1.16},
    {"agent_version": "v3"}, {"duration_s": 42.0}, {"unknown_field": None},
])
def test_dedupe_key_differs_for_any_other_content(change: dict[str, Any]) -> None:
    payload = payload_of("call.updated")
    assert ADAPTER.dedupe_key("call.updated", payload) != ADAPTER.dedupe_key(
        "call.updated", payload | change)


def test_dedupe_key_of_an_analysis_follows_its_content() -> None:
    analysis = payload_of("call.analyzed")
    key = ADAPTER.dedupe_key("call.analyzed", analysis)
    assert ADAPTER.dedupe_key("call.analyzed", dict(analysis)) == key
    assert ADAPTER.dedupe_key("call.analyzed", analysis | {"call_evaluation": False}) != key


def test_dedupe_key_differs_per_event_name_and_tool_failure() -> None:
    body = payload_of("call.started")
    assert ADAPTER.dedupe_key("call.started", body) != ADAPTER.dedupe_key(
        "call.initializing", body)
    tool = payload_of("tool.function.failed")
    key = ADAPTER.dedupe_key("tool.function.failed", tool)
    for change in ({"timestamp": "2025-05-01T10:03:45.000Z"}, {"tool_name": "other"},
                   {"error_message": "other"}, {"error_type": "X"}):
        assert ADAPTER.dedupe_key("tool.function.failed", tool | change) != key


def test_separator_cannot_be_confused() -> None:
    a = {"call_id": "c", "call_status": "A", "previous_call_status": "B:C"}
    b = {"call_id": "c", "call_status": "A:B", "previous_call_status": "C"}
    assert ADAPTER.dedupe_key("call.updated", a) != ADAPTER.dedupe_key("call.updated", b)
    c = {"call_id": "c\x1fcall.updated", "call_status": "A"}
    assert ADAPTER.dedupe_key("call.updated", c) != ADAPTER.dedupe_key(
        "call.updated", {"call_id": "c", "call_status": "A"})


def test_dedupe_key_of_an_unserialisable_payload_is_mapping_failed() -> None:
    """A payload nested deeper than orjson writes (the decoder's depth cap keeps real
    bodies far from it) dead-letters as ``mapping_failed`` rather than raising."""
    deep: dict[str, Any] = {"call_id": "c", "call_status": "IN_CALL"}
    node = deep
    for _ in range(300):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(Invalid) as info:
        ADAPTER.dedupe_key("call.updated", deep)
    assert info.value.reason == MAPPING_FAILED


def test_all_example_keys_distinct() -> None:
    keys = {ADAPTER.dedupe_key(s.event, orjson.loads(s.body)) for s in SAMPLES}
    assert len(keys) == len(SAMPLES) == 9


# --- mapping -----------------------------------------------------------------------


def test_call_ended_inbound() -> None:
    event = run("call.ended")
    assert (event.type, event.provider_type) == ("call.ended", "call.ended")
    assert event.provider == "sawt" and event.provider_version is None
    assert event.call_id == "call_123" and event.agent_id == "agent_456"
    assert event.status == "finished" and event.previous_status == "in_call"
    assert event.direction == "inbound"
    assert event.customer_number == "966511111111"  # from_number on inbound calls
    assert event.started_at == "2025-05-01T10:00:00.000Z"
    assert event.ended_at == event.occurred_at == "2025-05-01T10:05:15.000Z"
    assert event.duration_s == 315
    assert event.cost == 8.75 and event.cost_currency is None
    assert event.transcript == [
        TranscriptTurn("agent", "Hello, thanks for calling."),
        TranscriptTurn("customer", "Hi, I need help with my order."),
    ]
    assert event.received_at == "2025-05-01T10:05:15.000Z"
    assert event.subject_id == "call_123"


def test_call_ended_outbound() -> None:
    event = run("call.ended.2")
    assert event.direction == "outbound"
    assert event.customer_number == "966553418720"  # to_number on outbound calls
    assert [t.role for t in event.transcript or []] == ["agent", "customer", "agent", "customer"]
    assert (event.transcript or [])[1].text == "وعليكم السلام، ممكن نأجله للأسبوع الجاي؟"
    assert event.duration_s == 158 and event.cost == 4.4
    assert event.occurred_at == "2026-05-06T13:23:47.058Z"


def test_call_updated() -> None:
    event = run("call.updated")
    assert event.type == "call.updated"
    assert (event.previous_status, event.status) == ("calling", "in_call")
    # call_start_timestamp is when the call started, the same on every update: not the
    # time of this transition, which the document does not give.
    assert event.occurred_at is None
    assert event.started_at == "2025-05-01T10:00:00.000Z"
    assert event.received_at == "2025-05-01T10:05:15.000Z"
    assert event.ended_at is None
    assert event.duration_s == 42 and event.cost == 1.15
    assert event.transcript is None


def test_call_updated_before_start_has_no_occurred_at() -> None:
    event = run("call.updated.2")
    assert (event.previous_status, event.status) == ("calling", "ringing")
    assert event.occurred_at is None and event.started_at is None
    assert event.duration_s == 0 and event.cost == 0


def test_call_initializing_and_started() -> None:
    init, started = run("call.initializing"), run("call.started")
    assert init.type == "call.initializing" and init.status == "received_request_to_agent"
    assert init.direction == "inbound" and init.customer_number == "966511111111"
    assert init.occurred_at is None
    assert started.type == "call.started" and started.status == "in_call"
    assert started.direction == "outbound" and started.customer_number == "966500000000"
    assert started.previous_status is None


def test_call_analyzed() -> None:
    event = run("call.analyzed")
    assert event.type == "call.analyzed"
    assert event.summary is not None and event.summary.startswith(
        "Customer called to inquire about their recent order status.")
    assert event.sentiment_label == "positive"
    assert event.sentiment is None
    assert event.occurred_at is None
    assert event.data["structured_data_result"] == {"testData": "1234"}


def test_tool_failures() -> None:
    kb, fn = run("tool.knowledge_base.failed"), run("tool.function.failed")
    assert kb.type == fn.type == "tool.failed"
    assert kb.provider_type == "tool.knowledge_base.failed"
    assert fn.provider_type == "tool.function.failed"
    assert kb.tool_name == "knowledge_base" and fn.tool_name == "send_sms"
    assert kb.error_code == "NO_RESULTS" and fn.error_code is None
    assert kb.error_message == "No articles matched query"
    assert fn.error_message == "Internal API timeout"
    assert kb.occurred_at == "2025-05-01T10:02:05.000Z"
    assert fn.occurred_at == "2025-05-01T10:03:44.000Z"
    assert kb.call_id == "call_123" and kb.agent_id == "agent_456"


def test_unknown_direction_gives_no_customer_number() -> None:
    payload = payload_of("call.started") | {"direction": "INTERNAL"}
    event = ADAPTER.to_canonical(raw(), payload, "call.started", None, False, "id")
    assert event.direction == "internal" and event.customer_number is None


def test_other_transcript_roles_are_lower_cased() -> None:
    payload = payload_of("call.ended") | {"transcript_object": [
        {"role": "SYSTEM", "text": "transferred"}, {"text": "no role"}, {"role": "AGENT"}]}
    event = ADAPTER.to_canonical(raw(), payload, "call.ended", None, False, "id")
    assert event.transcript == [TranscriptTurn("system", "transferred"),
                                TranscriptTurn("unknown", "no role"), TranscriptTurn("agent", "")]


def test_transcript_entry_not_an_object_is_mapping_failed() -> None:
    payload = payload_of("call.ended") | {"transcript_object": ["hello"]}
    with pytest.raises(Invalid) as info:
        ADAPTER.to_canonical(raw(), payload, "call.ended", None, False, "id")
    assert info.value.reason == MAPPING_FAILED
