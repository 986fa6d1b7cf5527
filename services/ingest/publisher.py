"""The raw-topic publisher: bounded, time-limited, durable produces, coalesced.

aiokafka has no ``buffer.memory`` limit and its idempotent producer can wait
forever while the broker is unreachable (aiokafka #1101), so every produce is
bounded twice: by an in-flight budget (count and bytes; over it, shed load) and
by ``ack_timeout_s`` (past it, report "not stored"). A produce given up on may
still reach the broker later; the normalizer's dedupe absorbs that duplicate.

Records of concurrent requests are coalesced per partition: each partition has
one flusher task that takes every record waiting for it, appends them to one
closed batch (``create_batch``/``send_batch``) and resolves their requests when
the broker acknowledges that batch; records arriving meanwhile form the next
batch. That is the same pipelining aiokafka's accumulator does (one batch in
flight per partition, the next one filling), without its per-record Python
path (``send()``: metadata wait, partition lists, accumulator round, a
``RecordMetadata`` per record) and without a timer per request: the flusher
enforces the deadline once per batch, from its oldest record
(docs/perf/README.md has the measurements).

Producer recovery: after a broker restart, aiokafka's idempotent producer can be
left with sequence numbers or an epoch the broker no longer knows; its sender
then ends for good and every later send waits forever (``core.kafka``
``FATAL_PRODUCER_ERRORS``). The supervisor replaces such a producer with a new
one (a new producer id) at once, and any producer whose produces keep failing
for ``reset_after_s``. A batch that failed that way is re-sent on the new
producer while its deadline lasts, so its requests can still be answered 202.
Readiness is false while no producer is connected, the last probe failed, or
produces fail with none succeeding since.

A late ack says little about the broker while this process is behind (its event
loop runs late: CPU overload, ``behind()``): the ack may only be waiting for the
loop. Then a batch waits up to ``ack_timeout_s`` instead of the spool budget before
it is spooled: spooling would double the work of every delivery (write it, then
drain it) exactly when there is none to spare (docs/reliability.md, overload).
Failure accounting (readiness, replacing the producer) does not look at ``behind()``:
a client that misbehaves (a metadata storm) also makes the loop late, and only a
new producer ends that (the kill-ingest-spooling fault scenario).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from ..core.config import KafkaSettings
from ..core.kafka import (
    FATAL_PRODUCER_ERRORS,
    Record,
    make_producer,
    partition_for,
    producer_wedged,
    reset_reason,
    start_producer,
    submit_batches,
)
from . import metrics
from .spool import Spool, SpooledRecord, SpoolRefused

log = logging.getLogger(__name__)


NOT_STORED_REASONS = ("not_connected", "overloaded", "ack_timeout", "kafka_error",
                      "spool_full", "spool_error")


class NotStored(Exception):
    """The record was not acknowledged; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _PartitionQueue:
    """Records waiting for one partition's next batch, and their requests' futures."""

    __slots__ = ("flusher", "oldest", "records", "waiters", "wake")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.oldest = 0.0  # loop time the oldest waiting record was queued
        self.wake = asyncio.Event()
        self.flusher: asyncio.Task[None] | None = None


class Publisher:
    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        ack_timeout_s: float,
        max_in_flight: int,
        max_in_flight_bytes: int,
        probe_interval_s: float = 5.0,
        reset_after_s: float = 10.0,
        producer_factory: Callable[[], AIOKafkaProducer] | None = None,
        spool: Spool | None = None,
        spool_budget_s: float = 1.0,
        drain_batch: int = 500,
        drain_rate: float = 2000.0,
        behind: Callable[[], bool] | None = None,
    ) -> None:
        self._kafka = kafka
        # Whether this process runs behind (edge.LagShedder.behind): slow acks are ours.
        self._behind = behind or _never
        self._spool = spool
        self._spool_budget_s = spool_budget_s
        self._drain_batch = drain_batch
        self._drain_rate = drain_rate
        self._drainer: asyncio.Task[None] | None = None
        self._reset_after_s = reset_after_s
        self._new_producer = producer_factory or (lambda: make_producer(kafka, "ingest"))
        self._failing_since: float | None = None  # loop time of the first failure since a success
        self._trouble = asyncio.Event()  # set by a flusher that saw the producer is done for
        self._closing: set[asyncio.Task[None]] = set()
        self._fatal = False  # the current producer hit a fatal error: replace it now
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._max_in_flight_bytes = max_in_flight_bytes
        self._probe_interval_s = probe_interval_s
        self._producer: AIOKafkaProducer | None = None
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._broker_ok = False
        self._supervisor: asyncio.Task[None] | None = None
        self._partitions: dict[str, list[int]] = {}
        self._queues: dict[tuple[str, int], _PartitionQueue] = {}

    @property
    def ready(self) -> bool:
        """Whether a delivery arriving now would be stored: by Kafka, or by the spool."""
        return self.kafka_ready or (self._spool is not None and self._spool.accepting)

    @property
    def kafka_ready(self) -> bool:
        """Whether Kafka would acknowledge a delivery arriving now."""
        return self._can_send() and self._failing_since is None

    def _can_send(self) -> bool:
        producer = self._producer
        return producer is not None and self._broker_ok and not producer_wedged(producer)

    async def start(self) -> None:
        """Open the spool (recovering what a previous run left), then connect in the
        background: the process starts (and is live) without a broker."""
        if self._spool is not None:
            await self._spool.open()
            self._drainer = asyncio.create_task(
                self._spool.drain_forever(self.send_spooled, self._can_send,
                                          batch=self._drain_batch, rate=self._drain_rate),
                name="spool-drainer")
        self._supervisor = asyncio.create_task(self._supervise(), name="publisher-supervisor")

    async def _supervise(self) -> None:
        """Connect; then probe the cluster every ``probe_interval_s`` and replace the
        producer when it is done for (woken at once by a flusher that saw it)."""
        while True:
            if self._producer is None:
                await self._connect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), timeout=self._probe_interval_s)
            self._trouble.clear()
            reason = self._reset_reason()
            if reason is not None:
                self._replace_producer(reason)
                continue
            await self._probe()

    async def _connect(self) -> None:
        self._producer = await start_producer(self._kafka, "ingest", factory=self._new_producer,
                                              start_timeout_s=10)
        self._failing_since = None
        self._set_broker_ok(True)
        log.info("producer connected", extra={"bootstrap": self._kafka.bootstrap})

    async def _probe(self) -> None:
        """Readiness: can we still reach the cluster? Also learns new partitions."""
        producer = self._producer
        if producer is None:
            return
        try:
            cluster = await asyncio.wait_for(
                producer.client.fetch_all_metadata(), timeout=self._probe_interval_s
            )
            self._set_broker_ok(True)
            for topic in self._partitions:  # partitions added to the topic since
                found = cluster.partitions_for_topic(topic)
                if found:
                    self._partitions[topic] = sorted(found)
        except (KafkaError, OSError, TimeoutError):
            self._set_broker_ok(False)
        except Exception:  # the supervisor must outlive any surprise from the client
            log.exception("readiness probe failed")
            self._set_broker_ok(False)

    def _reset_reason(self) -> str | None:
        producer = self._producer
        if producer is None:
            return None
        return reset_reason(producer, fatal=self._fatal, failing_since=self._failing_since,
                            now=asyncio.get_running_loop().time(),
                            reset_after_s=self._reset_after_s)

    def _replace_producer(self, reason: str) -> None:
        """Drop the current producer (its stop runs in the background, bounded) so that
        the supervisor connects a new one with a new producer id."""
        producer, self._producer = self._producer, None
        self._fatal = False
        self._failing_since = None
        self._set_broker_ok(False)
        metrics.PRODUCER_RESETS.labels(reason).inc()
        log.warning("replacing the producer", extra={"reason": reason})
        if producer is not None:
            task = asyncio.create_task(_stop_quietly(producer, 5))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _produce_failed(self, producer: AIOKafkaProducer | None, exc: BaseException) -> None:
        if self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()
        if producer is not None and producer is self._producer and (
                isinstance(exc, FATAL_PRODUCER_ERRORS) or producer_wedged(producer)):
            self._fatal = True
            self._trouble.set()

    def _set_broker_ok(self, ok: bool) -> None:
        if ok != self._broker_ok:
            log.log(logging.INFO if ok else logging.WARNING, "broker reachable: %s", ok)
        self._broker_ok = ok
        metrics.BROKER_READY.set(1 if ok else 0)

    async def publish(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Return once the broker acknowledged the record with acks=all, or the spool has
        it on disk; else raise NotStored."""
        producer = self._producer
        spool = self._spool
        if producer is None and spool is None:
            raise NotStored("not_connected")
        size = len(value)
        if (
            self._in_flight >= self._max_in_flight
            or self._in_flight_bytes + size > self._max_in_flight_bytes
        ):
            raise NotStored("overloaded")
        self._in_flight += 1
        self._in_flight_bytes += size
        metrics.IN_FLIGHT.inc()
        try:
            partitions = self._partitions.get(topic)
            if spool is not None and (producer is None or not self._broker_ok):
                # Kafka is known to be away: straight to disk, no budget spent waiting.
                await self._to_spool(spool, topic, [(key, value, headers)], "not_connected")
                return
            assert producer is not None
            if partitions is None:  # once per topic; the readiness probe refreshes it
                try:
                    async with asyncio.timeout(self._spool_budget_s if spool is not None
                                               else self._ack_timeout_s):
                        partitions = sorted(await producer.partitions_for(topic))
                except (TimeoutError, KafkaError):
                    if spool is None:
                        raise
                    await self._to_spool(spool, topic, [(key, value, headers)],
                                         "not_connected")
                    return
                self._partitions[topic] = partitions
            queue = self._queue(topic, partition_for(key, partitions))
            loop = asyncio.get_running_loop()
            acked: asyncio.Future[None] = loop.create_future()
            if not queue.records:
                queue.oldest = loop.time()
            queue.records.append((key, value, headers))
            queue.waiters.append(acked)
            queue.wake.set()
            await acked  # the flusher resolves it: ack, TimeoutError or KafkaError
        except TimeoutError:
            raise NotStored("ack_timeout") from None
        except KafkaError as exc:
            log.warning("produce failed", extra={"error": repr(exc)})
            raise NotStored("kafka_error") from None
        # NotStored (the spool refused) passes through as it is.
        finally:
            self._in_flight -= 1
            self._in_flight_bytes -= size
            metrics.IN_FLIGHT.dec()

    def _queue(self, topic: str, partition: int) -> _PartitionQueue:
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = self._queues[(topic, partition)] = _PartitionQueue()
            queue.flusher = asyncio.create_task(self._flush_forever(topic, partition, queue),
                                                name=f"flush-{topic}-{partition}")
        return queue

    async def _flush_forever(self, topic: str, partition: int, queue: _PartitionQueue) -> None:
        while True:
            await queue.wake.wait()
            queue.wake.clear()
            if not queue.records:
                continue
            records, waiters, oldest = queue.records, queue.waiters, queue.oldest
            queue.records, queue.waiters = [], []
            spool = self._spool
            spooling = spool is not None and spool.accepting
            try:
                # One deadline for the batch, from its oldest record: no record waits
                # longer than ack_timeout_s (spool_budget_s with the spool taking
                # records), even behind a stuck batch.
                # While this process runs behind, a slow ack is its own doing: wait
                # for it as long as without a spool rather than spool it (module doc).
                budget = (self._spool_budget_s if spooling and not self._behind()
                          else self._ack_timeout_s)
                async with asyncio.timeout_at(oldest + budget):
                    await self._send(topic, partition, records)
            except (TimeoutError, KafkaError) as exc:
                self._produce_failed(self._producer, exc)
                if spool is None:
                    _fail(waiters, exc)
                    continue
                # The send goes on in the background: if it lands after all, the drained
                # copy is a duplicate that the normalizer's dedupe absorbs.
                reason = "ack_budget" if isinstance(exc, TimeoutError) else "kafka_error"
                try:
                    await self._to_spool(spool, topic, records, reason)
                except NotStored as refused:
                    _fail(waiters, refused)
                else:
                    _succeed(waiters)
            except asyncio.CancelledError:  # stop(): these requests are answered too
                _fail(waiters, KafkaConnectionError("shutting down"))
                raise
            except Exception as exc:  # never leave a request hanging; never die
                log.exception("flush failed", extra={"topic": topic, "partition": partition})
                _fail(waiters, KafkaError(repr(exc)))
            else:
                _succeed(waiters)

    async def _send(self, topic: str, partition: int, records: list[Record]) -> None:
        """Send and await the acks; after a fatal producer error, re-send on the
        replacement producer (the caller's deadline bounds the whole)."""
        while True:
            producer = self._producer
            if producer is None:
                raise KafkaConnectionError("producer stopped")
            try:
                for ack in await submit_batches(producer, topic, partition, records):
                    await ack
            except FATAL_PRODUCER_ERRORS as exc:
                self._produce_failed(producer, exc)
                log.warning("fatal producer error; re-sending on a new producer",
                            extra={"error": repr(exc), "records": len(records)})
                while self._producer is None or self._producer is producer:
                    await asyncio.sleep(0.05)  # until the supervisor connected a new one
                continue
            self._failing_since = None
            return

    async def _to_spool(self, spool: Spool, topic: str, records: list[Record],
                        reason: str) -> None:
        received_at_ms = time.time_ns() // 1_000_000
        try:
            # A disk that hangs (a stalled network volume) must not hold the request
            # past the provider's window: 503. If the write lands later after all, the
            # drained copy is a duplicate of the provider's retry, absorbed by dedupe.
            async with asyncio.timeout(self._ack_timeout_s):
                await spool.append([SpooledRecord(topic, key, value or b"", headers,
                                                  received_at_ms)
                                    for key, value, headers in records], reason)
        except SpoolRefused as exc:
            log.warning("delivery not spooled", extra={"reason": exc.reason,
                                                       "detail": str(exc)})
            raise NotStored(exc.reason) from None
        except TimeoutError:
            log.error("spool write not synced within the ack timeout; answered 503")
            raise NotStored("spool_error") from None

    async def send_spooled(self, records: list[SpooledRecord]) -> None:
        """The drainer's send: every record to its partition (by key, as ``publish``),
        returning once all are acknowledged; raises on any failure or after
        ``ack_timeout_s``."""
        producer = self._producer
        if producer is None:
            raise KafkaConnectionError("no producer")
        by_partition: dict[tuple[str, int], list[Record]] = {}
        async with asyncio.timeout(self._ack_timeout_s):
            for record in records:
                partitions = self._partitions.get(record.topic)
                if partitions is None:
                    partitions = sorted(await producer.partitions_for(record.topic))
                    self._partitions[record.topic] = partitions
                by_partition.setdefault(
                    (record.topic, partition_for(record.key, partitions)), []
                ).append((record.key, record.value, record.headers))
            try:
                acks = [ack for (topic, partition), batch in by_partition.items()
                        for ack in await submit_batches(producer, topic, partition, batch)]
                await asyncio.gather(*acks)
            except (KafkaError, TimeoutError) as exc:
                self._produce_failed(producer, exc)
                raise
        self._failing_since = None

    async def stop(self, timeout_s: float) -> None:
        """Flush what is queued, then close the producer, within ``timeout_s`` in all.

        With the broker gone both calls can hang (aiokafka #1101); whatever is
        still unacknowledged then was already answered 503, never 2xx.
        """
        if self._supervisor is not None:
            self._supervisor.cancel()
        for closing in list(self._closing):  # replaced producers still stopping
            with contextlib.suppress(Exception):
                await closing
        deadline = time.monotonic() + timeout_s
        # Requests still waiting get their answer (ack, spool or deadline) before the
        # producer goes; uvicorn has already stopped taking new ones.
        while self._in_flight and time.monotonic() < deadline - timeout_s / 2:
            await asyncio.sleep(0.01)
        for queue in self._queues.values():  # any left are answered "not stored"
            if queue.flusher is not None:
                queue.flusher.cancel()
            _fail(queue.waiters, KafkaConnectionError("shutting down"))
        await self._stop_spool(deadline - timeout_s / 4)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.flush(),
                                   timeout=max(0.1, (deadline - time.monotonic()) * 0.8))
        except (TimeoutError, KafkaError):
            log.warning("flush did not finish before the shutdown timeout")
        await _stop_quietly(producer, max(0.5, deadline - time.monotonic()))


    async def _stop_spool(self, drain_until: float) -> None:
        """Drain what the spool holds while Kafka takes it (until ``drain_until``); what
        is left stays on disk for the next start."""
        spool = self._spool
        if spool is None:
            return
        while spool.records and self._can_send() and time.monotonic() < drain_until:
            await asyncio.sleep(0.05)
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drainer
        if spool.records:
            log.warning("spool not drained at shutdown; it drains at the next start",
                        extra={"records": spool.records})
        await spool.close()


def _never() -> bool:
    return False


def _succeed(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():  # a request cancelled meanwhile has moved on
            waiter.set_result(None)


def _fail(waiters: list[asyncio.Future[None]], error: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=timeout_s)
    except (TimeoutError, KafkaError, OSError):
        log.warning("producer did not stop cleanly")
