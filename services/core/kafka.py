"""Kafka client factories: the only place producers and consumers are built.

Every producer is durable by construction (``acks="all"`` and the idempotent
producer; aiokafka's defaults are neither), every consumer commits by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)
from murmurhash2 import murmurhash2

from .config import KafkaSettings

log = logging.getLogger(__name__)


# Kafka's default partitioner hashes keys with murmur2 under this seed; the
# native implementation gives the same partitions as aiokafka's pure-Python one
# (and Java clients'), at a fraction of the per-record cost.
_MURMUR2_SEED = 0x9747B28C


def partition_for(key: bytes | None, all_partitions: Sequence[int],
                  available: Sequence[int] | None = None) -> int:
    """Kafka's default partitioner: murmur2 of the key, or a random live partition."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmurhash2(key, _MURMUR2_SEED) & 0x7FFFFFFF) % len(all_partitions)]


def _partitioner(key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
    # aiokafka passes sorted partition lists; the index must follow the Java client's.
    return partition_for(key, all_partitions, available)


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
        "partitioner": _partitioner,
        "compression_type": None if settings.compression == "none" else settings.compression,
    }
    options.update(overrides)
    producer = AIOKafkaProducer(**options)
    throttle_metadata_retries(producer.client)
    return producer


# aiokafka's sender asks for a metadata refresh on every pass while a partition has no
# known leader ("try to update cluster metadata and wait backoff time", but it does not
# wait), and a refresh against a broker that refuses connections fails at once. With the
# broker down the sender spins: ~2,400 failed refreshes a second, each logged at ERROR,
# enough CPU to hold ingest's answers for seconds (seen in `hookstream faults`). A
# failed refresh now waits METADATA_RETRY_BACKOFF_S before it returns.
METADATA_RETRY_BACKOFF_S = 0.5


def throttle_metadata_retries(client: Any) -> None:
    """Make ``client`` (an aiokafka ``AIOKafkaClient``) wait METADATA_RETRY_BACKOFF_S
    after each failed metadata refresh, so that nothing can make it retry in a tight
    loop."""
    update = client._metadata_update

    async def update_or_back_off(cluster_metadata: Any, topics: Any) -> bool:
        updated = bool(await update(cluster_metadata, topics))
        if not updated:
            await asyncio.sleep(METADATA_RETRY_BACKOFF_S)
        return updated

    client._metadata_update = update_or_back_off


# Errors after which an idempotent producer never delivers again: the broker no longer
# knows its sequence numbers or epoch (e.g. after a broker restart). The Java client
# bumps its epoch; aiokafka ends its sender task for good. The only way on is a new
# producer (a new producer id), re-sending what was in flight; dedupe absorbs repeats.
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


def producer_wedged(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's sender task has ended: nothing sent on it will ever be
    delivered (aiokafka ends it on ``FATAL_PRODUCER_ERRORS``; later sends just wait)."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is not None and bool(task.done())


def reset_reason(producer: AIOKafkaProducer, *, fatal: bool, failing_since: float | None,
                 now: float, reset_after_s: float) -> str | None:
    """Why ``producer`` must be replaced by a new one now (a metric label), or None:
    ``fatal_error`` (a ``FATAL_PRODUCER_ERRORS`` error was seen), ``wedged`` (its
    sender ended), ``failing`` (sends failing since ``failing_since`` with no success
    for ``reset_after_s``)."""
    if fatal:
        return "fatal_error"
    if producer_wedged(producer):
        return "wedged"
    if failing_since is not None and now - failing_since >= reset_after_s:
        return "failing"
    return None


class ProducerKeeper:
    """A consumer service's producer, replaced by a new one (a new producer id) when it
    is done for: a ``FATAL_PRODUCER_ERRORS`` error, a dead sender, or sends failing for
    ``reset_after_s`` with no success. The caller's batch fails as ``Retryable`` and is
    retried on the new producer; dedupe and idempotent sinks absorb any repeat."""

    def __init__(self, kafka: KafkaSettings, role: str, reset_after_s: float = 10.0,
                 producer: AIOKafkaProducer | None = None) -> None:
        self._kafka = kafka
        self._role = role
        self._reset_after_s = reset_after_s
        self._failing_since: float | None = None
        self.producer = producer  # None until start(); an existing one for benchmarks
        self.resets = 0

    async def start(self) -> AIOKafkaProducer:
        if self.producer is None:  # given one (a benchmark's, a unit test's): kept
            self.producer = await start_producer(self._kafka, self._role)
        return self.producer

    def succeeded(self) -> None:
        self._failing_since = None

    async def failed(self, exc: BaseException) -> None:
        """Note a failed send; replace the producer if it is done for. Bounded: if the
        new producer cannot start yet (broker away), the old one stays for the retry."""
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
        old = self.producer
        if old is None:
            return
        reason = reset_reason(old, fatal=isinstance(exc, FATAL_PRODUCER_ERRORS),
                              failing_since=self._failing_since, now=now,
                              reset_after_s=self._reset_after_s)
        if reason is None:
            return
        new = make_producer(self._kafka, self._role, linger_ms=5)
        start_error = await try_start_producer(new, 10)
        if start_error is not None:
            log.warning("producer not replaced yet; broker not reachable",
                        extra={"role": self._role, "error": repr(start_error)})
            return
        self.producer, self._failing_since = new, None
        self.resets += 1
        log.warning("replaced the producer", extra={"role": self._role, "reason": reason,
                                                    "error": repr(exc)})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), timeout=5)

    async def stop(self, timeout_s: float) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=timeout_s)


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One record to publish with :func:`publish_batched`."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers


async def publish_batched(producer: AIOKafkaProducer, records: Iterable[Outgoing],
                          max_record_bytes: int | None = None) -> list[asyncio.Future[Any]]:
    """Queue many records as whole per-partition batches; returns one future per batch.

    For callers that already hold a batch (the normalizer's consumed batch):
    appending to a ``BatchBuilder`` skips ``send()``'s per-record metadata wait,
    partition lookup and accumulator round, which is most of a record's cost.
    Partitions are chosen exactly as ``send()`` would (:func:`partition_for`).
    Await the futures (``asyncio.wait``) for the acknowledgement of every record.
    """
    limit = max_record_bytes or producer._max_request_size
    partitions: dict[str, list[int]] = {}
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        size = len(record.value or b"") + len(record.key or b"")
        if size > limit:  # as send() does: the broker would refuse it, forever
            raise MessageSizeTooLargeError(f"a {size}-byte record exceeds {limit} bytes")
        all_partitions = partitions.get(record.topic)
        if all_partitions is None:
            all_partitions = partitions[record.topic] = sorted(
                await producer.partitions_for(record.topic))
        tp = (record.topic, partition_for(record.key, all_partitions))
        by_partition.setdefault(tp, []).append((record.key, record.value, record.headers))
    futures: list[asyncio.Future[Any]] = []
    for (topic, partition), batch in by_partition.items():
        futures += await submit_batches(producer, topic, partition, batch)
    return futures


async def submit_batches(producer: AIOKafkaProducer, topic: str, partition: int,
                         records: Iterable[Record]) -> list[asyncio.Future[Any]]:
    """Append records, in order, to batches of up to ``max_batch_size`` for one partition
    and submit each with ``send_batch``; returns one acknowledgement future per batch.

    Each batch is closed before it is submitted: the sender takes a complete batch
    without waiting out ``linger_ms``, and no ``send()`` elsewhere can add to it.
    A partition the producer does not know yet (just added) is learned first
    (``learn_partition``).
    """
    if partition not in known_partitions(producer, topic):
        await learn_partition(producer, topic, partition)
    futures: list[asyncio.Future[Any]] = []
    batch = producer.create_batch()
    for key, value, headers in records:
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            batch.close()  # full: send it and start the next one
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value, headers=headers)
    batch.close()
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


# Partitions added to a topic (``kafka-topics --alter --partitions``) reach a client
# only with its next metadata refresh. The client default is 5 minutes: the records
# that land on the new partitions meanwhile wait that long for a group consumer
# (only the group leader's refresh triggers the rebalance that assigns them). A
# metadata request every 10 s per consumer costs nothing measurable.
CONSUMER_METADATA_MAX_AGE_MS = 10_000

# Waits between forced metadata refreshes while a producer does not know a partition
# yet (``learn_partition``): about 2 s in all before giving up.
_LEARN_PARTITION_WAITS_S = (0.0, 0.1, 0.3, 0.6, 1.0)


def known_partitions(producer: AIOKafkaProducer, topic: str) -> set[int]:
    """The partitions of ``topic`` in ``producer``'s metadata as it is now: a lookup,
    not ``await partitions_for()`` (a coroutine per batch on ingest's hot path)."""
    return producer.client.cluster.partitions_for_topic(topic) or set()


async def learn_partition(producer: AIOKafkaProducer, topic: str, partition: int) -> None:
    """Refresh ``producer``'s metadata until it knows ``partition`` of ``topic``.

    A caller that picks partitions from a fresher view of the cluster than the
    producer's own (ingest's readiness probe learns partitions added to the raw
    topic within seconds; the producer's periodic refresh takes up to 5 minutes)
    would otherwise have ``send_batch`` refuse the partition with an
    ``AssertionError`` ("Unrecognized partition") on every send until then.
    Raises ``UnknownTopicOrPartitionError`` (a ``KafkaError``: the caller's usual
    failure path) if the partition is still unknown after about 2 s."""
    for wait_s in _LEARN_PARTITION_WAITS_S:
        await asyncio.sleep(wait_s)
        await producer.client.force_metadata_update()
        if partition in known_partitions(producer, topic):
            log.info("producer learned a new partition",
                     extra={"topic": topic, "partition": partition})
            return
    raise UnknownTopicOrPartitionError(
        f"partition {partition} of {topic} is not in the producer's metadata")


def make_consumer(
    settings: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: offsets follow downstream acknowledgement;
    partitions added to its topics are assigned within ``CONSUMER_METADATA_MAX_AGE_MS``
    (plus a rebalance)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": f"{settings.client_id}-{group_id or 'reader'}",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "metadata_max_age_ms": CONSUMER_METADATA_MAX_AGE_MS,
        "request_timeout_ms": max(settings.request_timeout_ms, 40000),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    consumer = AIOKafkaConsumer(*topics, **options)
    throttle_metadata_retries(consumer._client)
    return consumer


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


async def try_start_producer(producer: AIOKafkaProducer, timeout_s: float
                            ) -> BaseException | None:
    """Start ``producer`` within ``timeout_s``; None once started, else why not (the
    broker not reachable: a ``KafkaError``, ``OSError`` or timeout), the producer
    stopped again (bounded)."""
    try:
        await asyncio.wait_for(producer.start(), timeout=timeout_s)
        return None
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), timeout=5)
        return exc


async def start_producer(kafka: KafkaSettings, role: str, *,
                         factory: Callable[[], AIOKafkaProducer] | None = None,
                         start_timeout_s: float = 15.0) -> AIOKafkaProducer:
    """Start a producer, retrying with backoff (0.5 s doubling to 10 s) while the broker
    is unreachable: the one way every service starts its producer. ``factory`` builds
    each try's producer (default: ``make_producer(kafka, role, linger_ms=5)``)."""
    make = factory or (lambda: make_producer(kafka, role, linger_ms=5))
    delay = 0.5
    while True:
        producer = make()
        error = await try_start_producer(producer, start_timeout_s)
        if error is None:
            return producer
        log.warning("broker not reachable; retrying", extra={"error": repr(error)})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10)
