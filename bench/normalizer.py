"""Normalizer throughput beside a bare aiokafka consume -> orjson parse -> produce loop.

Both read the same pre-filled raw topic (mixed providers, every event distinct),
in the same run, with the same producer settings (acks=all, idempotent), each
from its own consumer group into its own output topic, committing per batch.

    python -m bench.normalizer [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from hookstream.core import logs, topics
from hookstream.core.config import KafkaSettings, LogSettings, PostgresSettings, load
from hookstream.core.consumer import ConsumeLoop
from hookstream.core.kafka import ProducerKeeper, make_consumer, make_producer
from hookstream.core.schemas import SchemaRegistry
from hookstream.normalizer.dedupe import DedupeStore
from hookstream.normalizer.pipeline import Decoder, Normalizer

from .common import fill_topic, rounds_note, spread, table, unique_deliveries

BATCH = 1000


async def _consume_all(kafka: KafkaSettings, group: str, topic: str, total: int,
                       handle: Callable[[list[Any]], Awaitable[None]]) -> float:
    consumer = make_consumer(kafka, group, max_poll_records=BATCH)
    consumer.subscribe([topic])
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=0)  # join the group before the clock starts
        seen = 0
        started = None
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            if not batch:
                continue
            started = started or time.perf_counter()
            records = [r for part in batch.values() for r in part]
            await handle(records)
            seen += len(records)
            ended = time.perf_counter()  # the clock stops when the last batch is handled
            await consumer.commit({tp: p[-1].offset + 1 for tp, p in batch.items()})
        return ended - (started or ended)
    finally:
        await consumer.stop()


async def _run_service_loop(kafka: KafkaSettings, group: str, topic: str, total: int,
                            normalizer: Normalizer, out: dict[str, int]) -> float:
    """The normalizer as its service runs it: ConsumeLoop, decoding batch N+1 while
    batch N awaits its acks, committing after each batch."""
    consumer = make_consumer(kafka, group, max_poll_records=BATCH)
    clock: dict[str, float] = {}
    done, stop = asyncio.Event(), asyncio.Event()

    async def prepare(records):  # type: ignore[no-untyped-def]
        clock.setdefault("started", time.perf_counter())
        return await normalizer.decode_batch(records)

    async def complete(batch) -> None:  # type: ignore[no-untyped-def]
        result = await normalizer.complete(batch)
        out["published"] += result.published
        out["dead"] += result.dead_letters
        out["dup"] += result.duplicates
        if sum(out.values()) >= total:
            clock["ended"] = time.perf_counter()
            done.set()

    loop = ConsumeLoop(consumer, topic, group, complete, prepare=prepare, max_batch=BATCH,
                       poll_timeout_ms=500)
    loop.subscribe()
    await consumer.start()
    task = asyncio.create_task(loop.run(stop))
    try:
        await done.wait()
    finally:
        stop.set()
        await task
        await consumer.stop()
    return clock["ended"] - clock["started"]


async def bench(messages: int, rounds: int = 3) -> str:
    kafka = load(KafkaSettings)
    run_id = uuid.uuid4().hex[:8]
    raw = f"bench.raw.{run_id}"
    bare_out = f"bench.bare-out.{run_id}"
    kafka = dataclasses.replace(kafka, raw_topic=raw, events_topic=f"bench.events.{run_id}",
                                dlq_topic=f"bench.dlq.{run_id}")
    await topics.ensure(kafka, [*topics.plan(kafka, partitions=3),
                                topics.TopicSpec(bare_out, 3, topics.DAY_MS, "bench")])
    await fill_topic(kafka, raw, list(unique_deliveries(messages)))
    gc.freeze()  # as the normalizer service does after start-up; applies to both loops

    producer = make_producer(kafka, "bench", linger_ms=5)
    await producer.start()
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=4)
    bare_s: list[float] = []
    norm_s: list[float] = []
    out = {"published": 0, "dead": 0, "dup": 0}
    try:
        # (a) bare loop: parse each body, produce it (same key), await the batch's acks.
        async def bare(records) -> None:  # type: ignore[no-untyped-def]
            futures = []
            for r in records:
                parsed = orjson.loads(r.value)
                futures.append(await producer.send(bare_out, value=orjson.dumps(parsed),
                                                   key=r.key))
            await asyncio.gather(*futures)

        for n in range(rounds):
            bare_s.append(await _consume_all(kafka, f"bench-bare-{run_id}-{n}", raw, messages,
                                             bare))
            # (b) the normalizer: decode, validate, map, dedupe (PostgreSQL), publish, mark;
            # a fresh dedupe table each round, so every event is new to it.
            table_name = f"bench_dedupe_{run_id}_{n}"
            dedupe = DedupeStore(pool, 3600, 200_000, table_name)
            await dedupe.migrate()
            normalizer = Normalizer(kafka, ProducerKeeper(kafka, "bench", producer=producer),
                                    dedupe, Decoder(SchemaRegistry()))
            out = {"published": 0, "dead": 0, "dup": 0}
            try:
                norm_s.append(await _run_service_loop(
                    kafka, f"bench-normalizer-{run_id}-{n}", raw, messages, normalizer, out))
            finally:
                await pool.execute(f"DROP TABLE IF EXISTS {table_name}")
            assert out["published"] == messages, out  # every distinct event came out once
    finally:
        await pool.close()
        await producer.stop()

    bare_rates = [messages / s for s in bare_s]
    norm_rates = [messages / s for s in norm_s]
    ratios = [n / b for n, b in zip(norm_rates, bare_rates, strict=True)]
    return table(
        f"normalizer throughput ({messages} mixed-provider deliveries, 3 partitions, "
        f"acks=all, batches of up to {BATCH}; {rounds_note(rounds)})",
        ["loop", "seconds", "events/s", "ratio"],
        [["bare aiokafka consume -> orjson -> produce", spread(bare_s, "{:.2f}"),
          spread(bare_rates), "1.00"],
         ["hookstream normalizer (validate, map, dedupe, publish)", spread(norm_s, "{:.2f}"),
          spread(norm_rates), spread(ratios, "{:.2f}")]],
    ) + f"\n  normalizer output (last round): {out['published']} published, " \
        f"{out['dup']} duplicates, {out['dead']} dead letters"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.normalizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    print(asyncio.run(bench(args.messages, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
