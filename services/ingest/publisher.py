"""The raw-topic publisher: bounded, time-limited, durable produces.

aiokafka has no ``buffer.memory`` limit and its idempotent producer can wait
forever while the broker is unreachable (aiokafka #1101), so every produce is
bounded twice: by an in-flight budget (count and bytes; over it, shed load) and
by ``ack_timeout_s`` (past it, report "not stored"). A produce given up on may
still reach the broker later; the normalizer's dedupe absorbs that duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..core.config import KafkaSettings
from ..core.kafka import make_producer
from . import metrics

log = logging.getLogger(__name__)


NOT_STORED_REASONS = ("not_connected", "overloaded", "ack_timeout", "kafka_error")


class NotStored(Exception):
    """The record was not acknowledged; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Publisher:
    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        ack_timeout_s: float,
        max_in_flight: int,
        max_in_flight_bytes: int,
        linger_ms: int = 2,
        probe_interval_s: float = 5.0,
    ) -> None:
        self._kafka = kafka
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._max_in_flight_bytes = max_in_flight_bytes
        self._linger_ms = linger_ms
        self._probe_interval_s = probe_interval_s
        self._producer: AIOKafkaProducer | None = None
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._broker_ok = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._producer is not None and self._broker_ok

    async def start(self) -> None:
        """Connect in the background: the process starts (and is live) without a broker."""
        self._supervisor = asyncio.create_task(self._supervise(), name="publisher-supervisor")

    async def _supervise(self) -> None:
        backoff = 0.5
        while self._producer is None:
            producer = make_producer(self._kafka, "ingest", linger_ms=self._linger_ms)
            try:
                await asyncio.wait_for(producer.start(), timeout=10)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("broker not reachable; retrying", extra={"error": repr(exc)})
                await _stop_quietly(producer, 5)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            self._producer = producer
            self._set_broker_ok(True)
            log.info("producer connected", extra={"bootstrap": self._kafka.bootstrap})
        while True:  # readiness probe: can we still reach the cluster?
            await asyncio.sleep(self._probe_interval_s)
            try:
                await asyncio.wait_for(
                    self._producer.client.fetch_all_metadata(), timeout=self._probe_interval_s
                )
                self._set_broker_ok(True)
            except (KafkaError, OSError, TimeoutError):
                self._set_broker_ok(False)

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
        """Return once the broker acknowledged the record with acks=all, else raise NotStored."""
        producer = self._producer
        if producer is None:
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
            # asyncio.timeout (not wait_for) adds no task per request. send() returns
            # once queued (it may wait for metadata or a full batch); the future
            # resolves on the broker's ack. A timeout cancels only this record's
            # future, which aiokafka skips when the batch completes.
            async with asyncio.timeout(self._ack_timeout_s):
                await (await producer.send(topic, value=value, key=key, headers=headers))
        except TimeoutError:
            raise NotStored("ack_timeout") from None
        except KafkaError as exc:
            log.warning("produce failed", extra={"error": repr(exc)})
            raise NotStored("kafka_error") from None
        finally:
            self._in_flight -= 1
            self._in_flight_bytes -= size
            metrics.IN_FLIGHT.dec()

    async def stop(self, timeout_s: float) -> None:
        """Flush what is queued, then close the producer, within ``timeout_s`` in all.

        With the broker gone both calls can hang (aiokafka #1101); whatever is
        still unacknowledged then was already answered 503, never 2xx.
        """
        if self._supervisor is not None:
            self._supervisor.cancel()
        producer, self._producer = self._producer, None
        if producer is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(producer.flush(), timeout=timeout_s * 0.8)
        except (TimeoutError, KafkaError):
            log.warning("flush did not finish before the shutdown timeout")
        await _stop_quietly(producer, max(0.5, deadline - time.monotonic()))


async def _stop_quietly(producer: AIOKafkaProducer, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=timeout_s)
    except (TimeoutError, KafkaError, OSError):
        log.warning("producer did not stop cleanly")
