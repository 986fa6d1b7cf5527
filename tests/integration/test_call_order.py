"""Issue 13, item 2, against the real warehouse: whatever order one call's (or Saaya
session's) deliveries are processed in, and whatever redeliveries happen, its
``calls`` row is the same, and it is the row the conversation calls for.

The conversations (tests/call_sequences.py): a Sawt call still on hold and one that
finished, each through IN_CALL -> ON_HOLD -> IN_CALL -> ON_HOLD (the repeated
transition), with a tool failure, provider retries, raw records consumed twice and two
deliveries stamped out of order by ingest replicas whose clocks differ; a Sarj.ai
``complete`` and a ``no_answer``, each retried as the document says Sarj.ai retries; a
Saaya session that ended and one that errored, each escalated first, with retries.
Each is processed in the order sent, reversed, and in six seeded shuffles; every order
is a call of its own (its ids end in the order's number).

* ``test_every_order_one_delivery_per_batch``: each delivery its own batch through the
  normalizer's decoder, its dedupe table (PostgreSQL) and the warehouse sink's write
  (PostgreSQL): the call is re-folded from its stored events after every delivery.
* ``test_every_order_through_the_running_pipeline``: the same orders as raw records on
  a raw topic of the test's own (keyed as ingest keys them), through the running
  normalizer service and the running warehouse sink, both taking at most 4 records a
  batch (Kafka, consumer groups, commits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import end_offsets, make_producer
from hookstream.core.schemas import SchemaRegistry
from hookstream.normalizer.dedupe import DedupeStore
from hookstream.normalizer.pipeline import Decoder
from hookstream.normalizer.service import run as run_normalizer
from hookstream.normalizer.settings import NormalizerSettings
from hookstream.sinks.base import SinkEvent
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink

from .. import call_sequences
from ..call_sequences import ROW, Conversation, Delivery
from ..support import caught_up, own_topics

PROVIDERS = ("sawt", "sarj", "saaya")
DECODER = Decoder(SchemaRegistry())


@dataclasses.dataclass
class Run:
    """Every provider's conversations, once per order, with the order to process in."""

    calls: list[tuple[Conversation, list[Delivery]]]

    @classmethod
    def make(cls, run_id: str) -> Run:
        calls = []
        for provider in PROVIDERS:
            templates = call_sequences.conversations(provider, "template")
            for n in range(len(call_sequences.orders(templates[0].deliveries))):
                for conversation in call_sequences.conversations(provider, f"{run_id}_o{n}"):
                    calls.append((conversation,
                                  call_sequences.orders(conversation.deliveries)[n]))
        return cls(calls)

    @property
    def events(self) -> int:
        return sum(c.events for c, _ in self.calls)


@dataclasses.dataclass
class Warehouse:
    schema: str
    pool: asyncpg.Pool
    dedupe_table: str


@pytest.fixture
async def warehouse(stack: KafkaSettings) -> AsyncIterator[Warehouse]:
    run_id = uuid.uuid4().hex[:10]
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    found = Warehouse(f"test_order_{run_id}", pool, f"test_dedupe_order_{run_id}")
    try:
        yield found
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {found.schema} CASCADE")
        await pool.execute(f"DROP TABLE IF EXISTS {found.dedupe_table}")
        await pool.close()


async def assert_rows(warehouse: Warehouse, run: Run) -> None:
    """Every call's row is the conversation's expected row; its events are stored once
    each, with the receive time of the delivery first sent (never a retry's)."""
    schema = warehouse.schema
    calls = {r["call_key"]: r for r in await warehouse.pool.fetch(f"SELECT * FROM {schema}.calls")}
    events: dict[str, list[asyncpg.Record]] = {}
    for r in await warehouse.pool.fetch(
            f"SELECT coalesce(call_id, session_id) AS subject, event_id::text AS id,"
            f" received_at FROM {schema}.events"):
        events.setdefault(r["subject"], []).append(r)
    assert len(calls) == len(run.calls)
    for conversation, order in run.calls:
        where = (conversation.name, [d.label for d in order])
        row = dict(calls[conversation.call_key])
        if row["transcript"] is not None:
            row["transcript"] = orjson.loads(row["transcript"])
        row["state_event_id"] = str(row["state_event_id"])
        top = DECODER.decode(conversation.delivery(conversation.top).record())
        assert {c: row[c] for c in ROW} == {**conversation.expected,
                                            "state_event_id": top.event_id}, where
        stored = events[conversation.subject]
        assert len(stored) == conversation.events, where
        firsts = {DECODER.decode(d.record()).event_id: call_sequences.at_ms(
            d.raw.received_at_ms) for d in conversation.deliveries
            if d.retry_of is None and "(record again)" not in d.label}
        assert {r["id"]: r["received_at"] for r in stored} == firsts, where


async def test_every_order_one_delivery_per_batch(warehouse: Warehouse) -> None:
    run = Run.make("b")
    dedupe = DedupeStore(warehouse.pool, 3600, cache_size=0, table=warehouse.dedupe_table)
    await dedupe.migrate()
    sink = WarehouseSink(load(PostgresSettings), WarehouseSettings(schema=warehouse.schema))
    await sink.start()
    try:
        # The normalizer's protocol, one delivery at a time: decode, look the id up in
        # the dedupe table, hand it on (here: straight to the sink) unless seen, mark.
        duplicates = 0
        for _, order in run.calls:
            for delivery in order:
                event = DECODER.decode(delivery.record())
                if await dedupe.seen([event.event_id]):
                    duplicates += 1
                    continue
                outcome = await sink.write([SinkEvent(event.to_dict(), record=None)])
                assert (outcome.failed, outcome.deferred) == ([], [])
                await dedupe.mark([event.event_id])
    finally:
        await sink.stop()
    assert duplicates == sum(len(o) for _, o in run.calls) - run.events
    assert sink.rows_written == run.events
    await assert_rows(warehouse, run)


async def test_every_order_through_the_running_pipeline(
        stack: KafkaSettings, warehouse: Warehouse) -> None:
    run_id = uuid.uuid4().hex[:10]
    run = Run.make("p")
    kafka = await own_topics(stack, run_id)
    producer = make_producer(kafka, "test")
    await producer.start()
    try:
        for _, order in run.calls:
            for delivery in order:
                record = delivery.record()
                await producer.send(kafka.raw_topic, record.value, key=record.key,
                                    headers=record.headers)
        await producer.flush()
    finally:
        await producer.stop()

    settings = NormalizerSettings(group_id=f"test-normalizer-{run_id}", max_batch=4,
                                  dedupe_table=warehouse.dedupe_table, poll_timeout_ms=100)
    stop = asyncio.Event()
    sink = WarehouseSink(load(PostgresSettings), WarehouseSettings(schema=warehouse.schema))
    runner = SinkRunner(sink, kafka, SinkSettings(poll_timeout_ms=100, max_batch=4),
                        group_id=f"test-warehouse-{run_id}")
    tasks = [asyncio.create_task(run_normalizer(settings, kafka, load(PostgresSettings), stop,
                                                serve_http=False)),
             asyncio.create_task(runner.run(stop, serve_http=False))]
    try:
        for _ in range(600):
            if sink.rows_written >= run.events or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.1)
        await caught_up(kafka, settings.group_id, kafka.raw_topic)
        await caught_up(kafka, f"test-warehouse-{run_id}", kafka.events_topic)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert sink.rows_written == run.events
    _, sink_dead = sink_topics(kafka, "warehouse")
    for topic in (kafka.dlq_topic, sink_dead):
        assert sum((await end_offsets(kafka, topic)).values()) == 0, topic
    await assert_rows(warehouse, run)


def test_the_orders_differ() -> None:
    """The seeded orders are distinct permutations, each with every retry after the
    delivery it retries (else the test would prove less than it says)."""
    for provider in PROVIDERS:
        for conversation in call_sequences.conversations(provider, "x"):
            orders = call_sequences.orders(conversation.deliveries)
            labels = {tuple(d.label for d in order) for order in orders}
            # Sawt's 15 and 19 deliveries give 8 distinct orders; Sarj.ai's 4 or 5 (with
            # the retries held after their original) give fewer, still more than one.
            assert len(labels) == 8 if provider == "sawt" else len(labels) >= 3, (
                conversation.name, len(labels))
            for order in orders:
                position = {d.label: i for i, d in enumerate(order)}
                assert all(position[d.label] > position[d.retry_of] for d in order
                           if d.retry_of is not None)

