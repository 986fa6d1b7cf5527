"""The publisher with a spool (ADR 7): what Kafka does not acknowledge within the budget,
or cannot take at all, is fsync'd to the spool and the request succeeds; the drainer
forwards it with its key and headers; a spool that refuses means 503 as before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hookstream.core.config import KafkaSettings
from hookstream.ingest.publisher import NotStored, Publisher
from hookstream.ingest.spool import Spool

from .test_publisher import HEADERS, FakeProducer

BUDGET_S = 0.2


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path, max_bytes=1 << 24, max_age_s=3600, min_free_bytes=0)
    await spool.open()
    yield spool
    await spool.close()


def make(spool: Spool, producer: FakeProducer | None, *, broker_ok: bool = True,
         behind: bool = False, ack_timeout_s: float = 2.0) -> Publisher:
    publisher = Publisher(KafkaSettings(), ack_timeout_s=ack_timeout_s, max_in_flight=100,
                          max_in_flight_bytes=1 << 20, spool=spool, spool_budget_s=BUDGET_S,
                          behind=lambda: behind)
    publisher._producer = producer  # type: ignore[assignment]
    publisher._broker_ok = broker_ok
    return publisher


async def test_an_unacknowledged_batch_is_spooled_after_the_budget(spool: Spool) -> None:
    producer = FakeProducer()  # never acknowledges
    publisher = make(spool, producer)
    started = time.monotonic()
    await asyncio.gather(*(publisher.publish("raw", b"v%d" % i, b"k", HEADERS)
                           for i in range(5)))
    elapsed = time.monotonic() - started
    assert BUDGET_S * 0.9 <= elapsed < BUDGET_S + 0.5  # the budget, not ack_timeout_s (2 s)
    assert spool.records == 5
    assert publisher.ready  # Kafka is not, the spool is: a delivery now would be stored
    assert not publisher.kafka_ready
    assert publisher._in_flight == 0


async def test_while_ingest_runs_behind_a_late_ack_is_awaited_not_spooled(
        spool: Spool) -> None:
    """CPU overload (edge.LagShedder.behind): an ack arrives late because the loop is
    late, not the broker. Spooling it would double the work (write, then drain) when
    there is none to spare: the batch waits for its ack up to ack_timeout_s instead."""
    producer = FakeProducer()
    publisher = make(spool, producer, behind=True)
    request = asyncio.create_task(publisher.publish("raw", b"value", b"key", HEADERS))
    await asyncio.sleep(BUDGET_S * 2)  # past the spool budget
    assert not request.done() and spool.records == 0
    for future in producer.futures:
        future.set_result(object())
    await asyncio.wait_for(request, 1)  # acknowledged by Kafka: 202 without the spool
    assert spool.records == 0


async def test_while_ingest_runs_behind_a_timeout_still_counts_as_a_failure(
        spool: Spool) -> None:
    """Past ack_timeout_s the delivery is spooled, and the failure counts as any other
    (readiness, the producer's replacement): a misbehaving client also makes the loop
    late, and only a new producer ends that."""
    publisher = make(spool, FakeProducer(), behind=True, ack_timeout_s=BUDGET_S)
    await publisher.publish("raw", b"value", b"key", HEADERS)
    assert spool.records == 1
    assert publisher._failing_since is not None and not publisher.kafka_ready


async def test_without_a_producer_deliveries_go_straight_to_the_spool(spool: Spool) -> None:
    publisher = make(spool, None, broker_ok=False)
    started = time.monotonic()
    await publisher.publish("raw", b"value", b"key", HEADERS)
    assert time.monotonic() - started < BUDGET_S  # no budget spent waiting for Kafka
    assert spool.records == 1


async def test_a_kafka_error_is_spooled(spool: Spool) -> None:
    from aiokafka.errors import KafkaTimeoutError
    publisher = make(spool, FakeProducer(error=KafkaTimeoutError()))
    await publisher.publish("raw", b"value", None, HEADERS)
    assert spool.records == 1


async def test_acknowledged_deliveries_never_touch_the_spool(spool: Spool) -> None:
    publisher = make(spool, FakeProducer(resolve=True))
    await asyncio.gather(*(publisher.publish("raw", b"v", b"k", HEADERS) for _ in range(50)))
    assert spool.records == 0 and spool.bytes == 0


async def test_a_full_spool_answers_not_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100, max_age_s=3600, min_free_bytes=0)
    await spool.open()
    try:
        publisher = make(spool, None, broker_ok=False)
        await publisher.publish("raw", b"x" * 80, None, HEADERS)  # fits; the spool is full
        with pytest.raises(NotStored) as info:
            await publisher.publish("raw", b"x" * 80, None, HEADERS)
        assert info.value.reason == "spool_full"
        assert not publisher.ready  # neither Kafka nor the spool would store it
    finally:
        await spool.close()


async def test_spooled_records_drain_with_their_key_and_headers(spool: Spool) -> None:
    publisher = make(spool, None, broker_ok=False)
    await publisher.publish("raw", b"first", b"key-1", HEADERS)
    await publisher.publish("raw", b"second", None, [("hs-request-id", b"r2")])
    producer = FakeProducer(resolve=True)
    publisher._producer = producer  # type: ignore[assignment]
    publisher._broker_ok = True
    drainer = asyncio.create_task(spool.drain_forever(
        publisher.send_spooled, publisher._can_send, batch=10, rate=1000))
    try:
        async with asyncio.timeout(5):
            while spool.records:
                await asyncio.sleep(0.01)
    finally:
        drainer.cancel()
    assert [(r["value"], r["key"], r["headers"]) for r in producer.sent] == [
        (b"first", b"key-1", HEADERS), (b"second", None, [("hs-request-id", b"r2")])]


async def test_a_hanging_disk_answers_not_stored_within_the_ack_timeout(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hookstream.ingest import spool as spool_module

    def stalled(fd: int) -> None:
        time.sleep(1.5)  # a stalled network volume

    monkeypatch.setattr(spool_module.os, "fdatasync", stalled)
    publisher = Publisher(KafkaSettings(), ack_timeout_s=0.5, max_in_flight=100,
                          max_in_flight_bytes=1 << 20, spool=spool, spool_budget_s=BUDGET_S)
    started = time.monotonic()
    with pytest.raises(NotStored) as info:
        await publisher.publish("raw", b"value", None, HEADERS)
    assert info.value.reason == "spool_error"
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(1.2)  # let the stalled sync finish before the fixture closes
