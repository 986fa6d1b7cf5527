"""Finished-call events → what the CRM is told (contact number, call properties)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import orjson
import pytest

from hookstream.sinks.crm.adapters import call_properties, webhook_document
from hookstream.sinks.crm.mapping import (
    FINISHED_TYPES,
    Unmappable,
    activity,
    applied,
    merge,
    normalize_phone,
    timestamp_ms,
)
from tests.fakes.crm import example


def props(*events: dict[str, Any]) -> dict[str, str]:
    record: dict[str, Any] | None = None
    for event in events:
        record = merge(record, activity(event))
    assert record is not None
    rendered: dict[str, str] = call_properties(record)
    return rendered


def ms(iso: str) -> str:
    """HubSpot's hs_timestamp form of an ISO time: UTC epoch milliseconds."""
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return str(round(when.timestamp() * 1000))


def test_timestamps_are_utc_epoch_milliseconds() -> None:
    assert timestamp_ms({"ended_at": "2025-05-01T10:05:15.000Z"}) == "1746093915000"
    assert timestamp_ms({"ended_at": "2025-05-01T13:05:15.250+03:00"}) == "1746093915250"
    assert timestamp_ms({"ended_at": "2025-05-01T10:05:15"}) == "1746093915000"  # no zone
    assert timestamp_ms({"ended_at": "yesterday", "started_at": "2025-05-01T10:00:00Z"}) \
        == "1746093600000"  # an unreadable time is skipped
    assert timestamp_ms({}) is None


def test_the_finished_types() -> None:
    assert FINISHED_TYPES == {"call.ended", "call.analyzed", "call.not_connected",
                              "session.ended"}


def test_sawt_call_ended() -> None:
    event = example("call.ended.sawt")
    act = activity(event)
    assert act.call_key == "sawt:call_123"
    assert act.event_id == event["event_id"]
    assert (act.raw_phone, act.phone) == ("966511111111", "+966511111111")
    p = call_properties(merge(None, act))
    assert p["hs_timestamp"] == ms("2025-05-01T10:05:15.000Z")
    assert p["hs_call_duration"] == "315000"
    assert p["hs_call_direction"] == "INBOUND"
    assert p["hs_call_status"] == "COMPLETED"
    assert p["hs_call_from_number"] == "+966511111111"
    assert "hs_call_to_number" not in p
    assert p["hs_call_title"] == "Sawt inbound call"
    assert p["hookstream_call_key"] == "sawt:call_123"
    assert "Hi, I need help with my order." in p["hs_call_body"]
    assert "<strong>customer:</strong>" in p["hs_call_body"]
    assert "hs_call_recording_url" not in p
    details = orjson.loads(p["hookstream_details"])
    assert details["event_ids"] == [event["event_id"]]
    assert details["types"] == ["call.ended"]


def test_sarj_complete() -> None:
    event = example("call.ended")
    act = activity(event)
    assert act.call_key == "sarj:call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
    assert act.phone == "+966512345678"
    p = call_properties(merge(None, act))
    assert p["hs_call_direction"] == "OUTBOUND"
    assert p["hs_call_to_number"] == "+966512345678"
    assert p["hs_call_duration"] == "47000"
    assert p["hs_call_status"] == "COMPLETED"
    # The signed URL expires: it is neither the property nor in the notes or details.
    assert "hs_call_recording_url" not in p
    assert "X-Goog" not in p["hs_call_body"] and "X-Goog" not in p["hookstream_details"]
    assert p["hs_timestamp"] == "1775989852000"  # 2026-04-12T10:30:52Z in epoch ms
    assert p["hs_call_title"] == "Sarj.ai outbound call"
    assert "أيوه أرسله" in p["hs_call_body"]
    assert "Recording:" not in p["hs_call_body"]


def test_only_an_archived_recording_location_is_stored() -> None:
    archived = "https://recordings.example.test/sarj/2026/04/call.wav?a=1&b=2"
    event = {**example("call.ended"), "recording_location": archived}
    p = call_properties(merge(None, activity(event)))
    assert p["hs_call_recording_url"] == archived
    # HTML-escaped: the URL's & must not break the markup
    assert "Recording:" in p["hs_call_body"] and "a=1&amp;b=2" in p["hs_call_body"]
    # An s3:// location is no link a CRM user can open: left out.
    event = {**example("call.ended"), "recording_location": "s3://recs/sarj/call.wav"}
    p = call_properties(merge(None, activity(event)))
    assert "hs_call_recording_url" not in p and "Recording:" not in p["hs_call_body"]
    assert "recording_location" not in orjson.loads(p["hookstream_details"])
    # A call record merged before this rule drops the expiring URL at its next write.
    old = {"call_key": "sarj:c", "recording_url": "https://storage.googleapis.com/x?sig=1"}
    assert "recording_url" not in merge(old, activity(example("call.ended")))


@pytest.mark.parametrize(("outcome", "status"), [
    ("no_answer", "NO_ANSWER"), ("user_rejected", "BUSY"), ("user_unavailable", "NO_ANSWER"),
    ("automation", "NO_ANSWER"), ("failed", "FAILED")])
def test_sarj_not_connected(outcome: str, status: str) -> None:
    event = example("call.not_connected", outcome=outcome, provider_type=outcome)
    act = activity(event)
    assert act.phone is None  # Sarj.ai's not-connected webhooks carry only the call id
    p = call_properties(merge(None, act))
    assert p["hs_call_status"] == status
    assert p["hs_call_title"] == f"Sarj.ai call not connected: {outcome.replace('_', ' ')}"
    assert f"<strong>Outcome:</strong> {outcome}" in p["hs_call_body"]
    assert p["hs_timestamp"] == ms(event["received_at"])  # the provider gives no time
    assert "hs_call_duration" not in p


def test_saaya_session_ended_without_a_number() -> None:
    event = example("session.ended")
    act = activity(event)
    assert act.call_key == "saaya:ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D"
    assert act.phone is None and act.raw_phone is None
    p = call_properties(merge(None, act))
    assert p["hs_call_status"] == "COMPLETED"
    assert p["hs_call_duration"] == "184320"
    assert p["hs_call_title"] == "Saaya voice session"
    assert "<strong>Sentiment:</strong> positive (+0.32)" in p["hs_call_body"]
    assert event["transcript_url"] in p["hs_call_body"]
    assert p["hs_timestamp"] == ms(event["received_at"])
    assert "hs_call_from_number" not in p and "hs_call_to_number" not in p


def test_saaya_session_ended_with_the_caller_number() -> None:
    event = example("session.ended", customer_number="+966 55 123 4567")
    assert activity(event).phone == "+966551234567"


def test_sawt_call_analyzed_alone() -> None:
    event = example("call.analyzed")
    act = activity(event)
    assert act.call_key == "sawt:call_123" and act.phone is None
    p = call_properties(merge(None, act))
    assert "hs_call_status" not in p  # not known until call.ended
    assert p["hs_timestamp"] == ms(event["received_at"])  # required on create
    assert "Summary:</strong> Customer called" in p["hs_call_body"]
    assert "<strong>Sentiment:</strong> positive" in p["hs_call_body"]


def test_ended_and_analyzed_merge_the_same_in_either_order() -> None:
    ended, analyzed = example("call.ended.sawt"), example("call.analyzed")
    one = props(ended, analyzed)
    other = props(analyzed, ended)
    assert one == other
    assert one["hs_timestamp"] == ms("2025-05-01T10:05:15.000Z")  # the end, not the analysis
    assert one["hs_call_status"] == "COMPLETED"
    assert "Summary:" in one["hs_call_body"] and "Transcript" in one["hs_call_body"]
    assert sorted(orjson.loads(one["hookstream_details"])["event_ids"]) == sorted(
        [ended["event_id"], analyzed["event_id"]])


def test_merge_is_order_independent_for_first_seen() -> None:
    a = example("call.ended.sawt", received_at="2026-05-05T16:53:21.000Z")
    b = example("call.analyzed", received_at="2026-05-05T16:53:20.000Z")
    for first, second in itertools.permutations([a, b]):
        record = merge(merge(None, activity(first)), activity(second))
        assert record["first_seen_at"] == "2026-05-05T16:53:20.000Z"


def test_applied_knows_folded_events() -> None:
    event = example("call.ended.sawt")
    record = merge(None, activity(event))
    assert applied(record, event["event_id"])
    assert not applied(record, "another")
    assert not applied(None, event["event_id"])


@pytest.mark.parametrize(("raw", "cc", "expected"), [
    ("+966512345678", "", "+966512345678"),
    ("966511111111", "", "+966511111111"),
    ("00966 51-111 1111", "", "+966511111111"),
    ("(055) 123-4567", "", None),  # national, no default country: no contact
    ("0551234567", "966", "+966551234567"),
    ("055 123 4567", "966", "+966551234567"),
    ("٠٥٥١٢٣٤٥٦٧", "966", "+966551234567"),  # Arabic-Indic digits
    ("0551234567", "999", None),  # no such calling code
    ("+9665", "", None),  # not a possible number
    ("+1 (415) 555-0100", "966", "+14155550100"),
    ("", "", None),
    ("abc", "", None),
    (None, "", None),
])
def test_normalize_phone(raw: str | None, cc: str, expected: str | None) -> None:
    assert normalize_phone(raw, cc) == expected


def test_unmappable_events() -> None:
    with pytest.raises(Unmappable):
        activity(example("call.ended.sawt", call_id=None))
    with pytest.raises(Unmappable):
        activity(example("call.ended.sawt", event_id=""))
    with pytest.raises(Unmappable):
        activity(example("call.started"))


def test_transcript_is_capped() -> None:
    turns = [{"role": "agent", "text": "x" * 60}, {"role": "customer", "text": "y" * 60}]
    act = activity(example("call.ended.sawt", transcript=turns), transcript_max_chars=100)
    kept = act.fields["transcript"]
    assert kept[0]["text"] == "x" * 60
    assert kept[1]["text"] == "y" * 40 + " [...]"
    assert len(kept) == 2


def test_webhook_document() -> None:
    event = example("call.ended")
    doc = webhook_document(activity(event))
    assert doc["schema"] == "hookstream.crm.call.v1"
    assert doc["event_id"] == event["event_id"]
    assert doc["call_key"] == "sarj:call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
    assert doc["contact"] == {"phone": "+966512345678", "raw_phone": "+966512345678"}
    assert doc["call"]["duration_s"] == 47.0
    assert "recording_url" not in doc["call"]
    assert doc["call"]["title"] == "Sarj.ai outbound call"
    assert doc["call"]["timestamp"] == "2026-04-12T10:30:52Z"
    assert "event_ids" not in doc["call"]
    assert webhook_document(activity(example("session.ended")))["contact"] is None


def test_fields_of_the_wrong_type_are_dropped() -> None:
    act = activity(example("call.ended.sawt", duration_s="315", sentiment=True,
                           summary=["not", "text"], direction=None))
    assert "duration_s" not in act.fields and "sentiment" not in act.fields
    assert "summary" not in act.fields and "direction" not in act.fields
    p = call_properties(merge(None, act))
    assert "hs_call_duration" not in p and "hs_call_direction" not in p
    assert activity(example("session.ended")).fields["duration_s"] == 184.32


@pytest.mark.parametrize(("duration_s", "expected"), [
    (47.5, "47500"), (47, "47000"), (0.0004, "0"), (-3, None), (None, None),
])
def test_any_json_number_duration_becomes_whole_milliseconds(
        duration_s: Any, expected: str | None) -> None:
    """Issue 13: Sarj.ai total_duration may be 47.5; HubSpot's hs_call_duration is whole,
    non-negative milliseconds, so it is rounded, and a negative one is left out."""
    p = props(example("call.ended", duration_s=duration_s))
    assert p.get("hs_call_duration") == expected
