"""Raw deliveries in, canonical events (or dead letters) out.

One batch at a time: decode every record (a failure becomes a dead letter,
never an exception that stops the partition), drop duplicates, publish the
canonical events and dead letters and wait for every ack, then mark the
published ids in the dedupe store. The caller commits offsets only after
``handle`` returned, so the guarantee is at-least-once end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from ..core import dlq, errors
from ..core.config import KafkaSettings
from ..core.errors import Invalid, Retryable
from ..core.events import CanonicalEvent, event_id
from ..core.headers import H_CONTENT_TYPE, H_EVENT_ID, H_EVENT_TYPE, H_PROVIDER, H_SOURCE
from ..core.kafka import Outgoing, ProducerKeeper
from ..core.postgres import DATABASE_ERRORS
from ..core.record import RawDelivery
from ..core.schemas import SchemaRegistry
from ..core.sources import TestCalls
from ..core.stage import Output, dead_letter_record
from ..providers import PROVIDERS
from . import metrics
from .dedupe import DedupeStore

log = logging.getLogger(__name__)

STAGE = errors.NORMALIZER_STAGE
DECODE_SLICE = 50  # records decoded between yields to the event loop (about 1 ms)
# Caps on what one delivery may be (HOOKSTREAM_NORMALIZER_MAX_DEPTH / _MAX_BODY_BYTES).
# The depth stays far below orjson's serialisation limit (255 levels; the envelope
# adds two) and keeps every later stage's recursion shallow.
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BODY_BYTES = 1_048_576


class ConsumedRecord(Protocol):
    """What the normalizer reads of a consumed record (aiokafka's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclasses.dataclass
class DeadLetter:
    record: ConsumedRecord
    reason: str
    detail: str
    provider: str


@dataclasses.dataclass(slots=True)
class DecodedBatch:
    records: Sequence[ConsumedRecord]
    events: list[CanonicalEvent]
    received_ms: dict[str, int]  # event id -> ingest receive time
    encoded: dict[str, bytes]  # event id -> the event's JSON, serialised while decoding
    dead: list[DeadLetter]
    decode_seconds: float


@dataclasses.dataclass
class BatchResult:
    published: int = 0
    duplicates: int = 0
    dead_letters: int = 0


class Decoder:
    """Bytes and headers to a CanonicalEvent; every failure is ``Invalid``."""

    def __init__(self, registry: SchemaRegistry,
                 versions: Mapping[str, Sequence[str]] | None = None, *,
                 max_depth: int = DEFAULT_MAX_DEPTH,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 test_calls: Mapping[str, TestCalls] | None = None) -> None:
        self._registry = registry
        self._test_calls = dict(test_calls or {})
        # Per provider, the payload versions accepted (none listed: every version).
        self._versions = {p: set(v) for p, v in (versions or {}).items() if v}
        self._max_depth = max_depth
        self._max_body_bytes = max_body_bytes

    def decode(self, record: ConsumedRecord) -> CanonicalEvent:
        return self.decode_delivery(record)[0]

    def decode_delivery(self, record: ConsumedRecord) -> tuple[CanonicalEvent, RawDelivery]:
        """The event, and the delivery it came from (its metadata, parsed once)."""
        try:
            raw = RawDelivery.from_kafka(record.headers, record.value)
        except (KeyError, ValueError) as exc:
            raise Invalid(errors.MISSING_METADATA, f"raw record header missing: {exc}") from None
        spec = PROVIDERS.get(raw.provider)
        if spec is None:
            raise Invalid(errors.UNKNOWN_PROVIDER, f"no adapter for provider {raw.provider!r}")
        body = raw.body
        if len(body) > self._max_body_bytes:
            raise Invalid(errors.TOO_LARGE,
                          f"body of {len(body)} bytes, over the cap of {self._max_body_bytes}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(errors.INVALID_UTF8, str(exc)) from None
        try:
            payload: Any = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith("depth limit exceeded"):  # orjson stops at 1024 levels
                raise Invalid(errors.TOO_DEEP, str(exc)) from None
            raise Invalid(errors.MALFORMED_JSON, str(exc)) from None
        if not isinstance(payload, dict):
            raise Invalid(errors.NOT_AN_OBJECT, f"body is a JSON {type(payload).__name__}")
        # Fewer brackets than the cap cannot nest deeper than it: the exact walk runs
        # only for the rare body with many containers (two C-speed counts otherwise).
        if (body.count(b"{") + body.count(b"[") > self._max_depth
                and nesting_exceeds(payload, self._max_depth)):
            raise Invalid(errors.TOO_DEEP, f"JSON nested deeper than {self._max_depth} levels")
        adapter = spec.adapter
        event_type, version, inferred = adapter.identify(raw, payload)
        accepted = self._versions.get(raw.provider)
        if version is not None and accepted and version not in accepted:
            raise Invalid(errors.UNKNOWN_VERSION,
                          f"{raw.provider} version {version!r} not configured")
        self._registry.validate(raw.provider, version, event_type, payload)
        key = adapter.dedupe_key(event_type, payload)
        try:
            event = adapter.to_canonical(raw, payload, event_type, version, inferred,
                                         event_id(raw.provider, key))
        except Invalid:
            raise
        except Exception as exc:  # a mapping bug must dead-letter, not stop the partition
            raise Invalid(errors.MAPPING_FAILED, repr(exc)) from None
        event.test = self.is_test(raw, event)
        return event, raw

    def is_test(self, raw: RawDelivery, event: CanonicalEvent) -> bool:
        """A test delivery: marked by the request's ``X-Hookstream-Test`` header (ingest's
        ``hs-test``), or its call id is one of its source's ``test_call_ids`` / matches
        its ``test_call_id_pattern``. No provider document shows a marker in the
        payload itself (docs/providers.md), so the body is not looked at for one."""
        if raw.test:
            return True
        rule = self._test_calls.get(raw.source)
        return rule is not None and rule.match(event.call_id or event.session_id)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than ``limit`` (the root container is
    level 1). Iterative: a hostile body cannot exhaust the interpreter's stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


def _provider_of(record: ConsumedRecord) -> str:
    return dlq.header(record.headers, H_PROVIDER) or "unknown"


class Normalizer:
    def __init__(
        self,
        kafka: KafkaSettings,
        producers: ProducerKeeper,
        dedupe: DedupeStore,
        decoder: Decoder,
        produce_timeout_s: float = 30.0,
    ) -> None:
        self._kafka = kafka
        self._output = Output(producers, produce_timeout_s,
                              on_failure=metrics.RETRIES.labels("broker").inc)
        self._dedupe = dedupe
        self._decoder = decoder
        # Closed label sets: every series exists from the start, at 0.
        for provider in PROVIDERS:
            metrics.EVENTS_IN.labels(provider)
            metrics.DUPLICATES.labels(provider)
        for reason in errors.REASONS:
            metrics.DEAD_LETTERS.labels(reason)
        for cause in ("broker", "database"):
            metrics.RETRIES.labels(cause)

    async def handle(self, records: Sequence[ConsumedRecord]) -> BatchResult:
        """Process one batch; returns only when every output is acknowledged.

        Raises ``Retryable`` on a broker or database failure: nothing of the
        batch may be committed then, and retrying it is safe (dedupe, ids).
        """
        return await self.complete(await self.decode_batch(records))

    async def decode_batch(self, records: Sequence[ConsumedRecord]) -> DecodedBatch:
        """The pure half of ``handle``: decode every record (no I/O, no side effects),
        so the consume loop can run it while the previous batch awaits its acks.

        It yields to the event loop every ``DECODE_SLICE`` records: each step of the
        previous batch (dedupe lookup, publish, acks, mark, commit) then proceeds
        as soon as its reply arrives instead of after the whole decode."""
        started = time.perf_counter()
        events: list[CanonicalEvent] = []
        received_ms: dict[str, int] = {}
        encoded: dict[str, bytes] = {}
        dead: list[DeadLetter] = []
        for n, record in enumerate(records, 1):
            if n % DECODE_SLICE == 0:
                await asyncio.sleep(0)
            try:
                event, raw = self._decoder.decode_delivery(record)
                # Serialised here, per record, so that whatever one event makes orjson
                # raise dead-letters that event instead of failing the whole batch.
                value = event.to_json()
            except Invalid as exc:
                dead.append(DeadLetter(record, exc.reason, exc.detail, _provider_of(record)))
                continue
            except Exception as exc:  # per-record isolation: never out of the stage
                dead.append(DeadLetter(record, errors.INTERNAL_ERROR, errors.describe(exc),
                                       _provider_of(record)))
                continue
            events.append(event)
            # Two copies of one event in a batch (a provider's retry behind its original):
            # ``complete`` publishes the first, so its bytes and receive time are the
            # ones kept, not the retry's (issue 13: the copy processed first stands).
            encoded.setdefault(event.event_id, value)
            received_ms.setdefault(event.event_id, raw.received_at_ms)
        return DecodedBatch(records, events, received_ms, encoded, dead,
                            time.perf_counter() - started)

    async def complete(self, batch: DecodedBatch) -> BatchResult:
        """The side-effect half of ``handle``: dedupe, publish, await acks, mark."""
        started = time.perf_counter() - batch.decode_seconds
        records, events, received_ms, dead = (batch.records, batch.events, batch.received_ms,
                                               batch.dead)
        # Drop duplicates: within the batch, then against the dedupe record.
        unique: dict[str, CanonicalEvent] = {}
        duplicates: list[CanonicalEvent] = []
        for event in events:
            if event.event_id in unique:
                duplicates.append(event)
            else:
                unique[event.event_id] = event
        try:
            already = await self._dedupe.seen(list(unique))
        except DATABASE_ERRORS as exc:
            metrics.RETRIES.labels("database").inc()
            raise Retryable(f"dedupe lookup failed: {exc!r}") from exc
        duplicates.extend(unique.pop(i) for i in already)

        await self._publish([(e, batch.encoded[e.event_id]) for e in unique.values()], dead)
        try:
            await self._dedupe.mark(list(unique))
        except DATABASE_ERRORS as exc:
            # Published but not marked: a retry republishes (a duplicate), never loses.
            metrics.RETRIES.labels("database").inc()
            raise Retryable(f"dedupe mark failed: {exc!r}") from exc

        self._count(unique.values(), duplicates, dead, received_ms)
        for letter in dead:
            log.warning("dead-lettered", extra={
                "reason": letter.reason, "detail": letter.detail[:300],
                "origin": f"{letter.record.topic}/{letter.record.partition}/"
                          f"{letter.record.offset}", "provider": letter.provider})
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return BatchResult(len(unique), len(duplicates), len(dead))

    @staticmethod
    def _count(
        published: Iterable[CanonicalEvent],
        duplicates: list[CanonicalEvent],
        dead: list[DeadLetter],
        received_ms: dict[str, int],
    ) -> None:
        """Metrics, aggregated per batch: one label lookup per distinct label set."""
        now_ms = time.time_ns() // 1_000_000
        counts_out: Counter[tuple[str, str]] = Counter()
        observe = metrics.RECEIVE_TO_PUBLISH.observe
        for event in published:
            counts_out[(event.provider, event.type)] += 1
            observe(max(0, now_ms - received_ms[event.event_id]) / 1000)
        counts_dup = Counter(e.provider for e in duplicates)
        # Every record came out as exactly one of: published, duplicate, dead letter.
        counts_in = counts_dup + Counter(d.provider for d in dead)
        for (provider, _), n in counts_out.items():
            counts_in[provider] += n
        for provider, n in counts_in.items():
            metrics.EVENTS_IN.labels(provider).inc(n)
        for (provider, kind), n in counts_out.items():
            metrics.EVENTS_OUT.labels(provider, kind).inc(n)
        for provider, n in counts_dup.items():
            metrics.DUPLICATES.labels(provider).inc(n)
        for reason, n in Counter(d.reason for d in dead).items():
            metrics.DEAD_LETTERS.labels(reason).inc(n)

    async def dead_letter(self, record: ConsumedRecord, exc: BaseException) -> None:
        """Dead-letter one record whose handling raised (the consume loop's isolation):
        reason ``internal_error`` with the exception, the raw bytes and headers."""
        letter = DeadLetter(record, errors.INTERNAL_ERROR, errors.describe(exc),
                            _provider_of(record))
        await self._publish([], [letter])
        self._count((), [], [letter], {})
        log.error("dead-lettered after an unexpected error", extra={
            "reason": letter.reason, "detail": letter.detail[:300],
            "origin": f"{record.topic}/{record.partition}/{record.offset}"})

    async def _publish(self, events: list[tuple[CanonicalEvent, bytes]],
                       dead: list[DeadLetter]) -> None:
        """Queue every output as whole batches, then await all acks together (aiokafka #528)."""
        topic = self._kafka.events_topic
        outgoing = [
            Outgoing(topic, value, subject.encode() if (subject := event.subject_id)
                     else None, [
                         (H_EVENT_TYPE, event.type.encode()),
                         (H_PROVIDER, event.provider.encode()),
                         (H_SOURCE, event.source.encode()),
                         (H_EVENT_ID, event.event_id.encode()),
                         (H_CONTENT_TYPE, b"application/json"),
                     ])
            for event, value in events
        ]
        outgoing += [
            dead_letter_record(letter.record, topic=self._kafka.dlq_topic,
                               reason=letter.reason, stage=STAGE, detail=letter.detail)
            for letter in dead
        ]
        await self._output.send(outgoing, "publish")
