"""The HubSpot-shaped and webhook adapters against the fake CRM (in process, no network)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from hookstream.sinks.crm.adapters import HubSpotAdapter, WebhookAdapter
from hookstream.sinks.crm.http import CRMRejected, CRMUnavailable
from hookstream.sinks.crm.mapping import activity
from hookstream.sinks.crm.settings import CRMSettings
from tests.fakes.crm import TOKEN, FakeCRM, TimeoutASGITransport, example

SETTINGS = CRMSettings(url="http://crm.test", token=TOKEN, webhook_url="http://crm.test/webhook",
                       timeout_s=0.3, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02,
                       rate_limit_per_10s=100000, search_rate_per_s=10000)


def hubspot(fake: FakeCRM, **overrides: Any) -> HubSpotAdapter:
    return HubSpotAdapter(dataclasses.replace(SETTINGS, **overrides),
                          transport=TimeoutASGITransport(fake.app))


async def log(adapter: HubSpotAdapter | WebhookAdapter, *events: dict[str, Any]) -> None:
    for event in events:
        await adapter.log_call(activity(event))


def details(call: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(call["properties"]["hookstream_details"])  # type: ignore[no-any-return]


async def test_sawt_call_ended_upserts_the_contact_and_logs_the_call() -> None:
    fake = FakeCRM()
    await log(hubspot(fake), example("call.ended.sawt"))
    [contact] = fake.contacts_with_phone("+966511111111")
    call = fake.call("sawt:call_123")
    assert call["properties"]["hs_call_duration"] == "315000"
    assert call["properties"]["hs_call_direction"] == "INBOUND"
    assert call["properties"]["hs_call_status"] == "COMPLETED"
    assert fake.contacts_of_call(call["id"]) == {contact["id"]}
    # consistent reads by the unique properties, one search for a hand-entered contact,
    # then batch upserts on the unique properties and one batch association
    assert fake.requests == {"contacts.batch_read": 1, "contacts.search": 1,
                             "contacts.batch_upsert": 1, "calls.batch_read": 1,
                             "calls.batch_upsert": 1, "associations.batch": 1}
    assert contact["properties"]["hookstream_phone_e164"] == "+966511111111"


async def test_each_finished_type_becomes_one_call() -> None:
    fake = FakeCRM()
    adapter = hubspot(fake)
    sarj = example("call.ended")
    no_answer = example("call.not_connected", outcome="no_answer", provider_type="no_answer",
                        call_id="call_na_1")
    saaya = example("session.ended")
    await log(adapter, sarj, no_answer, saaya)
    assert len(fake.calls) == 3
    done = fake.call(f"sarj:{sarj['call_id']}")
    assert "hs_call_recording_url" not in done["properties"]  # the signed URL expires
    [contact] = fake.contacts_with_phone("+966512345678")
    assert fake.contacts_of_call(done["id"]) == {contact["id"]}
    # no number: logged without a contact
    missed = fake.call("sarj:call_na_1")
    assert missed["properties"]["hs_call_status"] == "NO_ANSWER"
    assert fake.contacts_of_call(missed["id"]) == set()
    session = fake.call(f"saaya:{saaya['session_id']}")
    assert fake.contacts_of_call(session["id"]) == set()
    assert saaya["transcript_url"] in session["properties"]["hs_call_body"]
    assert len(fake.contacts) == 1


async def test_saaya_session_with_caller_number_gets_its_contact() -> None:
    fake = FakeCRM()
    await log(hubspot(fake), example("session.ended", customer_number="+966551234567"))
    [contact] = fake.contacts_with_phone("+966551234567")
    call = fake.call("saaya:ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D")
    assert fake.contacts_of_call(call["id"]) == {contact["id"]}


async def test_same_event_twice_is_one_activity() -> None:
    fake = FakeCRM()
    adapter = hubspot(fake)
    event = example("call.ended.sawt")
    await log(adapter, event)
    before = fake.snapshot()
    sent = sum(fake.requests.values())
    await log(adapter, event)  # cached: not a single request
    assert sum(fake.requests.values()) == sent
    assert fake.snapshot() == before
    adapter.forget()  # a fresh process: read back by the unique key, not written again
    await log(adapter, event)
    await log(hubspot(fake), event)
    assert fake.snapshot() == before
    assert fake.requests["calls.batch_upsert"] == 1
    assert fake.requests["contacts.batch_upsert"] == 1


@pytest.mark.parametrize("order", ["ended_first", "analyzed_first"])
async def test_ended_and_analyzed_end_in_one_activity(order: str) -> None:
    fake = FakeCRM()
    ended, analyzed = example("call.ended.sawt"), example("call.analyzed")
    events = [ended, analyzed] if order == "ended_first" else [analyzed, ended]
    await log(hubspot(fake), *events)
    call = fake.call("sawt:call_123")
    p = call["properties"]
    assert p["hs_call_status"] == "COMPLETED"
    assert p["hs_call_duration"] == "315000"
    assert p["hs_timestamp"] == "1746093915000"  # 2025-05-01T10:05:15.000Z, epoch ms
    assert "Summary:</strong> Customer called" in p["hs_call_body"]
    assert "<strong>Sentiment:</strong> positive" in p["hs_call_body"]
    assert "Hi, I need help with my order." in p["hs_call_body"]
    assert sorted(details(call)["event_ids"]) == sorted([ended["event_id"],
                                                         analyzed["event_id"]])
    assert len(fake.contacts_of_call(call["id"])) == 1
    # each order, in a fresh CRM with a fresh process each time, ends the same
    other = FakeCRM()
    for event in events:
        await log(hubspot(other), event)
    assert other.snapshot() == fake.snapshot()


async def test_both_orders_give_the_same_crm_state() -> None:
    ended, analyzed = example("call.ended.sawt"), example("call.analyzed")
    one, other = FakeCRM(), FakeCRM()
    await log(hubspot(one), ended, analyzed)
    await log(hubspot(other), analyzed, ended)
    assert one.snapshot() == other.snapshot()


async def test_an_existing_contact_is_found_by_the_number_as_sent() -> None:
    fake = FakeCRM()
    fake.contacts["7"] = {"id": "7", "createdAt": "2020-01-01T00:00:00Z",
                          "updatedAt": "2020-01-01T00:00:00Z",
                          "properties": {"phone": "966511111111", "firstname": "Khalid"}}
    await log(hubspot(fake), example("call.ended.sawt"))
    assert len(fake.contacts) == 1
    kept = fake.contacts["7"]["properties"]
    assert (kept["phone"], kept["firstname"]) == ("966511111111", "Khalid")  # as entered
    assert kept["hookstream_phone_e164"] == "+966511111111"  # adopted: found by read next
    assert fake.contacts_of_call(fake.call("sawt:call_123")["id"]) == {"7"}
    await log(hubspot(fake), example("call.ended.sawt", call_id="call_2"))
    assert fake.requests["contacts.search"] == 1 and len(fake.contacts) == 1


async def test_two_calls_from_one_number_share_the_contact() -> None:
    fake = FakeCRM()
    await log(hubspot(fake), example("call.ended.sawt"),
              example("call.ended.sawt", call_id="call_456"))
    adapter = hubspot(fake)
    await log(adapter, example("call.ended.sawt", call_id="call_789"))
    assert len(fake.contacts) == 1 and len(fake.calls) == 3
    assert len({contact for _, contact in fake.associations}) == 1


async def test_a_call_deleted_in_the_crm_is_logged_again() -> None:
    fake = FakeCRM()
    adapter = hubspot(fake)
    await log(adapter, example("call.ended.sawt"))
    fake.calls.clear()
    fake.associations.clear()
    await log(adapter, example("call.analyzed"))  # cached id now 404s: looked up afresh
    call = fake.call("sawt:call_123")
    assert "Summary:" in call["properties"]["hs_call_body"]


async def test_validation_error_is_a_rejection() -> None:
    fake = FakeCRM()
    fake.fail_next(1, 400, route="calls.batch_upsert")
    with pytest.raises(CRMRejected) as caught:
        await log(hubspot(fake), example("call.ended.sawt"))
    assert caught.value.status == 400
    assert fake.requests["calls.batch_upsert"] == 1  # not retried


async def test_a_bad_token_is_an_outage_not_a_rejection() -> None:
    fake = FakeCRM(token="another-token")
    with pytest.raises(CRMUnavailable):
        await log(hubspot(fake), example("call.ended.sawt"))
    assert fake.requests["contacts.batch_read"] == 3  # 1 + max_retries
    assert not fake.calls


async def test_webhook_adapter_posts_one_document_with_an_idempotency_key() -> None:
    fake = FakeCRM(webhook_token="hook-secret")
    adapter = WebhookAdapter(dataclasses.replace(SETTINGS, adapter="webhook",
                                                 webhook_token="hook-secret"),
                             transport=TimeoutASGITransport(fake.app))
    ended, analyzed = example("call.ended.sawt"), example("call.analyzed")
    await log(adapter, ended, analyzed, ended)
    assert [w["key"] for w in fake.webhooks] == [ended["event_id"], analyzed["event_id"],
                                                 ended["event_id"]]
    assert all(w["authorization"] == "Bearer hook-secret" for w in fake.webhooks)
    documents = fake.webhook_documents()
    assert len(documents) == 2
    assert documents[ended["event_id"]]["call_key"] == "sawt:call_123"
    assert documents[ended["event_id"]]["contact"]["phone"] == "+966511111111"
    assert documents[analyzed["event_id"]]["call"]["summary"].startswith("Customer called")
    assert not fake.calls  # the HubSpot endpoints are not touched


async def test_webhook_adapter_retries_5xx_with_the_same_key() -> None:
    fake = FakeCRM()
    fake.fail_next(2, 502, route="webhook")
    adapter = WebhookAdapter(dataclasses.replace(SETTINGS, adapter="webhook"),
                             transport=TimeoutASGITransport(fake.app))
    event = example("session.ended")
    await log(adapter, event)
    assert fake.requests["webhook"] == 3
    assert [w["key"] for w in fake.webhooks] == [event["event_id"]]
