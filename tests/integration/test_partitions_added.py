"""Partitions added to a topic in use, on the real broker: a producer sends to a new
partition as soon as its caller knows it (ingest's probe learns it first), and a group
consumer subscribed to the topic is assigned the new partitions and reads their records
from the start within seconds, not after aiokafka's default 5-minute metadata age."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import make_consumer, make_producer, submit_batches


async def test_new_partitions_are_produced_to_and_consumed(stack: KafkaSettings) -> None:
    topic = f"test.partitions.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 3, 1)])
    producer = make_producer(stack, "test")
    consumer = make_consumer(stack, f"test-partitions-{uuid.uuid4().hex[:8]}", topic)
    await producer.start()
    await consumer.start()
    seen: dict[int, set[bytes]] = {}

    async def read_until(want: dict[int, set[bytes]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(not values <= seen.get(p, set()) for p, values in want.items()):
            assert time.monotonic() < deadline, f"read {seen}, want {want}"
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                seen.setdefault(tp.partition, set()).update(r.value or b"" for r in records)

    try:
        for partition in range(3):
            for ack in await submit_batches(producer, topic, partition,
                                            [(None, f"old-{partition}".encode(), [])]):
                await ack
        await read_until({p: {f"old-{p}".encode()} for p in range(3)}, 60)

        await admin.create_partitions({topic: NewPartitions(total_count=6)})
        # The caller learns the partitions from fresh cluster metadata, as ingest's
        # readiness probe does; the producer's own metadata still says 3.
        for _ in range(50):
            cluster = await producer.client.fetch_all_metadata()
            if len(cluster.partitions_for_topic(topic) or ()) == 6:
                break
            await asyncio.sleep(0.1)
        assert len(await producer.partitions_for(topic)) == 3
        started = time.monotonic()
        for partition in range(3, 6):
            for ack in await submit_batches(producer, topic, partition,
                                            [(None, f"new-{partition}".encode(), [])]):
                await ack
        assert time.monotonic() - started < 10
        # Consumed from the new partitions' start: within the consumer's metadata age
        # (10 s) and a rebalance.
        await read_until({p: {f"new-{p}".encode()} for p in range(3, 6)}, 45)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
