"""Issue 13, item 1, against the real PostgreSQL (and the real broker): every example
of all 30 kinds with each optional field set to null in turn, and with an unknown field
added (tests/schema_variants.py reads the fields from the schemas), lands in the
warehouse; none is dead-lettered.

* ``test_every_variant_is_a_warehouse_row``: the normalizer's pure path (the real
  decoder: validation and mapping) into the warehouse sink's write path
  (``WarehouseSink.write``: the COPY into ``events``, the call fold and upsert) on a
  warehouse schema of the test's own.
* ``test_every_variant_through_the_running_pipeline``: the same variants as raw
  deliveries on a raw topic of the test's own, through the running normalizer service
  and the running warehouse sink (consumer groups, topics, commits): every variant is
  an ``events`` row, and the normalizer's and the sink's dead-letter topics stay empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import end_offsets, make_producer
from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.normalizer.pipeline import Decoder
from hookstream.normalizer.service import run as run_normalizer
from hookstream.normalizer.settings import NormalizerSettings
from hookstream.sinks.base import SinkEvent
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import call_key

from ..schema_variants import Variant, dotted, variants
from ..support import caught_up, own_topics

VARIANTS = list(variants())
RECEIVED_AT_MS = 1_778_000_000_000  # 2026-05-05: a month partition of its own


def raw_of(variant: Variant, n: int) -> RawDelivery:
    provider = variant.sample.provider
    return RawDelivery(source=f"{provider}-main", provider=provider,
                       received_at_ms=RECEIVED_AT_MS + n, request_id=f"req-{n}",
                       body=variant.sample.body, content_type="application/json",
                       routing_key=variant.routing_key)




def number_variants() -> list[Variant]:
    """Two more: Sarj.ai ``total_duration`` 47.5 and a Saaya sentiment of 3.5 (numbers the
    schemas used to refuse), to see them in the ``calls`` columns."""
    out = []
    for variant in VARIANTS:
        if variant.change != "unknown" or variant.path != ():
            continue
        payload = orjson.loads(variant.sample.body)
        if variant.sample.name == "complete":
            payload["payload"]["call_data"]["total_duration"] = 47.5
        elif variant.sample.name == "session.ended":
            payload["data"]["sentiment"] = {"avg": 3.5, "min": -2, "max": 9.25}
        else:
            continue
        tag = f"-n{len(out)}"
        if variant.sample.provider == "sarj":
            payload["call_id"] += tag
            payload["payload"]["call_data"]["call_id"] = payload["call_id"]
        else:
            payload["id"] += tag
            payload["data"]["sessionId"] += tag
        sample = dataclasses.replace(variant.sample, body=orjson.dumps(payload))
        out.append(dataclasses.replace(variant, sample=sample, change="number",
                                       payload=payload))
    assert len(out) == 2
    return out


@dataclasses.dataclass
class Warehouse:
    schema: str
    pool: asyncpg.Pool

    async def rows(self, table: str, columns: str = "*") -> list[asyncpg.Record]:
        try:
            return list(await self.pool.fetch(f"SELECT {columns} FROM {self.schema}.{table}"))
        except asyncpg.UndefinedTableError:
            return []  # the sink has not applied its migrations yet


@pytest.fixture
async def warehouse(stack: KafkaSettings) -> AsyncIterator[Warehouse]:
    schema = f"test_variants_{uuid.uuid4().hex[:10]}"
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    try:
        yield Warehouse(schema, pool)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


async def test_every_variant_is_a_warehouse_row(warehouse: Warehouse) -> None:
    decoder = Decoder(SchemaRegistry())
    todo = VARIANTS + number_variants()
    events: dict[str, tuple[Variant, dict[str, Any]]] = {}
    for n, variant in enumerate(todo):
        raw = raw_of(variant, n)
        event = decoder.decode(LocalRecord(raw.body, raw.headers()))  # raises on a dead letter
        events[event.event_id] = (variant, orjson.loads(event.to_json()))
    assert len(events) == len(todo)  # no two variants are one event

    sink = WarehouseSink(load(PostgresSettings), WarehouseSettings(schema=warehouse.schema))
    await sink.start()
    try:
        # The sink's write path, in batches of the size it is offered off the topic.
        items = [SinkEvent(event, record=None) for _, event in events.values()]
        for start in range(0, len(items), 100):
            outcome = await sink.write(items[start:start + 100])
            assert [(str(i.event["data"])[:200], r, d) for i, r, d in outcome.failed] == []
            assert outcome.deferred == []
    finally:
        await sink.stop()

    stored = {str(r["event_id"]): r for r in await warehouse.rows("events")}
    missing = [events[i][0].id for i in events if i not in stored]
    assert missing == []
    assert len(stored) == len(todo)
    for event_id, (variant, _) in events.items():
        row = stored[event_id]
        assert (row["provider"], row["provider_type"]) == (
            variant.kind.provider, variant.kind.event), variant.id
        assert orjson.loads(row["event"])["data"] == variant.payload, variant.id

    calls = {r["call_key"]: r for r in await warehouse.rows("calls")}
    keys = {k for _, e in events.values() if (k := call_key(e)) is not None}
    assert keys and set(calls) == keys

    def call_of(event: dict[str, Any]) -> asyncpg.Record:
        return calls[str(call_key(event))]

    numbers = {v.kind.provider: call_of(e) for v, e in events.values() if v.change == "number"}
    assert numbers["sarj"]["duration_s"] == 47.5  # double precision: stored as sent
    assert (numbers["saaya"]["sentiment"], numbers["saaya"]["sentiment_label"]) == (3.5, None)
    # A null field is a null column, not a failure: e.g. Sarj.ai's recording URL.
    nulled = [e for v, e in events.values()
              if v.change == "null" and dotted(v.path) == "payload.call_data.recording_url"]
    assert len(nulled) == 2 and all(call_of(e)["recording_url"] is None for e in nulled)


async def test_every_variant_through_the_running_pipeline(
        stack: KafkaSettings, warehouse: Warehouse) -> None:
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    settings = NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                                  dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100)
    producer = make_producer(kafka, "test")
    await producer.start()
    try:
        for n, variant in enumerate(VARIANTS):
            raw = raw_of(variant, n)
            await producer.send(kafka.raw_topic, raw.body, key=None, headers=raw.headers())
        await producer.flush()
    finally:
        await producer.stop()

    stop = asyncio.Event()
    sink = WarehouseSink(load(PostgresSettings), WarehouseSettings(schema=warehouse.schema))
    runner = SinkRunner(sink, kafka, SinkSettings(poll_timeout_ms=100),
                        group_id=f"test-warehouse-{run_id}")
    tasks = [asyncio.create_task(run_normalizer(settings, kafka, load(PostgresSettings), stop,
                                                serve_http=False)),
             asyncio.create_task(runner.run(stop, serve_http=False))]
    try:
        for _ in range(300):
            if len(await warehouse.rows("events", "event_id")) >= len(VARIANTS):
                break
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.2)
        await caught_up(kafka, settings.group_id, kafka.raw_topic)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        with contextlib.suppress(asyncpg.PostgresError):
            await warehouse.pool.execute(f"DROP TABLE IF EXISTS test_dedupe_{run_id}")

    rows = await warehouse.rows("events", "provider, provider_type, event")
    assert len(rows) == len(VARIANTS)
    stored = sorted((r["provider"], r["provider_type"], orjson.dumps(
        orjson.loads(r["event"])["data"], option=orjson.OPT_SORT_KEYS)) for r in rows)
    sent = sorted((v.kind.provider, v.kind.event,
                   orjson.dumps(v.payload, option=orjson.OPT_SORT_KEYS)) for v in VARIANTS)
    assert stored == sent  # every variant, byte for byte in its data, once
    _, sink_dead = sink_topics(kafka, "warehouse")
    for topic in (kafka.dlq_topic, sink_dead):
        assert sum((await end_offsets(kafka, topic)).values()) == 0, topic
