"""Partitions added to a topic under load (issue 12, the fault suite's raw-partitions-added):
a producer is made to learn a partition it does not know yet instead of refusing it, and
group consumers refresh their metadata often enough to be assigned new partitions soon."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from hookstream.core import kafka as core_kafka
from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import (
    CONSUMER_METADATA_MAX_AGE_MS,
    make_consumer,
    submit_batches,
)


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, timestamp: Any, key: bytes | None, value: bytes | None,
               headers: Any) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer
        self.refreshes = 0
        self.cluster = self  # cluster.partitions_for_topic: the producer's metadata

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.producer.known)

    def force_metadata_update(self) -> asyncio.Future[bool]:
        self.refreshes += 1
        if self.refreshes >= self.producer.learns_after:
            self.producer.known = set(self.producer.cluster)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.set_result(True)
        return future


class FakeProducer:
    """A producer whose own metadata lags the cluster's (as aiokafka's does, refreshed
    every metadata_max_age_ms) and whose send_batch refuses a partition it does not
    know, like aiokafka's (AssertionError "Unrecognized partition")."""

    def __init__(self, known: set[int], cluster: set[int], learns_after: int = 1) -> None:
        self.known, self.cluster, self.learns_after = known, cluster, learns_after
        self.client = FakeClient(self)
        self.sent: list[tuple[str, int, FakeBatch]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(self.known)

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int
                         ) -> asyncio.Future[Any]:
        assert partition in self.known, "Unrecognized partition"
        self.sent.append((topic, partition, batch))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_kafka, "_LEARN_PARTITION_WAITS_S", (0.0, 0.0, 0.0))


async def test_a_known_partition_is_sent_without_a_metadata_refresh() -> None:
    producer = FakeProducer(known={0, 1, 2}, cluster={0, 1, 2})
    futures = await submit_batches(producer, "raw", 2, [(b"k", b"v", [])])  # type: ignore[arg-type]
    await asyncio.gather(*futures)
    assert [(t, p) for t, p, _ in producer.sent] == [("raw", 2)]
    assert producer.client.refreshes == 0


async def test_a_partition_added_since_the_producers_last_refresh_is_learned_then_sent() -> None:
    # The raw topic went from 3 to 6 partitions; the caller (ingest's probe) knows, the
    # producer's own metadata does not yet.
    producer = FakeProducer(known={0, 1, 2}, cluster=set(range(6)), learns_after=2)
    futures = await submit_batches(producer, "raw", 4, [(b"k", b"v", [])])  # type: ignore[arg-type]
    await asyncio.gather(*futures)
    assert [(t, p) for t, p, _ in producer.sent] == [("raw", 4)]
    assert producer.client.refreshes == 2


async def test_a_partition_that_never_shows_up_is_a_kafka_error_not_an_assertion() -> None:
    producer = FakeProducer(known={0, 1, 2}, cluster={0, 1, 2})
    with pytest.raises(UnknownTopicOrPartitionError) as info:
        await submit_batches(producer, "raw", 7, [(b"k", b"v", [])])  # type: ignore[arg-type]
    assert isinstance(info.value, KafkaError)  # the callers' failure path (spool, 503)
    assert producer.sent == []
    assert producer.client.refreshes == 3


async def test_group_consumers_refresh_metadata_every_few_seconds() -> None:
    # aiokafka's default (5 minutes) left records on new partitions unread that long.
    assert CONSUMER_METADATA_MAX_AGE_MS <= 15_000
    consumer = make_consumer(KafkaSettings(), "some-group", "raw")
    assert consumer._client._metadata_max_age_ms == CONSUMER_METADATA_MAX_AGE_MS
    tuned = make_consumer(KafkaSettings(), "some-group", "raw", metadata_max_age_ms=1000)
    assert tuned._client._metadata_max_age_ms == 1000
