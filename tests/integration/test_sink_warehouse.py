"""The warehouse sink against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import make_producer
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import WarehouseStore, event_row

from ..support import REPO, read_topic
from ..support import stack as run_stack

EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"


def canonical_examples() -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))]


@dataclasses.dataclass
class Warehouse:
    kafka: KafkaSettings
    schema: str
    pool: asyncpg.Pool

    async def produce(self, events: list[dict[str, Any]]) -> None:
        producer = make_producer(self.kafka, "test")
        await producer.start()
        try:
            for event in events:
                key = (event.get("call_id") or event.get("session_id") or "").encode() or None
                await producer.send(self.kafka.events_topic, orjson.dumps(event), key=key,
                                    headers=[("hs-event-type", event["type"].encode())])
            await producer.flush()
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WarehouseSink]:
        stop = asyncio.Event()
        sink = WarehouseSink(load(PostgresSettings), WarehouseSettings(schema=self.schema))
        runner = SinkRunner(sink, self.kafka, SinkSettings(poll_timeout_ms=100),
                            group_id=f"test-warehouse-{self.schema}")
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        try:
            yield sink
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def count(self, table: str = "events") -> int:
        try:
            return int(await self.pool.fetchval(f"SELECT count(*) FROM {self.schema}.{table}"))
        except asyncpg.UndefinedTableError:
            return 0  # the sink has not applied its migrations yet

    async def wait_for_rows(self, want: int, table: str = "events", timeout_s: float = 30
                            ) -> int:
        for _ in range(int(timeout_s / 0.2)):
            if await self.count(table) >= want:
                break
            await asyncio.sleep(0.2)
        return await self.count(table)


@pytest.fixture
async def warehouse(stack: KafkaSettings) -> AsyncIterator[Warehouse]:
    run_id = uuid.uuid4().hex[:10]
    kafka = dataclasses.replace(stack, events_topic=f"test.events.{run_id}",
                                sink_topic_prefix=f"test.sink.{run_id}")
    await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 3, topics.DAY_MS, "t")])
    schema = f"test_wh_{run_id}"
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    try:
        yield Warehouse(kafka, schema, pool)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


def fresh(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "event_id": str(uuid.uuid4())}


async def test_every_event_lands_once_even_when_delivered_three_times(
        warehouse: Warehouse) -> None:
    events = [fresh(e) for e in canonical_examples()]
    await warehouse.produce(events)
    async with warehouse.running():
        assert await warehouse.wait_for_rows(len(events)) == len(events)
        await warehouse.produce(events + events)  # redelivered twice more
        await asyncio.sleep(2)
    assert await warehouse.count() == len(events)
    rows = await warehouse.pool.fetch(
        f"SELECT event_id::text, type, provider, event FROM {warehouse.schema}.events")
    by_id = {r["event_id"]: r for r in rows}
    for event in events:
        row = by_id[event["event_id"]]
        assert (row["type"], row["provider"]) == (event["type"], event["provider"])
        assert orjson.loads(row["event"]) == event  # the whole event, as JSONB
    calls = await warehouse.pool.fetch(f"SELECT * FROM {warehouse.schema}.calls")
    lifecycle = {e["call_id"] or e["session_id"] for e in events if e["type"].startswith(
        ("call.", "session."))}
    assert {r["call_id"] or r["session_id"] for r in calls} == lifecycle
    failures = await warehouse.pool.fetch(f"SELECT * FROM {warehouse.schema}.tool_failures")
    assert {r["provider"] for r in failures} == {"saaya", "sawt"}
    assert all(r["tool_name"] for r in failures)
    campaigns = await warehouse.pool.fetch(f"SELECT * FROM {warehouse.schema}.campaigns")
    assert campaigns and all(r["status"] for r in campaigns)
    agents = await warehouse.pool.fetch(f"SELECT * FROM {warehouse.schema}.agents")
    assert agents and all(r["last_event_type"].startswith("agent.") for r in agents)


def sawt_call(call_id: str) -> list[dict[str, Any]]:
    """One Sawt call's lifecycle, as the normalizer emits it (from the examples)."""
    by_type = {(e["provider"], e["type"]): e for e in canonical_examples()}
    started = dict(by_type[("sawt", "call.started")])
    ended = orjson.loads((EXAMPLES / "call.ended.sawt.json").read_bytes())
    analyzed = by_type[("sawt", "call.analyzed")]
    updated = by_type[("sawt", "call.updated")]
    out = []
    for n, e in enumerate((started, updated, ended, analyzed)):
        out.append({**e, "call_id": call_id, "event_id": str(uuid.UUID(int=n + 1))})
    return out


CALL_STATE = ("status", "last_event_type", "state_rank", "direction", "duration_s", "cost",
              "started_at", "ended_at", "summary", "sentiment_label", "transcript",
              "customer_number", "first_event_at", "last_event_at")


async def test_call_state_is_the_same_for_every_arrival_order(warehouse: Warehouse) -> None:
    pool = await WarehouseStore.create_pool(load(PostgresSettings), warehouse.schema)
    store = WarehouseStore(pool)
    await store.migrate()
    try:
        finals = set()
        for n, order in enumerate(itertools.permutations(sawt_call("x"))):
            call_id = f"perm-{n}"
            for event in order:  # one event per batch, in this arrival order
                await store.write([{**event, "call_id": call_id,
                                    "event_id": str(uuid.uuid5(uuid.NAMESPACE_OID,
                                                               call_id + event["event_id"]))}])
            row = await pool.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
            finals.add(tuple(row[c] for c in CALL_STATE))
        # All in one batch, too.
        await store.write([{**e, "call_id": "one-batch"} for e in sawt_call("x")[::-1]])
        row = await pool.fetchrow("SELECT * FROM calls WHERE call_id = 'one-batch'")
        finals.add(tuple(row[c] for c in CALL_STATE))
    finally:
        await pool.close()
    assert len(finals) == 1, finals
    final = dict(zip(CALL_STATE, finals.pop(), strict=True))
    assert final["status"] == "finished"  # a late call.updated never moves it back
    assert final["last_event_type"] == "call.ended"
    assert final["duration_s"] is not None and final["summary"]  # analysis filled in
    assert final["sentiment_label"] == "positive"


async def test_nul_characters_are_stripped_not_fatal(warehouse: Warehouse) -> None:
    event = fresh(next(e for e in canonical_examples() if e["type"] == "call.analyzed"))
    event["summary"] = "before\x00after"
    event["data"] = {**event["data"], "call_summary": "x\u0000y"}
    await warehouse.produce([event])
    async with warehouse.running():
        assert await warehouse.wait_for_rows(1) == 1
    summary = await warehouse.pool.fetchval(
        f"SELECT summary FROM {warehouse.schema}.calls WHERE call_id = $1", event["call_id"])
    assert summary == "beforeafter"


async def test_survives_a_database_restart(warehouse: Warehouse) -> None:
    """PostgreSQL goes away mid-stream and comes back: no row lost, none doubled."""
    first = [fresh(e) for e in canonical_examples()]
    second = [fresh(e) for e in canonical_examples()]
    await warehouse.produce(first)
    async with warehouse.running() as sink:
        assert await warehouse.wait_for_rows(len(first)) == len(first)
        await asyncio.to_thread(run_stack, "down", "postgres")
        try:
            await warehouse.produce(second)  # arrives while the database is down
            await asyncio.sleep(3)  # the sink retries with backoff meanwhile
        finally:
            await asyncio.to_thread(run_stack, "up", "postgres")
        await warehouse.pool.expire_connections()
        for _ in range(150):
            with contextlib.suppress(*_PG_DOWN):
                if await warehouse.count() >= len(first) + len(second):
                    break
            await asyncio.sleep(0.2)
        assert sink.rows_written == len(first) + len(second)
    assert await warehouse.count() == len(first) + len(second)
    assert await warehouse.count("event_ids") == len(first) + len(second)


_PG_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def test_migrations_folder_is_well_formed() -> None:
    from hookstream.core.migrate import migrations
    from hookstream.sinks.warehouse.store import MIGRATIONS

    found = migrations(Path(MIGRATIONS))
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))


async def test_sink_dead_letters_are_visible_and_redrivable(warehouse: Warehouse) -> None:
    from argparse import Namespace

    from hookstream.cli import _redrive
    from hookstream.core import dlq
    from hookstream.sinks.runner import sink_topics

    good = fresh(canonical_examples()[0])
    producer = make_producer(warehouse.kafka, "test")
    await producer.start()
    try:
        await producer.send_and_wait(warehouse.kafka.events_topic, b"{not json")
    finally:
        await producer.stop()
    await warehouse.produce([good])
    _, dead_topic = sink_topics(warehouse.kafka, "warehouse")
    async with warehouse.running():
        assert await warehouse.wait_for_rows(1) == 1  # the partition moved on
        letters = await read_topic(warehouse.kafka, dead_topic, 1)
        assert [dlq.header(r.headers, dlq.H_REASON) for r in letters] == ["malformed_event"]
        assert letters[0].value == b"{not json"
        args = Namespace(sink="warehouse", reason=None, stage=None, source=None, from_=None,
                         dry_run=False)
        assert await _redrive(warehouse.kafka, args) == (1, 0)
        # Re-offered through the retry topic, still malformed: dead-lettered again.
        again = await read_topic(warehouse.kafka, dead_topic, 2)
        assert len(again) == 2
    assert await warehouse.count() == 1


async def test_one_event_per_id_within_a_batch_and_across_spellings(
        warehouse: Warehouse) -> None:
    pool = await WarehouseStore.create_pool(load(PostgresSettings), warehouse.schema)
    try:
        store = WarehouseStore(pool)
        await store.migrate()
        event = fresh(canonical_examples()[0])
        shouted = {**event, "event_id": event["event_id"].upper()}  # the same uuid
        assert await store.write([event, event, shouted]) == 1
        assert await store.write([shouted]) == 0  # stored: skipped, nothing changes
        assert await warehouse.count() == 1
    finally:
        await pool.close()


async def test_two_writers_racing_on_one_batch_store_it_once(warehouse: Warehouse) -> None:
    # A rebalance overlap: two sink replicas write the same events at once. One
    # commits; the other fails on event_ids' primary key (a retryable database
    # error for the sink) and its retry finds everything stored.
    pools = [await WarehouseStore.create_pool(load(PostgresSettings), warehouse.schema)
             for _ in range(2)]
    try:
        stores = [WarehouseStore(p) for p in pools]
        await stores[0].migrate()
        collided = 0
        stored = 0
        # The writers race for real, so either may lose by waiting: then it finds every
        # id stored and writes 0 rows, also correct. Both outcomes are checked; the
        # collision itself must show within a few rounds (it does in most).
        for _ in range(8):
            events = [fresh(e) for e in canonical_examples()]
            # Both writers start alike, their month partitions made: otherwise the second
            # one could wait in CREATE TABLE ... PARTITION OF for the first one's
            # transaction (it locks ``events``) and never race.
            months = {(r[1].year, r[1].month) for r in map(event_row, events)}
            for store in stores:
                await store.ensure_partitions(months)
            results = await asyncio.gather(*(s.write(events) for s in stores),
                                           return_exceptions=True)
            written = [r for r in results if isinstance(r, int)]
            failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
            assert sorted(written, reverse=True)[0] == len(events) and sum(written) == len(
                events), results
            if failed:
                ((loser, error),) = failed
                assert isinstance(error, asyncpg.UniqueViolationError), error
                assert await stores[loser].write(events) == 0  # the retry
                collided += 1
            stored += len(events)
            assert await warehouse.count() == stored
            if collided >= 2:
                break
        assert collided, "the two writers never collided in 8 rounds"
    finally:
        for pool in pools:
            await pool.close()


async def test_hostile_events_are_written_sanitised_or_dead_lettered(
        warehouse: Warehouse) -> None:
    """Issue 11 (fuzzing the sinks, tests/unit/sinks/test_fuzz_sinks.py), against the real
    database: one batch holds NUL in a call id and in ``data``, date-times whose UTC
    instant is past year 9999, a lifecycle event with no source or provider, and an
    event nested 300 deep (orjson reads it off the topic; orjson cannot write it). The
    nested one is dead-lettered ``unstorable_event``; every other event is written, the
    NUL stripped, and the calls are recomputed (none of this batch stalls the sink)."""
    from hookstream.core import dlq
    from hookstream.sinks.runner import sink_topics
    from hookstream.sinks.warehouse.sink import UNSTORABLE

    by_name = {p.stem: orjson.loads(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))}
    nul = fresh({**by_name["call.ended.sawt"], "call_id": "call\x00nul", "agent_id": "a\x00",
                 "data": {"k\x00": "v\x00", "call_id": "call\x00nul"}})
    far = fresh({**by_name["call.ended.sawt"], "call_id": f"far-{uuid.uuid4().hex[:6]}",
                 "occurred_at": "9999-12-31T23:59:59-23:59",
                 "started_at": "0001-01-01T00:00:00+01:00",
                 "ended_at": "9999-12-31T23:30:00-01:00"})
    sourceless = {"event_id": str(uuid.uuid4()), "type": "call.ended",
                  "call_id": f"bare-{uuid.uuid4().hex[:6]}"}
    good = [fresh(by_name["call.started"]), fresh(by_name["tool.failed"])]
    deep = fresh(by_name["call.ended.sawt"])
    deep_bytes = (orjson.dumps({**deep, "data": None})[:-1] + b',"x":' + b'{"a":' * 300
                  + b"1" + b"}" * 300 + b"}")
    producer = make_producer(warehouse.kafka, "test")
    await producer.start()
    try:
        await producer.send_and_wait(warehouse.kafka.events_topic, deep_bytes, key=b"deep",
                                     headers=[("hs-event-type", b"call.ended")])
    finally:
        await producer.stop()
    await warehouse.produce([good[0], nul, far, sourceless, good[1]])
    _, dead_topic = sink_topics(warehouse.kafka, "warehouse")
    async with warehouse.running():
        assert await warehouse.wait_for_rows(5) == 5
        letters = await read_topic(warehouse.kafka, dead_topic, 1)
    assert [dlq.header(r.headers, dlq.H_REASON) for r in letters] == [UNSTORABLE]
    assert letters[0].value == deep_bytes
    schema = warehouse.schema
    stored = {r["event_id"]: r for r in await warehouse.pool.fetch(
        f"SELECT event_id::text, call_id, agent_id, occurred_at, event FROM {schema}.events")}
    assert set(stored) == {e["event_id"] for e in (*good, nul, far, sourceless)}
    row = stored[nul["event_id"]]
    assert (row["call_id"], row["agent_id"]) == ("callnul", "a")
    assert orjson.loads(row["event"])["data"] == {"k": "v", "call_id": "callnul"}
    assert stored[far["event_id"]]["occurred_at"] is None
    calls = {r["call_key"]: r for r in await warehouse.pool.fetch(
        f"SELECT call_key, provider, source, started_at, ended_at FROM {schema}.calls")}
    assert "sawt:callnul" in calls
    assert (calls[f"sawt:{far['call_id']}"]["started_at"],
            calls[f"sawt:{far['call_id']}"]["ended_at"]) == (None, None)
    bare = calls[f"None:{sourceless['call_id']}"]
    assert (bare["provider"], bare["source"]) == ("", "")


async def test_sinks_starting_together_create_their_schema_once(stack: KafkaSettings) -> None:
    """Every sink on the warehouse creates its schema, migrates it and creates this
    month's partitions at start; started together they must not fail on each other
    (CREATE SCHEMA / TABLE IF NOT EXISTS alone race on the catalog's unique indexes)."""
    from hookstream.sinks.warehouse.schema import create_pool, migrate

    pg = load(PostgresSettings)
    for attempt in range(5):  # the unguarded race needs a few tries to show
        schema = f"test_race_{uuid.uuid4().hex[:10]}"
        try:
            pools = await asyncio.gather(*(create_pool(pg, schema) for _ in range(8)))
            applied = await asyncio.gather(*(migrate(pool) for pool in pools))
            assert sorted(len(names) for names in applied)[:-1] == [0] * 7, "applied once"
            assert len(max(applied, key=len)) >= 4
            for pool in pools:
                assert await pool.fetchval("SELECT current_schema()") == schema, attempt
                await pool.close()
        finally:
            admin = await asyncpg.connect(pg.dsn)
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await admin.close()
