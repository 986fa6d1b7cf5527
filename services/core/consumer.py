"""The consume loop every consumer service runs: batch, handle, commit, retry.

``handle(records)`` must return only when its outputs are durable (acked by
the broker, committed in the database); then the loop commits offset + 1 of
each partition's last record. If it raises ``Retryable``, nothing is
committed: the loop seeks back to the batch's first offsets and retries after
an exponential backoff with jitter, which pauses this consumer only.
Rebalances wait for the batch in progress (``on_partitions_revoked`` takes the
same lock), so a partition is never handed over with processed-but-uncommitted
records. SIGTERM finishes the current batch, commits, and leaves the group.

Per-record isolation: if ``prepare`` or ``handle`` raises anything other than
``Retryable`` (a bug, or an input nobody foresaw), the batch is handled again
one record at a time, and each record that still raises is handed to
``dead_letter`` (reason ``internal_error``, with the exception) so that the
partition moves on. No single record can stop a consumer: the loop ends only
on ``stop`` or on a fatal error of its own (``dead_letter`` itself failing for
a reason other than ``Retryable``), and then says so in a CRITICAL log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge

from .errors import NotDue, Retryable, describe

log = logging.getLogger(__name__)

# Called with the records of a batch, or with what ``prepare`` made of them.
Handler = Callable[[Any], Awaitable[Any]]
# Called with one record and what it raised; returns once the dead letter is acked
# (raises ``Retryable`` when it could not be stored).
DeadLetterer = Callable[[Any, BaseException], Awaitable[None]]

# Not a readiness check: a consumer waiting out a database outage is alive and must
# not be restarted or taken out of rotation; SREs alert on this gauge instead.
CONSUMER_RETRYING = Gauge("hookstream_consumer_retrying",
                          "1 while the consumer keeps retrying a failing batch", ["group"])
CONSUMER_ISOLATED = Counter("hookstream_consumer_isolated_records_total",
                            "Records dead-lettered because handling them raised unexpectedly "
                            "(reason internal_error)", ["group"])
CONSUMER_LAG = Gauge("hookstream_consumer_lag", "Records between the committed position and "
                     "the partition's end", ["group", "topic", "partition"])


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock, group: str) -> None:
        self._lock = lock
        self._group = group
        self.revocations = 0  # a fetched batch from before a revocation is never started

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # the batch in progress finishes and commits first
            self.revocations += 1
            for tp in revoked:
                try:
                    CONSUMER_LAG.remove(self._group, tp.topic, str(tp.partition))
                except KeyError:
                    pass  # never measured

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"group": self._group,
                                               "partitions": sorted(p.partition for p in assigned)})


Batch = dict[TopicPartition, list[Any]]


async def _identity(records: Sequence[Any]) -> Any:
    return records


class ConsumeLoop:
    """Fetch, prepare, handle, commit; one batch's handling overlaps the next one's
    fetch and ``prepare``.

    ``prepare`` must be pure (CPU work without side effects, e.g. decoding): it
    runs on batch N+1 while batch N's ``handler`` waits for acknowledgements, so
    a batch may be prepared and then dropped (after a failure or a rebalance)
    and fetched again. Side effects stay strictly in order: a handler starts
    only after the previous batch was handled and committed.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        group: str,
        handler: Handler,
        *,
        max_batch: int,
        poll_timeout_ms: int = 200,
        backoff_max_s: float = 30.0,
        prepare: Callable[[Sequence[Any]], Awaitable[Any]] | None = None,
        dead_letter: DeadLetterer | None = None,
    ) -> None:
        """Without ``dead_letter``, an unexpected exception is fatal (tests only: every
        service passes one)."""
        self._consumer = consumer
        self._topic = topic
        self._group = group
        self._handler = handler
        self._prepare = prepare or _identity
        self._dead_letter = dead_letter
        CONSUMER_ISOLATED.labels(group)
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._backoff_max_s = backoff_max_s
        self._lock = asyncio.Lock()
        self._listener = _DrainOnRevoke(self._lock, group)
        self.started = False
        self.healthy = True  # False while a batch keeps failing

    def subscribe(self) -> None:
        self._consumer.subscribe([self._topic], listener=self._listener)

    async def run(self, stop: asyncio.Event) -> None:
        self.started = True
        backoff = 0.5
        inflight: tuple[Batch, asyncio.Task[None]] | None = None
        try:
            while not stop.is_set():
                batch: Batch = await self._consumer.getmany(
                    timeout_ms=self._poll_timeout_ms, max_records=self._max_batch)
                revocations = self._listener.revocations
                # Prepared while the previous batch's handler awaits its acks.
                prepared = await self._prepare_batch(batch) if batch else None
                if inflight is not None:
                    previous, task = inflight
                    inflight = None
                    try:
                        await task
                    except NotDue as exc:
                        # A parked record waits for its time: read it again now, so
                        # that polls keep the consumer in its group meanwhile; what
                        # the handler finished before it is committed, not redone.
                        if exc.resume_at:
                            await self._commit(exc.resume_at)
                        self._rewind(previous, batch, resume_at=exc.resume_at)
                        continue
                    except Retryable as exc:
                        self.healthy = False
                        CONSUMER_RETRYING.labels(self._group).set(1)
                        delay = backoff * (0.5 + random.random() / 2)  # jitter
                        log.warning("batch failed; retrying", extra={
                            "group": self._group, "error": str(exc),
                            "retry_in_s": round(delay, 2)})
                        self._rewind(previous, batch)  # the failed batch and the fetched one
                        backoff = min(backoff * 2, self._backoff_max_s)
                        await _sleep_unless(stop, delay)
                        continue
                    self.healthy = True
                    CONSUMER_RETRYING.labels(self._group).set(0)
                    backoff = 0.5
                    await self._update_lag()
                if not batch:
                    await self._update_lag()
                    continue
                await self._lock.acquire()  # released by the task, after its commit
                if self._listener.revocations != revocations:
                    # Partitions changed hands since the fetch: the new assignment
                    # reads from committed offsets; this batch is not ours to start.
                    self._lock.release()
                    self._rewind(batch, {})
                    continue
                inflight = (batch, asyncio.create_task(self._handle(batch, prepared)))
        except Exception:
            log.critical("consumer stopping on a fatal error", exc_info=True,
                         extra={"group": self._group, "topic": self._topic})
            raise
        finally:
            if inflight is not None:  # drain: the batch in progress finishes and commits
                with contextlib.suppress(Retryable):
                    await inflight[1]

    async def _prepare_batch(self, batch: Batch) -> Any:
        try:
            return await self._prepare(_records(batch))
        except Exception as exc:  # the handler's turn isolates the record that raised
            return _Unprepared(exc)

    async def _handle(self, batch: Batch, prepared: Any) -> None:
        try:
            try:
                if isinstance(prepared, _Unprepared):
                    raise prepared.error
                await self._handler(prepared)
            except Retryable:
                raise
            except Exception as exc:
                if self._dead_letter is None:
                    raise
                log.error("batch raised; handling its records one by one", extra={
                    "group": self._group, "error": describe(exc)[:500],
                    "records": sum(len(p) for p in batch.values())})
                await self._one_by_one(_records(batch), self._dead_letter)
            await self._commit({tp: p[-1].offset + 1 for tp, p in batch.items()})
        finally:
            self._lock.release()

    async def _one_by_one(self, records: Sequence[Any], dead_letter: DeadLetterer) -> None:
        """Each record alone; whichever still raises is dead-lettered (handlers are
        idempotent per record, so the ones handled before the failure repeat safely)."""
        for record in records:
            try:
                await self._handler(await self._prepare([record]))
            except Retryable:
                raise
            except Exception as exc:
                CONSUMER_ISOLATED.labels(self._group).inc()
                await dead_letter(record, exc)

    def _rewind(self, *batches: Batch, resume_at: Mapping[TopicPartition, int] | None = None
                ) -> None:
        """Seek every partition of these batches back to its earliest fetched record, or
        to ``resume_at``'s offset where it names one (what was handled is done)."""
        first: dict[TopicPartition, int] = {}
        for batch in batches:
            for tp, records in batch.items():
                first[tp] = min(first.get(tp, records[0].offset), records[0].offset)
        first.update(resume_at or {})
        assigned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Lost the partitions mid-batch: their new owner reprocesses from the last
            # commit, and dedupe / idempotent writes absorb the repeat.
            log.warning("commit failed", extra={"group": self._group, "error": repr(exc)})

    async def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except KafkaError:
                continue
            CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(
                max(0, end - position))


@dataclasses.dataclass(frozen=True, slots=True)
class _Unprepared:
    """What ``prepare`` raised on a batch: its handling isolates records one by one."""

    error: Exception


def _records(batch: Batch) -> list[Any]:
    return [r for partition in batch.values() for r in partition]


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets: the graceful-drain trigger of every worker
    (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
