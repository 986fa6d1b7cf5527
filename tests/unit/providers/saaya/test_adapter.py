"""Saaya adapter: identify (type, version), dedupe on the envelope id, mapping of all 17 types."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hookstream.core.errors import (
    MAPPING_FAILED,
    UNKNOWN_EVENT_TYPE,
    UNKNOWN_VERSION,
    Invalid,
)
from hookstream.core.events import CanonicalEvent, event_id
from hookstream.core.record import RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.providers.saaya import adapter as saaya
from hookstream.providers.saaya.adapter import ADAPTER

REGISTRY = SchemaRegistry()
BODIES = {s.name: s.body for s in samples("saaya")}
RAW = RawDelivery(source="saaya-main", provider="saaya", received_at_ms=1_777_284_900_000,
                  request_id="req-saaya", body=b"")


def payload_of(name: str) -> dict[str, Any]:
    return orjson.loads(BODIES[name])


def run(name: str) -> CanonicalEvent:
    payload = payload_of(name)
    event_type, version, inferred = ADAPTER.identify(RAW, payload)
    REGISTRY.validate("saaya", version, event_type, payload)
    key = ADAPTER.dedupe_key(event_type, payload)
    return ADAPTER.to_canonical(RAW, payload, event_type, version, inferred,
                                event_id("saaya", key))


# --- identify ----------------------------------------------------------------------


def test_identify_reads_type_and_version() -> None:
    assert ADAPTER.identify(RAW, payload_of("session.ended")) == (
        "session.ended", "2026-04-01", False)


@pytest.mark.parametrize("bad", [None, 3, "", ["session.ended"]])
def test_missing_or_non_string_type_is_unknown_event_type(bad: Any) -> None:
    payload = payload_of("session.ended")
    if bad is None:
        del payload["type"]
    else:
        payload["type"] = bad
    with pytest.raises(Invalid) as info:
        ADAPTER.identify(RAW, payload)
    assert info.value.reason == UNKNOWN_EVENT_TYPE
    assert "type" in info.value.detail


@pytest.mark.parametrize("bad", [None, 20260401, ""])
def test_missing_or_non_string_version_is_unknown_version(bad: Any) -> None:
    payload = payload_of("session.ended")
    if bad is None:
        del payload["version"]
    else:
        payload["version"] = bad
    with pytest.raises(Invalid) as info:
        ADAPTER.identify(RAW, payload)
    assert info.value.reason == UNKNOWN_VERSION
    assert "version" in info.value.detail


def test_unknown_type_of_a_known_version_is_unknown_event_type() -> None:
    payload = payload_of("session.ended") | {"type": "session.transferred"}
    event_type, version, _ = ADAPTER.identify(RAW, payload)
    with pytest.raises(Invalid) as info:
        REGISTRY.validate("saaya", version, event_type, payload)
    assert info.value.reason == UNKNOWN_EVENT_TYPE


def test_unconfigured_version_is_unknown_version() -> None:
    payload = payload_of("session.ended") | {"version": "2027-01-01"}
    event_type, version, _ = ADAPTER.identify(RAW, payload)
    with pytest.raises(Invalid) as info:
        REGISTRY.validate("saaya", version, event_type, payload)
    assert info.value.reason == UNKNOWN_VERSION


# --- dedupe ------------------------------------------------------------------------


def test_dedupe_key_is_the_envelope_id() -> None:
    payload = payload_of("session.ended")
    assert ADAPTER.dedupe_key("session.ended", payload) == "evt_2N3rHv7Lm4"
    # A redelivery is the same event even if Saaya re-serialised it differently.
    redelivered = payload | {"data": dict(reversed(list(payload["data"].items())))}
    assert ADAPTER.dedupe_key("session.ended", redelivered) == "evt_2N3rHv7Lm4"


def test_dedupe_without_id_is_mapping_failed() -> None:
    payload = payload_of("session.ended")
    del payload["id"]
    with pytest.raises(Invalid) as info:
        ADAPTER.dedupe_key("session.ended", payload)
    assert info.value.reason == MAPPING_FAILED


def test_every_example_has_its_own_key() -> None:
    keys = [ADAPTER.dedupe_key(orjson.loads(b)["type"], orjson.loads(b)) for b in BODIES.values()]
    assert len(set(keys)) == len(BODIES) == 18


# --- mapping -----------------------------------------------------------------------


def test_canonical_types_cover_all_17() -> None:
    assert ADAPTER.canonical_types == {
        "session.started": "session.started", "session.ended": "session.ended",
        "session.errored": "session.errored", "session.escalated": "session.escalated",
        "tool.called": "tool.called", "tool.errored": "tool.failed",
        "agent.created": "agent.created", "agent.updated": "agent.updated",
        "agent.published": "agent.published", "agent.rolledback": "agent.rolled_back",
        "campaign.created": "campaign.created", "campaign.started": "campaign.started",
        "campaign.paused": "campaign.paused",
        "campaign.row.completed": "campaign.row.completed",
        "campaign.completed": "campaign.completed",
        "kb.upload.completed": "kb.upload.completed", "kb.upload.failed": "kb.upload.failed",
    }


def test_envelope_fields() -> None:
    event = run("session.ended")
    assert event.event_id == event_id("saaya", "evt_2N3rHv7Lm4")
    assert event.provider == "saaya"
    assert event.source == "saaya-main"
    assert event.request_id == "req-saaya"
    assert event.type == event.provider_type == "session.ended"
    assert event.provider_version == "2026-04-01"
    assert event.type_inferred is False
    assert event.received_at == "2026-04-27T10:15:00.000Z"
    assert event.occurred_at == "2026-04-27T10:14:31Z"
    assert event.data == payload_of("session.ended")


def test_session_ended() -> None:
    event = run("session.ended")
    assert event.session_id == "ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D"
    assert event.agent_id == "agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A"
    assert event.call_id is None and event.campaign_id is None
    assert event.duration_s == 184.32
    assert event.cost == 0.0184 and event.cost_currency == "USD"
    assert event.sentiment == 0.32 and event.sentiment_label == "positive"
    assert event.transcript_url == (
        "https://api.saaya.ai/api/v1/sessions/ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D/transcript")
    assert event.transcript is None
    assert event.subject_id == "ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D"


def test_session_started_customer_number_from_metadata() -> None:
    event = run("session.started")
    assert event.type == "session.started"
    assert event.customer_number == "+966551234567"
    assert event.occurred_at == "2026-04-27T10:11:26Z"
    assert event.duration_s is None and event.cost is None and event.sentiment is None


def test_session_errored() -> None:
    event = run("session.errored")
    assert event.type == "session.errored"
    assert event.session_id == "ses_01HWB9D4T1R8K2M6X0Q3V7NP5E"
    assert event.error_code == "llm_upstream_timeout"
    assert event.error_message == "Language model did not respond within 15000 ms"
    assert event.duration_s == 51.87


def test_session_escalated_reason() -> None:
    event = run("session.escalated")
    assert event.type == "session.escalated"
    assert event.reason == "Customer asked to speak with a human agent about a billing dispute"


def test_tool_called() -> None:
    event = run("tool.called")
    assert (event.type, event.provider_type) == ("tool.called", "tool.called")
    assert event.tool_name == "lookup_order"
    assert event.duration_s == 0.412
    assert event.error_code is None


def test_tool_errored_is_tool_failed() -> None:
    event = run("tool.errored")
    assert (event.type, event.provider_type) == ("tool.failed", "tool.errored")
    assert event.session_id == "ses_01HWBC6N0J3W9Y5H1P8S2F4KQA"
    assert event.tool_name == "create_refund"
    assert event.error_code == "http_503"
    assert event.error_message.startswith("POST https://erp.example-retail.sa/api/refunds")
    assert event.duration_s == 9.284


@pytest.mark.parametrize(("name", "canonical"), [
    ("agent.created", "agent.created"), ("agent.updated", "agent.updated"),
    ("agent.published", "agent.published"), ("agent.rolledback", "agent.rolled_back"),
])
def test_agent_events(name: str, canonical: str) -> None:
    event = run(name)
    assert (event.type, event.provider_type) == (canonical, name)
    assert event.agent_id == "agt_01HWD3M7P2Q9R4S8T1V5X0Z6AB"
    assert event.subject_id == "agt_01HWD3M7P2Q9R4S8T1V5X0Z6AB"
    assert event.session_id is None and event.campaign_id is None


def test_campaign_paused_reasons() -> None:
    budget, manual = run("campaign.paused"), run("campaign.paused.2")
    assert budget.type == manual.type == "campaign.paused"
    assert budget.reason == "budget_alert" and manual.reason == "manual"
    assert budget.campaign_id == "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"
    assert manual.campaign_id == "cmp_01HWG5K1M3P5R7T9V1X3Z5B7DF"


def test_campaign_row_completed() -> None:
    event = run("campaign.row.completed")
    assert event.type == "campaign.row.completed"
    assert event.campaign_id == "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"
    assert event.session_id == "ses_01HWH0R2T4V6X8Z0B2D4F6H8JK"
    assert event.outcome == "completed"
    assert event.duration_s == 96.41


def test_campaign_completed_cost() -> None:
    event = run("campaign.completed")
    assert event.type == "campaign.completed"
    assert event.cost == 61.37 and event.cost_currency == "USD"
    assert event.outcome is None


@pytest.mark.parametrize("name", ["campaign.created", "campaign.started"])
def test_campaign_lifecycle(name: str) -> None:
    event = run(name)
    assert event.type == name
    assert event.campaign_id == "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"
    assert event.agent_id == "agt_01HV2K8D5RS1N7Q4T9X3M6CW0B"
    assert event.subject_id == "cmp_01HWF2A8C4E6G0J3L5N7Q9S1TU"


def test_kb_uploads() -> None:
    done, failed = run("kb.upload.completed"), run("kb.upload.failed")
    assert done.type == "kb.upload.completed" and done.error_code is None
    assert failed.type == "kb.upload.failed"
    assert failed.error_code == "file_too_large"
    assert failed.error_message == "File exceeds the 15 MB upload limit"
    assert failed.data["data"]["stage"] == "validation"
    assert done.occurred_at == "2026-04-30T07:18:29Z"


@pytest.mark.parametrize(("score", "label"), [
    (-1.0, "negative"), (-0.26, "negative"), (-0.25, "neutral"), (0.0, "neutral"),
    (0.25, "neutral"), (0.2501, "positive"), (1.0, "positive"),
])
def test_sentiment_label_thresholds(score: float, label: str) -> None:
    assert saaya.sentiment_label(score) == label
    payload = payload_of("session.ended")
    payload["data"]["sentiment"]["avg"] = score
    event = ADAPTER.to_canonical(RAW, payload, "session.ended", "2026-04-01", False, "id")
    assert (event.sentiment, event.sentiment_label) == (score, label)


def test_optional_fields_absent_give_nulls() -> None:
    payload = {"id": "evt_1", "type": "session.ended", "version": "2026-04-01",
               "data": {"sessionId": "ses_1"}, "createdAt": "2026-04-27T10:14:31Z"}
    REGISTRY.validate("saaya", "2026-04-01", "session.ended", payload)
    event = ADAPTER.to_canonical(RAW, payload, "session.ended", "2026-04-01", False, "id")
    assert event.session_id == "ses_1"
    assert event.duration_s is None and event.cost is None and event.cost_currency is None
    assert event.sentiment is None and event.sentiment_label is None
    assert event.transcript_url is None and event.agent_id is None


@pytest.mark.parametrize("score", [-3, 1.5, 72, -100.25])
def test_sentiment_outside_minus_one_to_one_is_kept_without_a_label(score: float) -> None:
    """Issue 13: the document states no range for sentiment. A score outside [-1, 1]
    validates and is passed on as sent; the label, whose thresholds assume [-1, 1],
    is left null rather than guessed on an unknown scale."""
    payload = payload_of("session.ended")
    payload["data"]["sentiment"] = {"avg": score, "min": score, "max": score}
    REGISTRY.validate("saaya", "2026-04-01", "session.ended", payload)
    event = ADAPTER.to_canonical(RAW, payload, "session.ended", "2026-04-01", False, "id")
    assert event.sentiment == score and event.sentiment_label is None
    assert saaya.sentiment_label(score) is None


def test_fractional_durations_and_counts_validate() -> None:
    payload = payload_of("campaign.row.completed")
    payload["data"].update(durationMs=1234.5, attempts=2.0)
    REGISTRY.validate("saaya", "2026-04-01", "campaign.row.completed", payload)
    event = ADAPTER.to_canonical(RAW, payload, "campaign.row.completed", "2026-04-01", False,
                                 "id")
    assert event.duration_s == 1.2345
