"""Publisher bounds without a broker: a fake producer is injected into ``_producer``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from hookstream.core.config import KafkaSettings
from hookstream.ingest.publisher import NotStored, Publisher

HEADERS = [("hs-source", b"s")]


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def append(self, *, timestamp: Any, key: bytes | None, value: bytes | None,
               headers: Any) -> object:
        assert not self.closed
        self.records.append({"value": value, "key": key, "headers": headers})
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """The batch API the publisher uses (``create_batch``/``send_batch``); each submitted
    batch returns a future, and the test decides whether it ever resolves."""

    def __init__(self, *, resolve: bool = False, error: Exception | None = None,
                 send_delay_s: float = 0.0, send_error: Exception | None = None) -> None:
        self.resolve = resolve
        self.error = error
        self.send_delay_s = send_delay_s
        self.send_error = send_error
        self.sent: list[dict[str, Any]] = []
        self.batches: list[FakeBatch] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.client = FakeClient()  # client.cluster: the metadata submit_batches reads

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]:
        assert batch.closed  # sent at once, never left open for linger
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        if self.send_error is not None:
            raise self.send_error
        self.batches.append(batch)
        self.sent += [{"topic": topic, "partition": partition, **r} for r in batch.records]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
        elif self.resolve:
            future.set_result(object())
        self.futures.append(future)
        return future


def make(ack_timeout_s: float = 0.2, max_in_flight: int = 10,
         max_in_flight_bytes: int = 1 << 20, producer: Any = None) -> Publisher:
    publisher = Publisher(KafkaSettings(), ack_timeout_s=ack_timeout_s,
                          max_in_flight=max_in_flight, max_in_flight_bytes=max_in_flight_bytes)
    publisher._producer = producer
    return publisher


def in_flight_gauge() -> float:
    return REGISTRY.get_sample_value("hookstream_ingest_in_flight_produces") or 0.0


async def test_publish_before_connected_not_connected() -> None:
    publisher = make(producer=None)
    assert publisher.ready is False
    with pytest.raises(NotStored) as info:
        await publisher.publish("t", b"v", b"k", HEADERS)
    assert info.value.reason == "not_connected"
    assert str(info.value) == "not_connected"
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0


async def test_acknowledged_publish_returns_and_passes_arguments() -> None:
    producer = FakeProducer(resolve=True)
    publisher = make(producer=producer)
    await publisher.publish("raw", b"value", b"key", HEADERS)
    assert producer.sent == [{"topic": "raw", "partition": 0, "value": b"value",
                              "key": b"key", "headers": HEADERS}]
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0


async def test_never_acknowledged_publish_times_out_within_ack_timeout() -> None:
    producer = FakeProducer()
    publisher = make(ack_timeout_s=0.3, producer=producer)
    gauge = in_flight_gauge()
    started = time.monotonic()
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"value", None, HEADERS)
    elapsed = time.monotonic() - started
    assert info.value.reason == "ack_timeout"
    assert 0.25 <= elapsed < 0.3 + 0.15
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0
    assert in_flight_gauge() == gauge
    # The future was shielded, not cancelled: aiokafka's bookkeeping stays intact.
    # The record's own future is cancelled (nothing waits on it any more); aiokafka
    # skips done futures when the batch completes (message_accumulator.done()).
    assert len(producer.futures) == 1 and producer.futures[0].cancelled()


async def test_slow_send_counts_against_the_same_deadline() -> None:
    # send() itself takes 0.2 s (waiting for metadata); the ack never comes. The
    # total wait must still be bounded by ack_timeout_s, not 0.2 + ack_timeout_s.
    producer = FakeProducer(send_delay_s=0.2)
    publisher = make(ack_timeout_s=0.3, producer=producer)
    started = time.monotonic()
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"v", None, HEADERS)
    elapsed = time.monotonic() - started
    assert info.value.reason == "ack_timeout"
    assert elapsed < 0.3 + 0.15


async def test_send_that_never_returns_times_out() -> None:
    producer = FakeProducer(send_delay_s=60)
    publisher = make(ack_timeout_s=0.2, producer=producer)
    started = time.monotonic()
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"v", None, HEADERS)
    assert info.value.reason == "ack_timeout"
    assert time.monotonic() - started < 0.2 + 0.15
    assert publisher._in_flight == 0


async def test_kafka_error_on_ack_is_kafka_error() -> None:
    publisher = make(producer=FakeProducer(error=KafkaConnectionError("down")))
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"v", None, HEADERS)
    assert info.value.reason == "kafka_error"
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0


async def test_kafka_error_on_send_is_kafka_error() -> None:
    publisher = make(producer=FakeProducer(send_error=KafkaConnectionError("down")))
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"v", None, HEADERS)
    assert info.value.reason == "kafka_error"
    assert publisher._in_flight == 0


async def test_second_concurrent_publish_overloaded_immediately() -> None:
    producer = FakeProducer()
    publisher = make(ack_timeout_s=0.5, max_in_flight=1, producer=producer)
    first = asyncio.create_task(publisher.publish("raw", b"first", None, HEADERS))
    await asyncio.sleep(0.01)
    assert publisher._in_flight == 1 and publisher._in_flight_bytes == len(b"first")

    started = time.monotonic()
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"second", None, HEADERS)
    assert info.value.reason == "overloaded"
    assert time.monotonic() - started < 0.05
    assert len(producer.sent) == 1  # the shed publish never reached the producer
    assert publisher._in_flight == 1

    with pytest.raises(NotStored) as first_info:
        await first
    assert first_info.value.reason == "ack_timeout"
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0

    # Capacity is back: the next publish reaches the producer again.
    producer.resolve = True
    await publisher.publish("raw", b"third", None, HEADERS)
    assert len(producer.sent) == 2
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0


async def test_byte_budget_overloaded() -> None:
    producer = FakeProducer()
    publisher = make(ack_timeout_s=0.3, max_in_flight=100, max_in_flight_bytes=10,
                     producer=producer)
    first = asyncio.create_task(publisher.publish("raw", b"123456", None, HEADERS))
    await asyncio.sleep(0.01)
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"12345", None, HEADERS)  # 6 + 5 > 10
    assert info.value.reason == "overloaded"
    with pytest.raises(NotStored):
        await first
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0
    producer.resolve = True
    await publisher.publish("raw", b"1234567890", None, HEADERS)  # exactly the budget
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"12345678901", None, HEADERS)  # one over, alone
    assert info.value.reason == "overloaded"


async def test_many_concurrent_publishes_counters_return_to_zero() -> None:
    producer = FakeProducer()
    publisher = make(ack_timeout_s=0.2, max_in_flight=5, producer=producer)
    results = await asyncio.gather(
        *(publisher.publish("raw", b"x" * 3, None, HEADERS) for _ in range(12)),
        return_exceptions=True)
    reasons = sorted(r.reason for r in results if isinstance(r, NotStored))
    assert len(reasons) == 12
    assert reasons.count("ack_timeout") == 5
    assert reasons.count("overloaded") == 7
    assert publisher._in_flight == 0 and publisher._in_flight_bytes == 0


async def test_stop_without_producer_is_a_no_op() -> None:
    publisher = make(producer=None)
    await publisher.stop(0.1)
    assert publisher._producer is None


async def test_concurrent_publishes_share_one_batch_and_each_gets_its_ack() -> None:
    producer = FakeProducer(resolve=True)
    publisher = make(producer=producer, max_in_flight=100)
    await asyncio.gather(*(publisher.publish("raw", f"v{n}".encode(), None, HEADERS)
                           for n in range(20)))
    # Queued in the same loop iteration: one batch, in arrival order.
    assert len(producer.batches) == 1
    assert [r["value"] for r in producer.sent] == [f"v{n}".encode() for n in range(20)]
    assert publisher._in_flight == 0


async def test_records_arriving_during_a_flush_form_the_next_batch() -> None:
    producer = FakeProducer()
    publisher = make(producer=producer, max_in_flight=100, ack_timeout_s=2)
    first = asyncio.create_task(publisher.publish("raw", b"a", None, HEADERS))
    await asyncio.sleep(0.01)  # the first batch is out, its ack pending
    later = [asyncio.create_task(publisher.publish("raw", b"b", None, HEADERS))
             for _ in range(3)]
    await asyncio.sleep(0.01)
    assert len(producer.batches) == 1  # one batch in flight per partition
    producer.futures[0].set_result(object())
    await first
    await asyncio.sleep(0.01)
    assert len(producer.batches) == 2 and len(producer.batches[1].records) == 3
    assert not any(t.done() for t in later)  # each waits for its own batch's ack
    producer.futures[1].set_result(object())
    await asyncio.gather(*later)


async def test_a_cancelled_request_does_not_disturb_its_batch() -> None:
    producer = FakeProducer()
    publisher = make(producer=producer, max_in_flight=100, ack_timeout_s=2)
    keep = asyncio.create_task(publisher.publish("raw", b"keep", None, HEADERS))
    gone = asyncio.create_task(publisher.publish("raw", b"gone", None, HEADERS))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    producer.futures[0].set_result(object())
    await keep  # acknowledged despite its neighbour's cancellation
    assert gone.cancelled() and publisher._in_flight == 0


async def test_stop_answers_requests_still_waiting() -> None:
    producer = FakeProducer()  # never acknowledges
    publisher = make(producer=producer, ack_timeout_s=30)
    pending = asyncio.create_task(publisher.publish("raw", b"v", None, HEADERS))
    await asyncio.sleep(0.01)
    producer.flush = lambda: asyncio.sleep(0)  # type: ignore[attr-defined]
    producer.stop = lambda: asyncio.sleep(0)  # type: ignore[attr-defined]
    await publisher.stop(0.2)
    with pytest.raises(NotStored) as info:
        await asyncio.wait_for(pending, 1)
    assert info.value.reason == "kafka_error"


async def until_ready(publisher: Publisher) -> None:
    for _ in range(100):
        if publisher.ready:
            return
        await asyncio.sleep(0.01)


class FakeCluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


class FakeClient:
    cluster = FakeCluster()

    async def fetch_all_metadata(self) -> FakeCluster:
        return FakeCluster()


class StartableProducer(FakeProducer):
    """A FakeProducer the publisher's supervisor can start, probe and stop."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = False
        self.stopped = False
        self.client = FakeClient()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        pass


async def test_a_fatal_idempotence_error_replaces_the_producer_and_resends_the_batch() -> None:
    """Issue 12: after a broker restart aiokafka's idempotent producer fails every send
    with OutOfOrderSequenceNumber for good. The publisher builds a new producer (a new
    producer id) and re-sends the batch on it within the request's deadline: 202."""
    from aiokafka.errors import OutOfOrderSequenceNumber
    from prometheus_client import REGISTRY

    wedged = StartableProducer(error=OutOfOrderSequenceNumber())
    fresh = StartableProducer(resolve=True)
    made = iter([wedged, fresh])
    publisher = Publisher(KafkaSettings(), ack_timeout_s=2.0, max_in_flight=10,
                          max_in_flight_bytes=1 << 20, probe_interval_s=0.05,
                          producer_factory=lambda: next(made))
    before = REGISTRY.get_sample_value("hookstream_ingest_producer_resets_total",
                                       {"reason": "fatal_error"}) or 0.0
    await publisher.start()
    try:
        await until_ready(publisher)
        assert publisher._producer is wedged
        await publisher.publish("raw", b"value", b"key", HEADERS)  # no NotStored
        assert [r["value"] for r in wedged.sent] == [b"value"]
        assert [r["value"] for r in fresh.sent] == [b"value"]  # re-sent on the new one
        assert publisher._producer is fresh and wedged.stopped
        assert publisher.ready
        assert REGISTRY.get_sample_value("hookstream_ingest_producer_resets_total",
                                         {"reason": "fatal_error"}) == before + 1
    finally:
        await publisher.stop(1.0)


async def test_produces_failing_for_the_reset_window_replace_the_producer() -> None:
    """No fatal error, just failures that keep repeating (acks never come): unready at
    the first failure, a new producer after ``reset_after_s``, ready again."""
    silent = StartableProducer()  # never acknowledges
    fresh = StartableProducer(resolve=True)
    made = iter([silent, fresh])
    publisher = Publisher(KafkaSettings(), ack_timeout_s=0.1, max_in_flight=10,
                          max_in_flight_bytes=1 << 20, probe_interval_s=0.05,
                          reset_after_s=0.3, producer_factory=lambda: next(made))
    await publisher.start()
    try:
        await until_ready(publisher)
        with pytest.raises(NotStored):
            await publisher.publish("raw", b"v", None, HEADERS)
        assert not publisher.ready  # a delivery arriving now would not be stored
        for _ in range(200):
            if publisher._producer is fresh and publisher.ready:
                break
            await asyncio.sleep(0.01)
        assert publisher._producer is fresh and publisher.ready and silent.stopped
        await publisher.publish("raw", b"v", None, HEADERS)
    finally:
        await publisher.stop(1.0)


async def test_a_producer_whose_sender_ended_is_not_ready_and_is_replaced() -> None:
    class Sender:
        def __init__(self) -> None:
            self.sender_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    dead = StartableProducer()
    dead._sender = Sender()  # type: ignore[attr-defined]
    fresh = StartableProducer(resolve=True)
    made = iter([dead, fresh])
    publisher = Publisher(KafkaSettings(), ack_timeout_s=0.5, max_in_flight=10,
                          max_in_flight_bytes=1 << 20, probe_interval_s=0.05,
                          producer_factory=lambda: next(made))
    await publisher.start()
    try:
        await until_ready(publisher)
        assert publisher._producer is dead
        dead._sender.sender_task.set_result(None)  # type: ignore[attr-defined]
        assert not publisher.ready
        for _ in range(100):
            if publisher._producer is fresh:
                break
            await asyncio.sleep(0.01)
        assert publisher._producer is fresh and publisher.ready
    finally:
        await publisher.stop(1.0)
