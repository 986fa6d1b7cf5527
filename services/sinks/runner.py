"""The sink runner: what every sink worker shares, so a new sink is one module.

A sink implements the contract of :mod:`hookstream.sinks.base` (``wants`` to
filter by canonical type, ``write`` a batch durably); :class:`SinkRunner` does
the rest:

* batching (``getmany``) and commit-after-write (the shared ``ConsumeLoop``);
* three outcomes per event, decided by the sink's ``write``:
  - written (or not wanted): committed;
  - transient failure for the whole batch (``Retryable``: database down, a 5xx,
    a 429): the batch is retried in place with backoff and jitter; this pauses
    this sink only, memory stays flat;
  - deferred (``WriteOutcome.deferred``: e.g. the CRM's circuit is open): parked
    on the sink's retry topic ``hookstream.sink.<name>.retry.v1`` with a
    not-before time, so the main partition moves on; a second loop re-offers
    parked events when due, with growing delays, and dead-letters them after
    ``max_attempts``;
  - held (``WriteOutcome.held``: the destination named the time it takes work
    again, e.g. the CRM's daily API limit resets at midnight): parked the same
    way until that time, without spending one of the event's attempts; the
    retry loop offers the parked events that are due, sending one not due yet
    back to the topic's tail when an event due now is behind it, and waits only
    when none is due, in slices of ``PARKED_WAIT_SLICE_S`` (``NotDue`` between
    them), polling in between, so an hours-long wait keeps its consumer in the
    group;
  - permanent failure (``WriteOutcome.failed``): the sink's dead-letter topic
    ``hookstream.sink.<name>.dlq.v1`` with the reason, the record's bytes and
    headers;
* graceful drain on SIGTERM, health/readiness/metrics endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka import TopicPartition
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from ..core import dlq, health, logs, topics
from ..core.config import ConfigError, KafkaSettings, LogSettings, env, help_epilog, load
from ..core.consumer import ConsumeLoop, stop_on_signals
from ..core.errors import (
    INTERNAL_ERROR,
    MALFORMED_EVENT,
    RETRIES_EXHAUSTED,
    SINK_ERROR,
    NotDue,
    Retryable,
    describe,
    sink_stage,
)
from ..core.events import is_test
from ..core.headers import H_ATTEMPT, H_EVENT_TYPE, H_NOT_BEFORE
from ..core.kafka import Outgoing, ProducerKeeper, make_consumer
from ..core.stage import (
    LoopSettings,
    Output,
    Subscription,
    consume,
    dead_letter_record,
    serving_health,
)
from ..core.times import iso_to_ms
from .base import ParsedBatch, Sink, SinkEvent, WriteOutcome

log = logging.getLogger(__name__)

# The longest the retry handler waits for a parked event in one go; a tenth of
# aiokafka's max.poll.interval.ms (300 s), so the consumer always polls in time.
PARKED_WAIT_SLICE_S = 30.0


EVENTS = PromCounter("hookstream_sink_events_total",
                     "Canonical events handled by a sink, by outcome "
                     "(written, skipped, deferred, dead_letter)", ["sink", "outcome"])
WRITE_SECONDS = Histogram("hookstream_sink_write_seconds", "Time of one batch write",
                          ["sink"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                             1, 2.5, 5, 10, 30))
BATCH_SIZE = Histogram("hookstream_sink_batch_size", "Events per batch written", ["sink"],
                       buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500))
RETRIES = PromCounter("hookstream_sink_batch_retries_total",
                      "Batches retried after a transient failure", ["sink"])
END_TO_END = Histogram("hookstream_sink_end_to_end_seconds",
                       "From ingest's receive time to the sink's durable write", ["sink"],
                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
TEST_SKIPPED = PromCounter("hookstream_sink_test_events_skipped_total",
                           "Test deliveries (canonical `test: true`) a sink left alone: "
                           "committed, never written, parked or dead-lettered (also "
                           "counted as skipped in hookstream_sink_events_total)", ["sink"])
DEFERRED_DUE = Gauge("hookstream_sink_retry_oldest_age_seconds",
                     "Age of the parked event being re-offered (0 when none)", ["sink"])


@dataclasses.dataclass(frozen=True)
class SinkSettings:
    """Settings every sink reads; the sink's name fills the ``{name}`` defaults."""

    max_batch: int = env("HOOKSTREAM_SINK_MAX_BATCH", 500, "most events written per batch")
    poll_timeout_ms: int = env("HOOKSTREAM_SINK_POLL_TIMEOUT_MS", 200,
                               "longest wait for a batch to fill")
    backoff_max_s: float = env("HOOKSTREAM_SINK_BACKOFF_MAX_S", 30.0,
                               "longest pause between retries of a failing batch")
    retry_delays_s: tuple[str, ...] = env(
        "HOOKSTREAM_SINK_RETRY_DELAYS_S", ("5", "30", "120", "600", "1800"),
        "delays before re-offering a parked event, per attempt; past the last: dead letter")
    group_id: str = env("HOOKSTREAM_SINK_GROUP", "",
                        "consumer group (empty: hookstream-sink-<name>)")
    http_host: str = env("HOOKSTREAM_SINK_HTTP_HOST", "127.0.0.1",
                         "address of /healthz, /readyz, /metrics")
    http_port: int = env("HOOKSTREAM_SINK_HTTP_PORT", 0,
                         "port of /healthz, /readyz, /metrics (0: the sink's default)")
    shutdown_timeout_s: float = env("HOOKSTREAM_SINK_SHUTDOWN_TIMEOUT_S", 20.0,
                                    "on SIGTERM: longest wait to finish, commit and leave")

    def delays(self) -> list[float]:
        return [float(d) for d in self.retry_delays_s]


def sink_topics(kafka: KafkaSettings, name: str) -> tuple[str, str]:
    """(retry topic, dead-letter topic) of sink ``name``."""
    prefix = f"{kafka.sink_topic_prefix}.{name}"
    return f"{prefix}.retry.v1", f"{prefix}.dlq.v1"


def topic_plan(kafka: KafkaSettings, name: str) -> list[topics.TopicSpec]:
    retry, dead = sink_topics(kafka, name)
    return [
        topics.TopicSpec(retry, 1, 7 * topics.DAY_MS, f"parked events of the {name} sink"),
        topics.TopicSpec(dead, 1, 30 * topics.DAY_MS, f"dead letters of the {name} sink"),
    ]


class SinkRunner:
    def __init__(self, sink: Sink, kafka: KafkaSettings, settings: SinkSettings,
                 group_id: str | None = None, *, producers: ProducerKeeper | None = None,
                 consumer_factory: Callable[[str], Any] | None = None) -> None:
        """``producers`` and ``consumer_factory`` (group id -> an unstarted consumer) are
        the real ones unless given: the unit tests give in-memory ones."""
        self.sink = sink
        self.kafka = kafka
        self.settings = settings
        self.group_id = group_id or settings.group_id or f"hookstream-sink-{sink.name}"
        self.retry_topic, self.dlq_topic = sink_topics(kafka, sink.name)
        self.stage = sink_stage(sink.name)
        self._producers = producers or ProducerKeeper(kafka, f"sink-{sink.name}")
        self._output = Output(self._producers)
        self._make_consumer = consumer_factory or (lambda group: make_consumer(
            kafka, group, max_poll_records=settings.max_batch))
        self._loops: list[ConsumeLoop] = []
        self._stop = asyncio.Event()
        name = sink.name  # every series of this sink exists from the start, at 0
        for outcome in ("written", "skipped", "deferred", "dead_letter"):
            EVENTS.labels(name, outcome)
        for metric in (RETRIES, WRITE_SECONDS, BATCH_SIZE, END_TO_END, DEFERRED_DUE,
                       TEST_SKIPPED):
            metric.labels(name)

    # ------------------------------------------------------------ outcomes
    async def _send_all(self, sends: list[Outgoing]) -> None:
        await self._output.send(sends, "parking/dead-lettering")

    def _park(self, item: SinkEvent, detail: str) -> Outgoing:
        attempt = item.attempt + 1
        delays = self.settings.delays()
        if attempt > len(delays):
            return self._dead(item, RETRIES_EXHAUSTED, f"after {item.attempt} attempts: {detail}")
        not_before = time.time_ns() // 1_000_000 + int(delays[attempt - 1] * 1000)
        return self._parked(item, attempt, not_before)

    def _hold(self, item: SinkEvent, not_before_ms: int) -> Outgoing:
        return self._parked(item, item.attempt, not_before_ms)

    def _parked(self, item: SinkEvent, attempt: int, not_before_ms: int) -> Outgoing:
        headers = [(k, v) for k, v in item.record.headers
                   if k not in (H_ATTEMPT, H_NOT_BEFORE)]
        headers += [(H_ATTEMPT, str(attempt).encode()),
                    (H_NOT_BEFORE, str(not_before_ms).encode())]
        return Outgoing(self.retry_topic, item.record.value, item.record.key, headers)

    def _dead(self, item: SinkEvent, reason: str, detail: str) -> Outgoing:
        return dead_letter_record(item.record, topic=self.dlq_topic, reason=reason,
                                  stage=self.stage, detail=detail)

    async def _offer(self, items: list[SinkEvent], malformed: list[SinkEvent]) -> None:
        """Write ``items``; park what is deferred, dead-letter what failed or is malformed."""
        name = self.sink.name
        outcome = WriteOutcome()
        if items:
            started = time.perf_counter()
            try:
                outcome = await self.sink.write(items)
            except Retryable:
                RETRIES.labels(name).inc()
                raise
            except Exception:
                # A bug or an event the sink cannot handle must not stop the partition:
                # offer the events one by one and dead-letter the ones that still fail.
                log.exception("sink write raised; isolating the failing events",
                              extra={"sink": name, "events": len(items)})
                outcome = await self._write_one_by_one(items)
            WRITE_SECONDS.labels(name).observe(time.perf_counter() - started)
            BATCH_SIZE.labels(name).observe(len(items))
        sends = [self._park(item, detail) for item, detail in outcome.deferred]
        sends += [self._hold(item, not_before) for item, _, not_before in outcome.held]
        sends += [self._dead(item, reason, detail) for item, reason, detail in outcome.failed]
        sends += [self._dead(item, MALFORMED_EVENT, "not a canonical event JSON object")
                  for item in malformed]
        await self._send_all(sends)

        not_written = ({id(i) for i, _ in outcome.deferred}
                       | {id(i) for i, _, _ in outcome.failed}
                       | {id(i) for i, _, _ in outcome.held})
        now_ms = time.time_ns() // 1_000_000
        counts: Counter[str] = Counter()
        for item in items:
            if id(item) in not_written:
                continue
            counts["written"] += 1
            received = iso_to_ms(item.event.get("received_at"))
            if received is not None:
                END_TO_END.labels(name).observe(max(0, now_ms - received) / 1000)
        counts["deferred"] += len(outcome.deferred) + len(outcome.held)
        counts["dead_letter"] += len(outcome.failed) + len(malformed)
        for outcome_name, n in counts.items():
            EVENTS.labels(name, outcome_name).inc(n)

    async def _write_one_by_one(self, items: list[SinkEvent]) -> WriteOutcome:
        combined = WriteOutcome()
        for item in items:
            try:
                single = await self.sink.write([item])
            except Retryable:
                RETRIES.labels(self.sink.name).inc()
                raise
            except Exception as exc:
                combined.failed.append((item, SINK_ERROR, repr(exc)[:500]))
                continue
            combined.deferred.extend(single.deferred)
            combined.failed.extend(single.failed)
            combined.held.extend(single.held)
        return combined

    def _parse(self, records: Sequence[Any], attempt_of: Callable[[Any], int]) -> ParsedBatch:
        wanted: list[SinkEvent] = []
        malformed: list[SinkEvent] = []
        skipped = 0
        for record in records:
            kind = dlq.header(record.headers, H_EVENT_TYPE)
            if kind is not None and not self.sink.wants(kind):
                skipped += 1  # cheap: filtered on the header, never parsed
                continue
            try:
                event = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                event = None
            item = SinkEvent(event if isinstance(event, dict) else {}, record,
                             attempt_of(record))
            if not isinstance(event, dict):
                malformed.append(item)
            elif is_test(event) and not self.sink.takes_test_events:
                skipped += 1
                self._skip_test(item)
            elif self.sink.wants(item.type):
                wanted.append(item)
            else:
                skipped += 1
        return wanted, malformed, skipped

    def _skip_test(self, item: SinkEvent) -> None:
        """A test delivery: counted and logged (setting up an integration is visible),
        then committed with the batch; never written, parked or dead-lettered."""
        TEST_SKIPPED.labels(self.sink.name).inc()
        log.info("test delivery skipped", extra={
            "sink": self.sink.name, "event_id": item.event.get("event_id"),
            "type": item.type, "source": item.event.get("source"),
            "call_id": item.event.get("call_id") or item.event.get("session_id")})

    async def dead_letter(self, record: Any, exc: BaseException) -> None:
        """One record whose handling raised unexpectedly (the consume loop isolated it):
        the sink's dead-letter topic, reason ``internal_error``, with the exception."""
        await self._send_all([self._dead(SinkEvent({}, record), INTERNAL_ERROR, describe(exc))])
        EVENTS.labels(self.sink.name, "dead_letter").inc()
        log.error("dead-lettered after an unexpected error", extra={
            "sink": self.sink.name, "error": describe(exc)[:300],
            "origin": f"{record.topic}/{record.partition}/{record.offset}"})

    # ------------------------------------------------------------ handlers
    async def handle_main(self, records: Sequence[Any]) -> None:
        await self.offer_parsed(await self.parse_main(records))

    async def parse_main(self, records: Sequence[Any]) -> ParsedBatch:
        """The pure half of ``handle_main`` (the consume loop runs it on the next batch
        while this one is being written)."""
        return self._parse(records, lambda r: 0)

    async def offer_parsed(self, parsed: ParsedBatch) -> None:
        wanted, malformed, skipped = parsed
        if skipped:
            EVENTS.labels(self.sink.name, "skipped").inc(skipped)
        await self._offer(wanted, malformed)

    async def handle_retry(self, records: Sequence[Any]) -> None:
        """Parked events: offer again each one that is due.

        The retry topic is read in order, but its events come due out of order (a
        later attempt waits longer, a daily limit hours). So an event not due yet with
        one due now behind it in the batch goes back to the topic's tail (the same
        record: its attempt and not-before unchanged) rather than hold that one back.
        When nothing in the batch is due, the handler waits for the earliest, a slice
        at a time (``NotDue``), so that the consumer keeps polling."""
        def attempt(r: Any) -> int:
            return int(dlq.header(r.headers, H_ATTEMPT) or 1)

        now_ms = time.time_ns() // 1_000_000
        due_at = [int(dlq.header(r.headers, H_NOT_BEFORE) or 0) for r in records]
        # Handled now: up to the last record that is due; the ones behind it are not.
        handled = max((i + 1 for i, at in enumerate(due_at) if at <= now_ms), default=0)
        if not handled:
            DEFERRED_DUE.labels(self.sink.name).set(0)
            wait_s = (min(due_at) - now_ms) / 1000
            # At most a slice at a time (a CRM's daily limit parks events for hours):
            # the consume loop must poll well within max.poll.interval.ms, or the
            # broker takes the retry topic away and the batch runs twice.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(),
                                       timeout=min(wait_s, PARKED_WAIT_SLICE_S))
            if self._stop.is_set():
                raise Retryable("stopping before a parked event was due")
            raise NotDue(f"the first parked event is due in {wait_s:.0f} s")
        due = [r for r, at in zip(records[:handled], due_at, strict=False) if at <= now_ms]
        later = [r for r, at in zip(records[:handled], due_at, strict=False) if at > now_ms]
        if later:  # to the tail, before the batch's offsets are committed past them
            await self._send_all([Outgoing(self.retry_topic, r.value, r.key, list(r.headers))
                                  for r in later])
        oldest_ms = min(at for at in due_at[:handled] if at <= now_ms)
        DEFERRED_DUE.labels(self.sink.name).set((now_ms - oldest_ms) / 1000)
        await self._offer_parked(due, attempt)
        DEFERRED_DUE.labels(self.sink.name).set(0)
        if handled < len(records):
            raise NotDue("the parked events behind are not due yet",
                         resume_at=_resume_at(records, handled))

    async def _offer_parked(self, records: Sequence[Any],
                            attempt: Callable[[Any], int]) -> None:
        wanted, malformed, _ = self._parse(records, attempt)
        await self._offer(wanted, malformed)

    # ------------------------------------------------------------ lifecycle
    def ready(self) -> bool:
        return (self._producers.producer is not None and bool(self._loops)
                and all(loop.started for loop in self._loops) and self.sink.ready())

    async def run(self, stop: asyncio.Event, serve_http: bool = True,
                  ensure_topics: bool = True) -> None:
        self._stop = stop
        checks = health.Health()
        checks.add_check("sink", self.ready)
        port = self.settings.http_port or self.sink.default_http_port
        async with serving_health(checks, self.settings.http_host, port, serve_http):
            if ensure_topics:
                await topics.ensure(self.kafka, topic_plan(self.kafka, self.sink.name))
            await self.sink.start()
            await self._producers.start()
            try:
                await consume(
                    [Subscription(self.kafka.events_topic, self.group_id, self.offer_parsed,
                                  self.parse_main),
                     Subscription(self.retry_topic, f"{self.group_id}-retry",
                                  self.handle_retry)],
                    stop, make_consumer=self._make_consumer, dead_letter=self.dead_letter,
                    settings=LoopSettings(self.settings.max_batch,
                                          self.settings.poll_timeout_ms,
                                          self.settings.backoff_max_s,
                                          self.settings.shutdown_timeout_s),
                    loops=self._loops,
                    on_consuming=lambda: log.info("sink consuming", extra={
                        "sink": self.sink.name, "group": self.group_id}))
            finally:
                await self._producers.stop(self.settings.shutdown_timeout_s)
                await self.sink.stop()
                log.info("sink stopped", extra={"sink": self.sink.name})


def sink_main(
    name: str,
    description: str,
    build: Callable[[], Awaitable[Sink]] | Callable[[], Sink],
    settings_classes: Sequence[type[Any]] = (),
    argv: list[str] | None = None,
) -> int:
    """The console entry point of a sink worker: ``--help``, config, signals, run."""
    parser = argparse.ArgumentParser(
        prog=f"hookstream-sink-{name}", description=description,
        epilog=help_epilog(*settings_classes, SinkSettings, KafkaSettings, LogSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    try:
        settings, kafka = load(SinkSettings), load(KafkaSettings)
        logs.configure(f"sink-{name}", load(LogSettings))
    except ConfigError as exc:
        print(f"hookstream-sink-{name}: configuration error: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        stop = stop_on_signals()
        built = build()
        sink = await built if asyncio.iscoroutine(built) else built
        await SinkRunner(sink, kafka, settings).run(stop)  # type: ignore[arg-type]

    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"hookstream-sink-{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def _resume_at(records: Sequence[Any], done: int) -> dict[TopicPartition, int]:
    """Per partition of ``records``, the offset to read on from once the first ``done``
    of them are handled: the first one not handled, or past the last."""
    resume: dict[TopicPartition, int] = {}
    for position, record in enumerate(records):
        tp = TopicPartition(record.topic, record.partition)
        if position < done:
            resume[tp] = max(resume.get(tp, 0), record.offset + 1)
        else:
            resume[tp] = min(resume.get(tp, record.offset), record.offset)
    return resume

