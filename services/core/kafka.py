"""Kafka client factories: the only place producers and consumers are built.

Every producer is durable by construction (``acks="all"`` and the idempotent
producer; aiokafka's defaults are neither), every consumer commits by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from .config import KafkaSettings

log = logging.getLogger(__name__)


def make_producer(settings: KafkaSettings, role: str, **overrides: Any) -> AIOKafkaProducer:
    """A producer whose acknowledgement means the record is on every in-sync replica."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": f"{settings.client_id}-{role}",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": settings.request_timeout_ms,
        "max_request_size": 2 * 1024 * 1024,
        # aiokafka's default batch (16 KiB) holds a handful of webhook bodies; while a
        # partition's one in-flight batch (idempotence) is out, every further send
        # would wait for it to drain. Big batches keep concurrent sends flowing.
        "max_batch_size": 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: offsets follow downstream acknowledgement."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": f"{settings.client_id}-{group_id or 'reader'}",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "request_timeout_ms": max(settings.request_timeout_ms, 40000),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, for consumers that assign rather than subscribe.

    ``partitions_for_topic`` only knows topics the client already tracks, so ask
    the cluster directly (aiokafka exposes no public call for this).
    """
    cluster = await consumer._client.fetch_all_metadata()
    partitions = cluster.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def end_offsets(settings: KafkaSettings, topic: str) -> dict[TopicPartition, int]:
    """The next offset of every partition of ``topic`` (where new records will land)."""
    consumer = make_consumer(settings, None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(await topic_partitions(consumer, topic)))
    finally:
        await consumer.stop()


async def scan(
    settings: KafkaSettings,
    topic: str,
    from_ms: int | None = None,
    to_ms: int | None = None,
    max_records: int = 1000,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Batches of every record of ``topic`` from ``from_ms`` (default: the beginning)
    up to the end offsets seen at the start (and record time <= ``to_ms``).

    No consumer group and no commits: for replay, redrive and inspection.
    """
    consumer = make_consumer(settings, None)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        if from_ms is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            found = await consumer.offsets_for_times({tp: from_ms for tp in partitions})
            for tp in partitions:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        pending = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=max_records)
            selected: list[ConsumerRecord[bytes, bytes]] = []
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] or (to_ms is not None
                                                     and record.timestamp > to_ms):
                        pending.discard(tp)
                        break
                    selected.append(record)
                if tp in pending and await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if selected:
                yield selected
    finally:
        await consumer.stop()


async def start_producer(kafka: KafkaSettings, role: str) -> AIOKafkaProducer:
    """Start a producer, retrying while the broker is unreachable."""
    delay = 0.5
    while True:
        producer = make_producer(kafka, role, linger_ms=5)
        try:
            await asyncio.wait_for(producer.start(), timeout=15)
            return producer
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("broker not reachable; retrying", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
