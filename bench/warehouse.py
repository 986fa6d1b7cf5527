"""Warehouse sink throughput beside a bare ``copy_records_to_table`` of the same rows.

Three figures from one run, on the same N canonical events (every type, every
provider, distinct event ids), in batches of the sink's size:

1. bare: ``copy_records_to_table`` of the rows into a plain table (no staging,
   no uniqueness, no call state) — the floor of what PostgreSQL can take;
2. store: ``WarehouseStore.write`` (stored-id lookup, COPY into event_ids and events,
   call recompute and upserts);
3. sink: the whole sink worker draining a pre-filled canonical topic (Kafka consume,
   parse, write, commit).

    python -m bench.warehouse [--events 20000] [--batch 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from hookstream.core import logs, topics
from hookstream.core.config import KafkaSettings, LogSettings, PostgresSettings, load
from hookstream.core.kafka import make_producer
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import EVENT_COLUMNS, WarehouseStore, event_row

from .common import rounds_note, spread, table

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "canonical" / "v1" / "examples"


def make_events(count: int) -> list[dict[str, Any]]:
    base = [orjson.loads(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))]
    out = []
    for n, event in zip(range(count), itertools.cycle(base), strict=False):
        # Calls and sessions of about four events each, as real traffic has.
        subject = ({"call_id": f"call_b{n // 4}"} if event.get("call_id") else
                   {"session_id": f"ses_b{n // 4}"} if event.get("session_id") else {})
        out.append({**event, **subject, "event_id": str(uuid.uuid4())})
    return out


BARE_TABLE = ("CREATE TABLE {schema}.events (event_id uuid, received_at timestamptz,"
              " occurred_at timestamptz, provider text, source text, type text,"
              " provider_type text, call_id text, session_id text, agent_id text,"
              " campaign_id text, event jsonb, test boolean)")


async def _fill_topic(kafka: KafkaSettings, events: list[dict[str, Any]]) -> None:
    await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 3, topics.DAY_MS, "b")])
    producer = make_producer(kafka, "bench-fill", linger_ms=20)
    await producer.start()
    try:
        for e in events:
            await producer.send(kafka.events_topic, orjson.dumps(e),
                                key=(e.get("call_id") or e.get("session_id") or "x").encode(),
                                headers=[("hs-event-type", e["type"].encode())])
        await producer.flush()
    finally:
        await producer.stop()


async def _one_round(admin: asyncpg.Connection, pg: PostgresSettings, kafka: KafkaSettings,
                     events: list[dict[str, Any]], rows: list[tuple[Any, ...]], batch: int,
                     tag: str) -> dict[str, float]:
    """Seconds of each writer over the same events, back to back, in fresh schemas."""
    count = len(events)
    schemas = [f"bench_bare_{tag}", f"bench_store_{tag}", f"bench_sink_{tag}"]
    out: dict[str, float] = {}
    try:
        # 1. bare COPY into a plain table of the same columns.
        await admin.execute(f"CREATE SCHEMA {schemas[0]}")
        await admin.execute(BARE_TABLE.format(schema=schemas[0]))
        started = time.perf_counter()
        for i in range(0, count, batch):
            await admin.copy_records_to_table("events", schema_name=schemas[0],
                                              records=rows[i:i + batch], columns=EVENT_COLUMNS)
        out["bare"] = time.perf_counter() - started

        # 2. the store: idempotent, call state; then the same rows again.
        pool = await WarehouseStore.create_pool(pg, schemas[1])
        store = WarehouseStore(pool)
        await store.migrate()
        started = time.perf_counter()
        for i in range(0, count, batch):
            await store.write(events[i:i + batch])
        out["store"] = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(0, count, batch):  # a full replay
            assert await store.write(events[i:i + batch]) == 0
        out["replay"] = time.perf_counter() - started
        await pool.close()

        # 3. the whole sink worker over the pre-filled topic (its own group).
        sink = WarehouseSink(pg, WarehouseSettings(schema=schemas[2]))
        stop = asyncio.Event()
        runner = SinkRunner(sink, kafka, SinkSettings(max_batch=batch, poll_timeout_ms=50),
                            group_id=f"bench-warehouse-{tag}")
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        while not sink.rows_written:
            await asyncio.sleep(0.001)
        started = time.perf_counter()  # from the first committed batch
        first = sink.rows_written
        while sink.rows_written < count:
            await asyncio.sleep(0.01)
        out["sink"] = (time.perf_counter() - started) * count / (count - first)
        stop.set()
        await task
    finally:
        for schema in schemas:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return out


async def bench(count: int, batch: int, rounds: int = 3) -> str:
    pg = load(PostgresSettings)
    run_id = uuid.uuid4().hex[:8]
    events = make_events(count)
    rows = [event_row(e) for e in events]
    avg_bytes = sum(len(r[-1]) for r in rows) / len(rows)
    kafka = dataclasses.replace(load(KafkaSettings), events_topic=f"bench.events.{run_id}")
    await _fill_topic(kafka, events)
    gc.freeze()
    admin = await asyncpg.connect(pg.dsn)
    try:
        results = [await _one_round(admin, pg, kafka, events, rows, batch, f"{run_id}_{n}")
                   for n in range(rounds)]
    finally:
        await admin.close()

    def row(label: str, key: str) -> list[str]:
        seconds = [r[key] for r in results]
        ratios = [r["bare"] / r[key] for r in results]
        return [label, spread(seconds, "{:.2f}"), spread([count / s for s in seconds]),
                "1.00" if key == "bare" else spread(ratios, "{:.2f}")]

    return table(f"warehouse throughput ({count} canonical events of every type, "
                 f"{avg_bytes:.0f}-byte JSONB, batches of {batch}; {rounds_note(rounds)})",
                 ["writer", "seconds", "rows/s", "ratio"],
                 [row("bare copy_records_to_table", "bare"),
                  row("WarehouseStore.write (id lookup, 2 COPYs, calls)", "store"),
                  row("  the same rows replayed (all duplicates)", "replay"),
                  row("hookstream-sink-warehouse (Kafka -> PostgreSQL, commit)", "sink")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warehouse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    print(asyncio.run(bench(args.events, args.batch, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
