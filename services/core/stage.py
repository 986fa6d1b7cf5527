"""The consume→produce skeleton every consumer service is built from (the normalizer,
each sink), in the spirit of arroyo's processing strategies: a service supplies its
steps (``prepare`` a batch, ``handle`` it, ``dead_letter`` one record) and these
pieces do the rest, once for all:

* :class:`Output`: publish records, await every acknowledgement, else ``Retryable``
  (the producer replaced when it is done for; nothing of the batch committed);
* :func:`dead_letter_record`: a dead letter on a stage's dead-letter topic (the
  original bytes and headers, plus why and where, ``core/dlq.py``);
* :func:`serving_health` and :func:`consume`: the process wiring (health server,
  consumers, one ``ConsumeLoop`` per topic, ``gc.freeze``, drain on ``stop``).

Offsets are committed by the loop only after ``handle`` returned, so a stage built
from these is at-least-once end to end (docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiokafka.errors import KafkaError

from . import dlq, health
from .consumer import ConsumeLoop, DeadLetterer, Handler
from .errors import Retryable
from .kafka import Outgoing, ProducerKeeper, publish_batched

log = logging.getLogger(__name__)


class Output:
    """Send-then-await-acks-else-``Retryable``: how a stage publishes a batch's outputs.

    Records are queued as whole per-partition batches, then every acknowledgement is
    awaited together (aiokafka #528). A broker error or ``timeout_s`` without every ack
    raises ``Retryable`` (after ``on_failure``, e.g. a metric): the caller's batch is
    retried and nothing of it committed; the producer keeper replaces a producer that
    is done for, so the retry goes out on a working one."""

    def __init__(self, producers: ProducerKeeper, timeout_s: float = 30.0,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.producers = producers
        self._timeout_s = timeout_s
        self._on_failure = on_failure

    async def send(self, records: Sequence[Outgoing], what: str = "publish") -> None:
        """Return once every record is acknowledged; ``what`` names the failure."""
        if not records:
            return
        producer = self.producers.producer
        assert producer is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                futures = await publish_batched(producer, records)
                # asyncio.wait (unlike gather under a timeout) never cancels the
                # futures: aiokafka keeps its batch bookkeeping intact on a timeout.
                if futures:
                    done, _ = await asyncio.wait(futures)
                    for future in done:
                        future.result()  # raises the KafkaError of a failed send
        except (KafkaError, TimeoutError) as exc:
            if self._on_failure is not None:
                self._on_failure()
            await self.producers.failed(exc)  # a new producer for the retry, if needed
            raise Retryable(f"{what} failed: {exc!r}") from exc
        self.producers.succeeded()


def dead_letter_record(record: Any, *, topic: str, reason: str, stage: str,
                       detail: str) -> Outgoing:
    """``record`` (a consumed record) as a dead letter on ``topic``: its key, bytes and
    headers unchanged, plus the ``hs-dlq-*`` headers (replayable as it stands)."""
    return Outgoing(topic, record.value, record.key, dlq.dead_letter_headers(
        record.headers, reason=reason, stage=stage, detail=detail, topic=record.topic,
        partition=record.partition, offset=record.offset))


@contextlib.asynccontextmanager
async def serving_health(checks: health.Health, host: str, port: int,
                         serve: bool = True) -> AsyncIterator[None]:
    """/healthz, /readyz and /metrics for the life of the block (``serve``: tests turn
    it off); stopped on the way out, whatever happened inside."""
    server = await health.serve_in_background(checks, host, port) if serve else None
    try:
        yield
    finally:
        if server is not None:
            server.cancel()
            with contextlib.suppress(BaseException):
                await server


@dataclasses.dataclass(frozen=True)
class Subscription:
    """One topic a stage consumes, in its own consumer group, and its steps."""

    topic: str
    group: str
    handler: Handler  # the side-effect half: returns once its outputs are durable
    prepare: Callable[[Sequence[Any]], Awaitable[Any]] | None = None  # pure, overlapped


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    max_batch: int
    poll_timeout_ms: int
    backoff_max_s: float
    shutdown_timeout_s: float  # on stop: longest wait for each consumer to leave


async def consume(
    subscriptions: Sequence[Subscription],
    stop: asyncio.Event,
    *,
    make_consumer: Callable[[str], Any],
    dead_letter: DeadLetterer,
    settings: LoopSettings,
    loops: list[ConsumeLoop] | None = None,
    on_consuming: Callable[[], None] | None = None,
) -> None:
    """Consume every subscription until ``stop`` is set: then each loop finishes its
    batch and commits, and each consumer leaves its group (bounded).

    ``make_consumer(group)`` builds an unstarted consumer; ``loops`` receives the loops
    as they start (readiness checks read it); ``on_consuming`` runs once everything is
    consuming, after the long-lived heap was frozen."""
    loops = [] if loops is None else loops
    consumers: list[Any] = []
    try:
        for sub in subscriptions:
            consumer = make_consumer(sub.group)
            loop = ConsumeLoop(consumer, sub.topic, sub.group, sub.handler,
                               prepare=sub.prepare, dead_letter=dead_letter,
                               max_batch=settings.max_batch,
                               poll_timeout_ms=settings.poll_timeout_ms,
                               backoff_max_s=settings.backoff_max_s)
            loop.subscribe()
            await consumer.start()
            consumers.append(consumer)
            loops.append(loop)
        # Everything allocated so far (schemas, clients) lives for the whole run:
        # keep it out of the cyclic collector's scans on the hot path.
        gc.freeze()
        if on_consuming is not None:
            on_consuming()
        await asyncio.gather(*(loop.run(stop) for loop in loops))
    finally:
        for consumer in consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), settings.shutdown_timeout_s)
