"""Warehouse sink throughput beside a bare ``copy_records_to_table`` of the same rows.

Three figures from one run, on the same N canonical events (every type, every
provider, distinct event ids), in batches of the sink's size:

1. bare: ``copy_records_to_table`` of the rows into a plain table (no staging,
   no uniqueness, no call state) — the floor of what PostgreSQL can take;
2. store: ``WarehouseStore.write`` (staged COPY, event-id claim, append, call upserts);
3. sink: the whole sink worker draining a pre-filled canonical topic (Kafka consume,
   parse, write, commit).

    python -m bench.warehouse [--events 20000] [--batch 500]
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
from hookstream.core.sink import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import EVENT_COLUMNS, WarehouseStore, event_row

from .common import table

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


async def bench(count: int, batch: int) -> str:
    pg = load(PostgresSettings)
    run_id = uuid.uuid4().hex[:8]
    events = make_events(count)
    rows = [event_row(e) for e in events]
    avg_bytes = sum(len(r[-1]) for r in rows) / len(rows)
    admin = await asyncpg.connect(pg.dsn)
    schemas = [f"bench_bare_{run_id}", f"bench_store_{run_id}", f"bench_sink_{run_id}"]
    results: list[list[str]] = []
    gc.freeze()
    try:
        # 1. bare COPY into a plain table of the same columns.
        await admin.execute(f"CREATE SCHEMA {schemas[0]}")
        await admin.execute(
            f"CREATE TABLE {schemas[0]}.events (event_id uuid, received_at timestamptz,"
            " occurred_at timestamptz, provider text, source text, type text,"
            " provider_type text, call_id text, session_id text, agent_id text,"
            " campaign_id text, event jsonb)")
        started = time.perf_counter()
        for i in range(0, count, batch):
            await admin.copy_records_to_table("events", schema_name=schemas[0],
                                              records=rows[i:i + batch], columns=EVENT_COLUMNS)
        bare_s = time.perf_counter() - started
        results.append(["bare copy_records_to_table", f"{bare_s:.2f}",
                        f"{count / bare_s:,.0f}", "1.00"])

        # 2. the store: staged, idempotent, call state.
        pool = await WarehouseStore.create_pool(pg, schemas[1])
        store = WarehouseStore(pool)
        await store.migrate()
        started = time.perf_counter()
        for i in range(0, count, batch):
            await store.write(events[i:i + batch])
        store_s = time.perf_counter() - started
        replay_started = time.perf_counter()
        for i in range(0, count, batch):  # the same rows again: a full replay
            assert await store.write(events[i:i + batch]) == 0
        replay_s = time.perf_counter() - replay_started
        await pool.close()
        results.append(["WarehouseStore.write (staged COPY + claim + calls)", f"{store_s:.2f}",
                        f"{count / store_s:,.0f}", f"{bare_s / store_s:.2f}"])
        results.append(["  the same rows replayed (all duplicates)", f"{replay_s:.2f}",
                         f"{count / replay_s:,.0f}", f"{bare_s / replay_s:.2f}"])

        # 3. the whole sink worker over a pre-filled topic.
        kafka = dataclasses.replace(load(KafkaSettings), events_topic=f"bench.events.{run_id}")
        await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 3, topics.DAY_MS, "b")])
        producer = make_producer(kafka, "bench-fill", linger_ms=20)
        await producer.start()
        for e in events:
            await producer.send(kafka.events_topic, orjson.dumps(e),
                                key=(e.get("call_id") or e.get("session_id") or "x").encode(),
                                headers=[("hs-event-type", e["type"].encode())])
        await producer.flush()
        await producer.stop()
        sink = WarehouseSink(pg, WarehouseSettings(schema=schemas[2]))
        stop = asyncio.Event()
        runner = SinkRunner(sink, kafka, SinkSettings(max_batch=batch, poll_timeout_ms=50),
                            group_id=f"bench-warehouse-{run_id}")
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        while not sink.rows_written:
            await asyncio.sleep(0.001)
        started = time.perf_counter()  # from the first committed batch
        first = sink.rows_written
        while sink.rows_written < count:
            await asyncio.sleep(0.01)
        sink_s = time.perf_counter() - started
        stop.set()
        await task
        rate = (count - first) / sink_s
        results.append(["hookstream-sink-warehouse (Kafka -> PostgreSQL, commit)",
                        f"{sink_s:.2f}", f"{rate:,.0f}", f"{rate / (count / bare_s):.2f}"])
    finally:
        for schema in schemas:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
    return table(f"warehouse throughput ({count} canonical events of every type, "
                 f"{avg_bytes:.0f}-byte JSONB, batches of {batch})",
                 ["writer", "seconds", "rows/s", "ratio"], results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warehouse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    print(asyncio.run(bench(args.events, args.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
