"""SinkRunner's park/retry/dead-letter logic, over an in-memory consumer and producer.

The runner's own ``run`` (two consume loops: the canonical topic and the sink's
retry topic) is driven end to end here: events the sink defers are parked on the
retry topic and offered again when due, until their retries run out and they are
dead-lettered; held events keep their attempt count; failures, malformed
records, a raising sink and test deliveries end where docs/guarantees.md says.
The in-memory consumer stands in for the loop's consumer interface only (as in
core/test_consume_loop.py), the in-memory producer for the producer; the real broker
stays in the integration tests (test_sink_isolation.py, test_sink_crm.py, ...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from hookstream.core import dlq, errors
from hookstream.core.config import KafkaSettings
from hookstream.core.errors import Retryable
from hookstream.core.headers import H_ATTEMPT, H_EVENT_TYPE, H_NOT_BEFORE
from hookstream.core.kafka import ProducerKeeper
from hookstream.sinks import runner as runner_module
from hookstream.sinks.base import SinkEvent, WriteOutcome
from hookstream.sinks.runner import SinkRunner, SinkSettings

KAFKA = KafkaSettings()
EVENTS_TOPIC = KAFKA.events_topic
RETRY_TOPIC = f"{KAFKA.sink_topic_prefix}.test.retry.v1"
DLQ_TOPIC = f"{KAFKA.sink_topic_prefix}.test.dlq.v1"
(TEST_REJECTED,) = errors.sink_reasons("test", "test_rejected")


@dataclasses.dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class Broker:
    """Topics of one partition each: what the producer appended, in order."""

    def __init__(self) -> None:
        self.logs: dict[str, list[Rec]] = {}

    def append(self, topic: str, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]]) -> None:
        log = self.logs.setdefault(topic, [])
        log.append(Rec(topic, 0, len(log), key, value, list(headers)))

    def records(self, topic: str) -> list[Rec]:
        return self.logs.get(topic, [])


class InMemoryConsumer:
    """The loop's consumer interface over one topic of the broker (partition 0)."""

    def __init__(self, broker: Broker, group: str) -> None:
        self.broker, self.group = broker, group
        self.topic = ""
        self.tp = TopicPartition("", 0)
        self.position_ = 0
        self.committed: list[int] = []
        self.fetched = 0  # polls that returned records

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.topic = topics[0]
        self.tp = TopicPartition(self.topic, 0)

    async def start(self) -> None:
        await asyncio.sleep(0)

    async def stop(self) -> None:
        await asyncio.sleep(0)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        await asyncio.sleep(0)
        take = self.broker.records(self.topic)[self.position_:self.position_ + max_records]
        if not take:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.position_ += len(take)
        self.fetched += 1
        return {self.tp: take}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position_ = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        self.committed.append(offsets[self.tp])

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.broker.records(self.topic))

    async def position(self, tp: TopicPartition) -> int:
        return self.position_


class InMemoryBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    def append(self, *, timestamp: Any, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]]) -> object:
        self.records.append((key, value, headers))
        return object()

    def close(self) -> None:
        pass


class InMemoryProducer:
    """Acks at once, into the broker; ``failures`` sends fail first (a broker outage)."""

    _max_request_size = 1024 * 1024

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.failures = 0
        self.client = self
        self.cluster = self

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> InMemoryBatch:
        return InMemoryBatch()

    def _ack(self, deliver: Callable[[], None]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(KafkaTimeoutError("broker away"))
        else:
            deliver()
            future.set_result(None)
        return future

    async def send_batch(self, batch: InMemoryBatch, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]:
        def deliver() -> None:
            for key, value, headers in batch.records:
                self.broker.append(topic, key, value, headers)
        return self._ack(deliver)

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        return self._ack(lambda: self.broker.append(topic, key, value, headers or []))

    async def stop(self) -> None:
        pass


class ScriptedSink:
    """Writes what it is given; what an event's ``do`` field says decides otherwise."""

    name = "test"
    default_http_port = 0
    takes_test_events = False

    def __init__(self) -> None:
        self.written: list[tuple[str, int]] = []  # (event id, attempt)
        self.offers: list[tuple[str, int]] = []
        self.retryable = 0  # batches that fail as a whole first
        self.hold_until_ms = 0

    def wants(self, event_type: str) -> bool:
        return event_type != "not.wanted"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        if self.retryable:
            self.retryable -= 1
            raise Retryable("database away")
        outcome = WriteOutcome()
        for item in events:
            event_id, do = item.event["event_id"], item.event.get("do")
            self.offers.append((event_id, item.attempt))
            if do == "defer":
                outcome.deferred.append((item, "circuit open"))
            elif do == "fail":
                outcome.failed.append((item, TEST_REJECTED, "the destination said no"))
            elif do == "hold":
                outcome.held.append((item, "daily limit", self.hold_until_ms))
            elif do == "raise" and len(events) >= 1:
                raise ValueError(f"cannot handle {event_id}")
            else:
                self.written.append((event_id, item.attempt))
        return outcome


def event(event_id: str, do: str = "", type_: str = "call.ended", **extra: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": type_, "do": do,
                         "received_at": "2026-11-23T10:00:00Z", **extra})


@dataclasses.dataclass
class Harness:
    broker: Broker
    producer: InMemoryProducer
    sink: ScriptedSink
    consumers: dict[str, InMemoryConsumer]
    runner: SinkRunner

    def publish(self, value: bytes | None, type_: str | None = "call.ended") -> None:
        headers = [(H_EVENT_TYPE, type_.encode())] if type_ else []
        self.broker.append(EVENTS_TOPIC, b"k", value, [*headers, ("hs-source", b"s1")])

    def dead(self) -> list[tuple[str, str]]:
        return [(orjson.loads(r.value or b"{}").get("event_id", ""),
                 dlq.header(r.headers, dlq.H_REASON) or "")
                for r in self.broker.records(DLQ_TOPIC)]

    def committed(self, group_suffix: str = "") -> int:
        consumer = self.consumers.get(f"hookstream-sink-test{group_suffix}")
        return consumer.committed[-1] if consumer and consumer.committed else 0


def harness(delays: tuple[str, ...] = ("0", "0")) -> Harness:
    broker = Broker()
    producer = InMemoryProducer(broker)
    sink = ScriptedSink()
    consumers: dict[str, InMemoryConsumer] = {}

    def make(group: str) -> InMemoryConsumer:
        consumers[group] = InMemoryConsumer(broker, group)
        return consumers[group]

    settings = SinkSettings(max_batch=10, poll_timeout_ms=5, backoff_max_s=0.05,
                            retry_delays_s=delays)
    keeper = ProducerKeeper(KAFKA, "sink-test", producer=producer)  # type: ignore[arg-type]
    runner = SinkRunner(sink, KAFKA, settings, producers=keeper, consumer_factory=make)
    return Harness(broker, producer, sink, consumers, runner)


async def run_until(h: Harness, done: Callable[[], bool], timeout_s: float = 10) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(h.runner.run(stop, serve_http=False, ensure_topics=False))
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert done(), "the runner did not get there in time"


async def test_written_skipped_malformed_and_test_deliveries_all_commit() -> None:
    h = harness()
    h.publish(event("e1"))
    h.publish(event("e2", type_="not.wanted"), type_="not.wanted")  # filtered on the header
    h.publish(event("e3", type_="not.wanted"), type_=None)  # filtered after parsing
    h.publish(b"not json")
    h.publish(event("e4", test=True))
    h.publish(event("e5"))
    await run_until(h, lambda: h.committed() == 6)
    assert h.sink.written == [("e1", 0), ("e5", 0)]
    [letter] = h.broker.records(DLQ_TOPIC)
    assert letter.value == b"not json" and letter.key == b"k"
    assert dlq.header(letter.headers, dlq.H_REASON) == errors.MALFORMED_EVENT
    assert dlq.header(letter.headers, dlq.H_STAGE) == "sink:test"
    assert dlq.header(letter.headers, dlq.H_ORIGIN) == f"{EVENTS_TOPIC}/0/3"
    assert dlq.header(letter.headers, "hs-source") == "s1"  # the original headers kept
    assert h.broker.records(RETRY_TOPIC) == []


async def test_a_deferred_event_is_parked_offered_again_then_dead_lettered() -> None:
    h = harness(delays=("0", "0"))
    h.publish(event("e1", do="defer"))
    h.publish(event("e2"))
    await run_until(h, lambda: bool(h.dead()))
    # The main partition moved on at once; the parked copy came back twice.
    assert h.sink.written == [("e2", 0)]
    assert h.sink.offers == [("e1", 0), ("e2", 0), ("e1", 1), ("e1", 2)]
    parked = h.broker.records(RETRY_TOPIC)
    assert [dlq.header(r.headers, H_ATTEMPT) for r in parked] == ["1", "2"]
    assert all(r.value == h.broker.records(EVENTS_TOPIC)[0].value for r in parked)
    assert [len([k for k, _ in r.headers if k == H_ATTEMPT]) for r in parked] == [1, 1]
    assert h.dead() == [("e1", errors.RETRIES_EXHAUSTED)]
    detail = dlq.header(h.broker.records(DLQ_TOPIC)[0].headers, dlq.H_DETAIL) or ""
    assert detail == "after 2 attempts: circuit open"
    assert h.committed() == 2 and h.committed("-retry") == 2


async def test_a_parked_event_waits_until_it_is_due() -> None:
    h = harness(delays=("0.3",))
    h.publish(event("e1", do="defer"))
    started = time.monotonic()
    await run_until(h, lambda: bool(h.dead()))
    assert time.monotonic() - started >= 0.3
    not_before = int(dlq.header(h.broker.records(RETRY_TOPIC)[0].headers, H_NOT_BEFORE) or 0)
    assert not_before >= time.time_ns() // 1_000_000 - 5000


async def test_a_long_wait_for_a_parked_event_is_sliced_and_keeps_polling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A parked event due later than one slice (a CRM's daily limit: hours) is waited
    for a slice at a time: the retry consumer polls again after each (so the broker
    keeps it in its group, max.poll.interval.ms), the wait counts as no failure, and
    the event is offered once, when due."""
    monkeypatch.setattr(runner_module, "PARKED_WAIT_SLICE_S", 0.05)
    h = harness(delays=("0.4",))
    h.publish(event("e1", do="defer"))
    started = time.monotonic()
    await run_until(h, lambda: bool(h.dead()))
    assert time.monotonic() - started >= 0.4
    assert h.consumers["hookstream-sink-test-retry"].fetched >= 5
    assert h.sink.offers == [("e1", 0), ("e1", 1)]
    assert h.dead() == [("e1", errors.RETRIES_EXHAUSTED)]
    assert all(loop.healthy for loop in h.runner._loops)


async def test_parked_events_due_now_are_not_held_back_by_one_due_later() -> None:
    """The retry topic is read in order, so one event parked for longer (a later
    attempt's delay, a daily limit) sits among events due now: those before and
    behind it are offered at once, and it goes back to the topic's tail, unchanged,
    to be offered when it is due."""
    h = harness()
    now_ms = time.time_ns() // 1_000_000
    for event_id, due_ms in [("due-1", now_ms - 10), ("due-2", now_ms),
                             ("later", now_ms + 1500), ("due-3", now_ms)]:
        h.broker.append(RETRY_TOPIC, b"k", event(event_id), [
            (H_EVENT_TYPE, b"call.ended"), ("hs-source", b"s1"), (H_ATTEMPT, b"1"),
            (H_NOT_BEFORE, str(due_ms).encode())])
    started = time.monotonic()
    offered_at: dict[str, float] = {}
    write = h.sink.write

    async def timed(events: list[SinkEvent]) -> WriteOutcome:
        for item in events:
            offered_at.setdefault(item.event["event_id"], time.monotonic() - started)
        return await write(events)

    h.sink.write = timed  # type: ignore[method-assign]
    await run_until(h, lambda: len(h.sink.written) == 4)
    assert [e for e, _ in h.sink.written] == ["due-1", "due-2", "due-3", "later"]
    assert max(offered_at["due-1"], offered_at["due-2"], offered_at["due-3"]) < 0.5
    assert offered_at["later"] >= 1.4
    parked = h.broker.records(RETRY_TOPIC)
    assert len(parked) == 5  # the four, and "later" once more at the tail
    assert parked[4].value == parked[2].value
    assert sorted(parked[4].headers) == sorted(parked[2].headers)  # attempt, due time kept
    assert h.sink.offers == [("due-1", 1), ("due-2", 1), ("due-3", 1), ("later", 1)]
    assert h.committed("-retry") == 5


async def test_a_held_event_keeps_its_attempt_and_the_time_the_destination_named() -> None:
    h = harness(delays=("0",))
    h.sink.hold_until_ms = time.time_ns() // 1_000_000 + 100
    h.publish(event("e1", do="hold"))
    await run_until(h, lambda: len(h.broker.records(RETRY_TOPIC)) >= 3)
    # Held again and again (the destination keeps saying "later"): never dead-lettered,
    # its attempt count never spent.
    parked = h.broker.records(RETRY_TOPIC)
    assert {dlq.header(r.headers, H_ATTEMPT) for r in parked} == {"0"}
    assert dlq.header(parked[0].headers, H_NOT_BEFORE) == str(h.sink.hold_until_ms)
    assert h.dead() == []


async def test_failed_events_are_dead_lettered_with_the_sinks_reason() -> None:
    h = harness()
    h.publish(event("e1", do="fail"))
    h.publish(event("e2"))
    await run_until(h, lambda: h.committed() == 2)
    assert h.dead() == [("e1", TEST_REJECTED)]
    assert TEST_REJECTED in errors.reasons_of("sink:test")
    assert h.sink.written == [("e2", 0)]


async def test_a_sink_raising_on_one_event_dead_letters_that_event_alone() -> None:
    h = harness()
    for name in ("e1", "e2", "e3"):
        h.publish(event(name, do="raise" if name == "e2" else ""))
    await run_until(h, lambda: h.committed() == 3)
    assert h.dead() == [("e2", errors.SINK_ERROR)]
    detail = dlq.header(h.broker.records(DLQ_TOPIC)[0].headers, dlq.H_DETAIL) or ""
    assert "cannot handle e2" in detail
    assert ("e1", 0) in h.sink.written and ("e3", 0) in h.sink.written


async def test_a_retryable_batch_is_retried_in_place_and_committed_only_after() -> None:
    h = harness()
    h.sink.retryable = 2
    h.publish(event("e1"))
    h.publish(event("e2", do="defer"))
    await run_until(h, lambda: h.committed() == 2)
    assert h.sink.written == [("e1", 0)]
    consumer = h.consumers["hookstream-sink-test"]
    assert consumer.committed == [2]  # nothing committed while the batch kept failing
    assert [dlq.header(r.headers, H_ATTEMPT) for r in h.broker.records(RETRY_TOPIC)][:1] == ["1"]


async def test_parking_that_fails_on_the_broker_retries_the_batch_before_committing() -> None:
    h = harness(delays=("60",))
    h.producer.failures = 1  # the first parking send is not acknowledged
    h.publish(event("e1", do="defer"))
    await run_until(h, lambda: h.committed() == 1)
    assert h.sink.offers == [("e1", 0), ("e1", 0)]  # offered again after the failure
    assert len(h.broker.records(RETRY_TOPIC)) == 1
    assert h.consumers["hookstream-sink-test"].committed == [1]


async def test_a_record_whose_handling_raises_is_dead_lettered_as_internal_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness()
    original = h.runner.offer_parsed

    async def offer(parsed: Any) -> None:
        wanted = parsed[0]
        if any(item.event.get("do") == "boom" for item in wanted):
            raise RuntimeError("a bug in the runner's own path")
        await original(parsed)

    monkeypatch.setattr(h.runner, "offer_parsed", offer)
    h.publish(event("e1"))
    h.publish(event("e2", do="boom"))
    await run_until(h, lambda: h.committed() == 2)
    assert h.dead() == [("e2", errors.INTERNAL_ERROR)]
    assert h.sink.written == [("e1", 0)]
