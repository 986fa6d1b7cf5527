"""The CRM sink against the real broker, with the fake CRM served on loopback.

Canonical events are produced onto a fresh events topic; the real ``SinkRunner``
runs the ``CRMSink`` in this event loop with its own consumer group; the fake
CRM (tests/fakes/crm.py; the real CRM is a third-party SaaS) is checked for the
contacts, calls and associations it ends up holding. Redeliveries, 429 storms,
500s and an outage long enough to open the circuit all end in the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from hookstream.core import dlq, topics
from hookstream.core.config import KafkaSettings, load
from hookstream.core.headers import H_ATTEMPT, H_NOT_BEFORE
from hookstream.core.kafka import end_offsets, make_consumer, make_producer, topic_partitions
from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.sink import CRMSink
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics
from hookstream.sinks.runner import topic_plan as sink_topic_plan

from ..fakes.crm import MAX_STRING, TOKEN, FakeCRM, example, utf16_len
from ..support import caught_up, free_port, serve

RETRY_TOPIC, DLQ_TOPIC = sink_topics(load(KafkaSettings), "crm")


@dataclasses.dataclass
class Rig:
    kafka: KafkaSettings
    fake: FakeCRM
    url: str

    async def produce(self, events: list[dict[str, Any]]) -> None:
        producer = make_producer(self.kafka, "test")
        await producer.start()
        try:
            for event in events:
                subject = event.get("call_id") or event.get("session_id")
                await producer.send(
                    self.kafka.events_topic, value=orjson.dumps(event),
                    key=subject.encode() if subject else None,
                    headers=[("hs-event-type", event["type"].encode()),
                             ("hs-provider", event["provider"].encode()),
                             ("hs-event-id", event["event_id"].encode())])
            await producer.flush()
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def sink(self, group: str | None = None, **overrides: Any
                   ) -> AsyncIterator[tuple[CRMSink, str]]:
        """The real SinkRunner with a new CRMSink (a fresh process: nothing cached), in
        this event loop, until the block ends. A new consumer group unless given."""
        if group is None:
            group = f"test-sink-crm-{uuid.uuid4().hex[:10]}"
            await _skip_parked_events_of_other_runs(self.kafka, f"{group}-retry")
        settings = CRMSettings(url=self.url, token=TOKEN, timeout_s=0.5, max_retries=1,
                               backoff_base_s=0.05, backoff_max_s=0.1, circuit_failures=2,
                               circuit_cooldown_s=0.5, rate_limit_max_wait_s=2,
                               rate_limit_budget_s=5)
        crm = CRMSink(dataclasses.replace(settings, **overrides))
        runner = SinkRunner(crm, self.kafka,
                            SinkSettings(retry_delays_s=("1", "1", "1"), poll_timeout_ms=100,
                                         max_batch=50, backoff_max_s=1),
                            group_id=group)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        try:
            yield crm, group
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def drained(self, group: str, timeout_s: float = 20) -> None:
        """Wait until ``group`` has committed up to the end of the events topic."""
        await caught_up(self.kafka, group, self.kafka.events_topic, timeout_s)


async def _skip_parked_events_of_other_runs(kafka: KafkaSettings, retry_group: str) -> None:
    """The sink's retry topic is one shared topic (its name does not follow the
    KafkaSettings topics): start this run's retry group at its end."""
    consumer = make_consumer(kafka, retry_group)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, RETRY_TOPIC)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: offset for tp, offset in ends.items()})
    finally:
        await consumer.stop()


async def _records_since(kafka: KafkaSettings, topic: str, start: dict[TopicPartition, int],
                         keep: Callable[[Any], bool], want: int, timeout_s: float
                         ) -> list[Any]:
    """Records of ``topic`` after ``start`` for which ``keep`` holds, until ``want``."""
    consumer = make_consumer(kafka, None)
    await consumer.start()
    found: list[Any] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while len(found) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            found += [r for records in batch.values() for r in records if keep(r)]
    finally:
        await consumer.stop()
    return found


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def rig(stack: KafkaSettings) -> AsyncIterator[Rig]:
    run_id = uuid.uuid4().hex[:10]
    kafka = dataclasses.replace(
        stack, raw_topic=f"test.crm.raw.{run_id}", events_topic=f"test.crm.events.{run_id}",
        dlq_topic=f"test.crm.dlq.{run_id}")
    await topics.ensure(kafka, [s for s in topics.plan(kafka, partitions=3)
                                if s.name == kafka.events_topic])
    await topics.ensure(kafka, sink_topic_plan(kafka, "crm"))
    fake = FakeCRM()
    port = free_port()
    async with serve(fake.app, port):
        yield Rig(kafka, fake, f"http://127.0.0.1:{port}")


def finished_calls() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A Sawt call.ended + call.analyzed pair, a Sarj.ai complete and no_answer and a
    Saaya session.ended, with fresh ids; and the call key of each kind."""
    tag = uuid.uuid4().hex[:8]
    sawt_call, sarj_call, sarj_missed, session = (
        f"call_sawt_{tag}", f"call_sarj_{tag}", f"call_missed_{tag}", f"ses_{tag}")
    events = [
        example("call.ended.sawt", call_id=sawt_call),
        example("call.analyzed", call_id=sawt_call),
        example("call.ended", call_id=sarj_call),
        example("call.not_connected", call_id=sarj_missed, outcome="no_answer",
                provider_type="no_answer",
                data={"call_id": sarj_missed, "payload": {"type": "no_answer"}}),
        example("session.ended", session_id=session),
    ]
    keys = {"sawt": f"sawt:{sawt_call}", "sarj": f"sarj:{sarj_call}",
            "missed": f"sarj:{sarj_missed}", "saaya": f"saaya:{session}"}
    return events, keys


def assert_expected_state(fake: FakeCRM, events: list[dict[str, Any]],
                          keys: dict[str, str]) -> None:
    assert len(fake.calls) == 4
    assert sorted(c["properties"]["phone"] for c in fake.contacts.values()) == [
        "+966511111111", "+966512345678"]
    sawt = fake.call(keys["sawt"])["properties"]
    assert sawt["hs_call_status"] == "COMPLETED" and sawt["hs_call_duration"] == "315000"
    assert "Summary:</strong> Customer called" in sawt["hs_call_body"]
    assert "Sentiment:</strong> positive" in sawt["hs_call_body"]
    assert sorted(orjson.loads(sawt["hookstream_details"])["event_ids"]) == sorted(
        e["event_id"] for e in events[:2])
    sarj = fake.call(keys["sarj"])
    assert "hs_call_recording_url" not in sarj["properties"]  # the signed URL expires
    missed = fake.call(keys["missed"])
    assert missed["properties"]["hs_call_status"] == "NO_ANSWER"
    saaya = fake.call(keys["saaya"])
    assert saaya["properties"]["hs_call_duration"] == "184320"
    phones = {c["id"]: c["properties"]["phone"] for c in fake.contacts.values()}
    assert {(fake.calls[call]["properties"]["hookstream_call_key"], phones[contact])
            for call, contact in fake.associations} == {
        (keys["sawt"], "+966511111111"), (keys["sarj"], "+966512345678")}


async def test_finished_calls_land_once_through_redeliveries_429s_and_500s(rig: Rig) -> None:
    events, keys = finished_calls()
    async with rig.sink() as (_, group):
        await rig.produce(events)
        await _until(lambda: len(rig.fake.calls) == 4 and len(rig.fake.associations) == 2,
                     20, "the first delivery to land")
        await rig.drained(group)
    assert_expected_state(rig.fake, events, keys)
    first = rig.fake.snapshot()

    # Delivered twice more (once in reverse order: call.analyzed before call.ended) to a
    # restarted worker (nothing cached), through a 429 storm and 500s.
    rig.fake.rate_limit_next(6, retry_after="0.2")
    rig.fake.fail_next(3, 500)
    await rig.produce(events[::-1])
    await rig.produce(events)
    async with rig.sink(group):
        await rig.drained(group)
    assert not rig.fake.faults, "every forced fault was met"
    assert rig.fake.snapshot() == first

    # Another worker group (every event once more), through 429s, 502s and a timeout
    # after the CRM applied the request: still the same state.
    rig.fake.rate_limit_next(3, retry_after="0.2")
    rig.fake.fail_next(2, 502, route="calls.batch_read")
    rig.fake.slow_next(1, 1.0, route="contacts.batch_read")  # past the 0.5 s timeout
    async with rig.sink() as (_, group):
        await rig.drained(group)
    assert not rig.fake.faults
    assert rig.fake.snapshot() == first
    # every write an upsert on a unique property: never a second object
    assert rig.fake.duplicate_activities() == 0 and len(rig.fake.contacts) == 2
    assert_expected_state(rig.fake, events, keys)


async def test_an_outage_parks_events_on_the_retry_topic_until_the_crm_is_back(
        rig: Rig) -> None:
    events, keys = finished_calls()
    ids = {e["event_id"] for e in events}
    retry_start = dict(await end_offsets(rig.kafka, RETRY_TOPIC))
    dlq_start = dict(await end_offsets(rig.kafka, DLQ_TOPIC))

    def ours(record: Any) -> bool:
        return dlq.header(record.headers, "hs-event-id") in ids

    rig.fake.go_down(503)
    async with rig.sink() as (crm, group):
        await rig.produce(events)
        parked = await _records_since(rig.kafka, RETRY_TOPIC, retry_start, ours, len(events),
                                      timeout_s=15)
        assert {dlq.header(r.headers, "hs-event-id") for r in parked} == ids
        assert {dlq.header(r.headers, H_ATTEMPT) for r in parked} == {"1"}
        assert all(int(dlq.header(r.headers, H_NOT_BEFORE) or 0) > 0 for r in parked)
        assert {orjson.loads(r.value)["event_id"] for r in parked} == ids  # the event, whole
        await rig.drained(group)  # the main partitions moved on while the CRM was down
        assert crm.circuit.state in ("open", "half_open")
        assert not rig.fake.calls

        rig.fake.come_back()
        await _until(lambda: len(rig.fake.calls) == 4 and len(rig.fake.associations) == 2,
                     15, "the parked events to land")
        # The fake holds the writes before the sink has read their answers: the
        # circuit closes on the answer.
        await _until(lambda: crm.circuit.state == "closed", 5, "the circuit to close")
    assert_expected_state(rig.fake, events, keys)
    dead = await _records_since(rig.kafka, DLQ_TOPIC, dlq_start, ours, 1, timeout_s=0.5)
    assert dead == []


# ---------------------------------------------------------------- HubSpot's behaviours
def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_daily_429_parks_events_until_the_reset_and_the_partition_moves_on(
        rig: Rig) -> None:
    events, keys = finished_calls()
    ids = {e["event_id"] for e in events}
    retry_start = dict(await end_offsets(rig.kafka, RETRY_TOPIC))
    parked_before = metric("hookstream_crm_rate_limit_parked_events_total", policy="DAILY")

    def ours(record: Any) -> bool:
        return dlq.header(record.headers, "hs-event-id") in ids

    # HubSpot's DAILY limit is spent; this 429 says when it resets (3 s, not midnight)
    rig.fake.daily_limit(0, retry_after="3")
    async with rig.sink() as (crm, group):
        started = time.time()
        await rig.produce(events)
        parked = await _records_since(rig.kafka, RETRY_TOPIC, retry_start, ours, len(events),
                                      timeout_s=15)
        await rig.drained(group)  # the main partitions moved on: nothing waits in place
        assert time.time() - started < 10
        assert {dlq.header(r.headers, "hs-event-id") for r in parked} == ids
        # parked until the reset, without spending a retry attempt
        assert {dlq.header(r.headers, H_ATTEMPT) for r in parked} == {"0"}
        reset_ms = {int(dlq.header(r.headers, H_NOT_BEFORE) or 0) for r in parked}
        assert all(started * 1000 + 2000 <= ms <= time.time() * 1000 + 3500 for ms in reset_ms)
        assert metric("hookstream_crm_rate_limit_parked_events_total",
                      policy="DAILY") - parked_before >= len(events)
        reset_gauge = metric("hookstream_crm_daily_limit_reset_timestamp_seconds")
        assert started + 2 <= reset_gauge <= time.time() + 3.5
        assert rig.fake.limited["DAILY"] <= 2  # one per loop at most: the rest never sent
        assert not rig.fake.calls

        rig.fake.reset_daily()  # midnight in the portal's time zone
        await _until(lambda: len(rig.fake.calls) == 4 and len(rig.fake.associations) == 2,
                     20, "the parked events to land after the reset")
        assert metric("hookstream_crm_daily_limit_reset_timestamp_seconds") == 0
        assert crm.circuit.state == "closed"
    assert_expected_state(rig.fake, events, keys)


async def test_ten_secondly_429s_are_waited_out_for_one_window_then_parked(rig: Rig) -> None:
    """HubSpot's rolling window says 10,000 ms: the sink waits that, once, within its
    ten-second budget; still limited, the batch is parked and the partition moves on."""
    events, keys = finished_calls()
    rig.fake.rate_limit_next(10_000)  # TEN_SECONDLY_ROLLING, Interval-Milliseconds: 10000
    async with rig.sink(rate_limit_budget_s=10, rate_limit_max_wait_s=10) as (_, group):
        started = time.monotonic()
        await rig.produce(events)
        await rig.drained(group, timeout_s=30)
        blocked = time.monotonic() - started
        assert 9 <= blocked < 15  # one window waited, not 1-2-4 s backoffs, not minutes
        assert rig.fake.limited["TEN_SECONDLY_ROLLING"] <= 4  # not hammered inside it
        assert not rig.fake.calls

        rig.fake.come_back()
        await _until(lambda: len(rig.fake.calls) == 4 and len(rig.fake.associations) == 2,
                     20, "the parked events to land")
    assert_expected_state(rig.fake, events, keys)


async def test_search_lag_redeliveries_and_two_workers_leave_one_call_and_one_contact(
        rig: Rig) -> None:
    """HubSpot's search index lags writes: a redelivered event and two workers racing on
    one new number must still leave one call per call and one contact per number."""
    rig.fake.search_lag_s = 30  # longer than the whole test: search never sees our writes
    tag = uuid.uuid4().hex[:8]
    number = "+966598765432"
    first = example("call.ended.sawt", call_id=f"call_a_{tag}", customer_number=number[1:])
    second = example("call.ended", call_id=f"call_b_{tag}", customer_number=number)
    async with rig.sink() as (_, one), rig.sink() as (_, two):  # two workers, all events
        await rig.produce([first, second, first, first])  # first delivered 3x
        await rig.produce([first, second])
        await rig.drained(one)
        await rig.drained(two)
    assert len(rig.fake.contacts_with_phone(number)) == 1
    assert len(rig.fake.calls_with_key(f"sawt:call_a_{tag}")) == 1
    assert len(rig.fake.calls_with_key(f"sarj:call_b_{tag}")) == 1
    assert rig.fake.duplicate_activities() == 0
    contact = rig.fake.contacts_with_phone(number)[0]["id"]
    assert {contact for _, contact in rig.fake.associations} == {contact}


async def test_a_2000_turn_transcript_lands_with_a_body_within_hubspots_limit(
        rig: Rig) -> None:
    turns = [{"role": "AGENT" if n % 2 else "CUSTOMER",
              "text": f"turn {n}: <b>&amp; \"quoted\" 😀</b>"} for n in range(2000)]
    tag = uuid.uuid4().hex[:8]
    event = example("call.ended.sawt", call_id=f"call_long_{tag}", transcript=turns)
    dlq_start = dict(await end_offsets(rig.kafka, DLQ_TOPIC))
    async with rig.sink(transcript_max_chars=1_000_000) as (_, group):
        await rig.produce([event])
        await rig.drained(group)
    call = rig.fake.call(f"sawt:call_long_{tag}")["properties"]
    body = call["hs_call_body"]
    assert utf16_len(body) <= MAX_STRING  # the fake refuses longer values with a 400
    assert utf16_len(call["hookstream_details"]) <= MAX_STRING
    assert "turn 0: &lt;b&gt;&amp;amp;" in body  # escaped, and cut as rendered
    assert "turns not shown]" in body and body.endswith("</em></p>")
    dead = await _records_since(rig.kafka, DLQ_TOPIC, dlq_start,
                                lambda r: dlq.header(r.headers, "hs-event-id")
                                == event["event_id"], 1, timeout_s=0.5)
    assert dead == []
