"""The recordings sink against the real broker and PostgreSQL, fetching from a fake
signed-URL host on loopback (a Starlette app standing in for Sarj.ai's bucket)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hookstream.core import dlq, topics
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import end_offsets, make_consumer, make_producer, scan
from hookstream.providers.sarj.api import SarjApi
from hookstream.sinks.recordings.index import PgRecordingsIndex, RecordingRow
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.store import WarehouseStore

from ..support import REPO, free_port, serve

EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"
DLQ_TOPIC = "hookstream.sink.recordings.dlq.v1"


class Bucket:
    """Signed recording URLs: bytes for a valid signature, 403 once "expired"."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes | None] = {}  # None: the URL has expired
        self.hits: dict[str, int] = {}
        self.port = free_port()

    def add(self, call_id: str, body: bytes | None) -> str:
        self.objects[call_id] = body
        return (f"http://127.0.0.1:{self.port}/sarj-recordings-prod/org_4412/{call_id}.wav"
                "?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Expires=3600"
                f"&X-Goog-Signature={hashlib.sha256(call_id.encode()).hexdigest()}")

    async def get(self, request: Request) -> Response:
        call_id = request.path_params["name"].removesuffix(".wav")
        self.hits[call_id] = self.hits.get(call_id, 0) + 1
        if call_id not in self.objects or "X-Goog-Signature" not in request.query_params:
            return Response(b"<Error><Code>NoSuchKey</Code></Error>", 404)
        body = self.objects[call_id]
        if body is None:
            return Response(b"<Error><Code>ExpiredToken</Code></Error>", 403,
                            media_type="application/xml")
        return Response(body, media_type="audio/wav")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/sarj-recordings-prod/{org}/{name}", self.get)])


@dataclasses.dataclass
class Env:
    kafka: KafkaSettings
    schema: str
    pool: asyncpg.Pool
    root: Path
    run_id: str

    async def produce(self, events: list[dict[str, Any]]) -> None:
        producer = make_producer(self.kafka, "test")
        await producer.start()
        try:
            for event in events:
                key = (event.get("call_id") or "").encode() or None
                await producer.send(self.kafka.events_topic, orjson.dumps(event), key=key,
                                    headers=[("hs-event-type", event["type"].encode())])
            await producer.flush()
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def running(self, allow_private: bool = True,
                      api: SarjApi | None = None) -> AsyncIterator[RecordingsSink]:
        stop = asyncio.Event()
        # The fake bucket is on loopback: allow-listed by address, and private addresses
        # allowed (tests and development only; production allows public addresses only).
        settings = RecordingsSettings(dir=str(self.root), allowed_hosts=("127.0.0.1",),
                                      allow_private_addresses=allow_private)
        sink = RecordingsSink(settings, load(PostgresSettings),
                              WarehouseSettings(schema=self.schema), api=api)
        runner = SinkRunner(sink, self.kafka, SinkSettings(poll_timeout_ms=100),
                            group_id=f"test-recordings-{self.run_id}")
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        try:
            await until(lambda: sink.ready() or task.done())
            if task.done():
                task.result()
            yield sink
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def rows(self) -> dict[str, asyncpg.Record]:
        try:
            found = await self.pool.fetch(f"SELECT * FROM {self.schema}.recordings")
        except asyncpg.UndefinedTableError:
            return {}
        return {r["call_key"]: r for r in found}


async def until(check: Callable[[], Any], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def dead_letters(kafka: KafkaSettings, event_id: str) -> list[Any]:
    """This event's records on the sink's dead-letter topic (shared by every run)."""
    return [r async for batch in scan(kafka, DLQ_TOPIC) for r in batch
            if orjson.loads(r.value).get("event_id") == event_id]


@pytest.fixture
async def env(stack: KafkaSettings, tmp_path: Path) -> AsyncIterator[Env]:
    run_id = uuid.uuid4().hex[:10]
    kafka = dataclasses.replace(stack, events_topic=f"test.events.{run_id}")
    await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 3, topics.DAY_MS, "t")])
    schema = f"test_rec_{run_id}"
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    try:
        yield Env(kafka, schema, pool, tmp_path / "recordings", run_id)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


def call_ended(call_id: str, url: str | None) -> dict[str, Any]:
    example = orjson.loads((EXAMPLES / "call.ended.json").read_bytes())
    return {**example, "event_id": str(uuid.uuid4()), "call_id": call_id, "recording_url": url}


async def test_recordings_are_stored_recorded_and_redelivery_changes_nothing(env: Env) -> None:
    bucket = Bucket()
    first, second, gone = (f"call_{env.run_id}_{n}" for n in (1, 2, 3))
    data = {first: os.urandom(300_000), second: os.urandom(40_000)}
    events = [call_ended(first, bucket.add(first, data[first])),
              call_ended(second, bucket.add(second, data[second])),
              call_ended(gone, bucket.add(gone, None))]  # the signed URL has expired
    expired_id = events[2]["event_id"]
    sawt = orjson.loads((EXAMPLES / "call.ended.sawt.json").read_bytes())
    started = next(orjson.loads(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))
                   if orjson.loads(p.read_bytes())["type"] == "call.started")
    others = [{**sawt, "event_id": str(uuid.uuid4())}, {**started, "event_id": str(uuid.uuid4())}]

    wh_pool = await WarehouseStore.create_pool(load(PostgresSettings), env.schema)
    warehouse = WarehouseStore(wh_pool)
    try:
        async with serve(bucket.app(), bucket.port), env.running() as sink:
            # The recordings sink started first on an empty schema: it applied the
            # warehouse migrations itself.
            assert "recordings" in {r["tablename"] for r in await env.pool.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", env.schema)}
            await warehouse.migrate()  # nothing left to apply
            await warehouse.write([events[0]])  # the warehouse has call 1 before its recording

            await env.produce(events + others)
            await until(lambda: _count(env, 2))
            await until(lambda: dead_letters(env.kafka, expired_id))
            await warehouse.write([events[1]])  # call 2 reaches the warehouse only now

            rows = await env.rows()
            assert set(rows) == {f"sarj:{first}", f"sarj:{second}"}
            files = {}
            for n, call_id in enumerate((first, second)):
                path = env.root / "sarj" / "2026" / "04" / f"{call_id}.wav"
                assert path.read_bytes() == data[call_id]
                row = rows[f"sarj:{call_id}"]
                assert row["location"] == path.resolve().as_uri()
                assert row["bytes"] == len(data[call_id])
                assert row["sha256"] == hashlib.sha256(data[call_id]).hexdigest()
                assert str(row["event_id"]) == events[n]["event_id"]
                assert (row["provider"], row["call_id"]) == ("sarj", call_id)
                assert row["content_type"] == "audio/wav"
                assert row["source_url_host"] == "127.0.0.1"
                files[call_id] = path.stat().st_mtime_ns
            # calls.recording_location: set by the sink (call 1), by the insert trigger (2).
            located = {r["call_id"]: r["recording_location"] for r in await env.pool.fetch(
                f"SELECT call_id, recording_location FROM {env.schema}.calls")}
            assert located == {c: rows[f"sarj:{c}"]["location"] for c in (first, second)}

            [dead] = await dead_letters(env.kafka, expired_id)
            assert dlq.header(dead.headers, dlq.H_REASON) == "recording_unavailable"
            assert dlq.header(dead.headers, dlq.H_STAGE) == "sink:recordings"
            assert "HTTP 403" in (dlq.header(dead.headers, dlq.H_DETAIL) or "")
            assert "X-Goog-Signature" not in (dlq.header(dead.headers, dlq.H_DETAIL) or "")
            assert orjson.loads(dead.value) == events[2]  # the original record, replayable
            assert not list((env.root / ".partial").iterdir())
            assert bucket.hits == {first: 1, second: 1, gone: 1}

            # Delivered again: nothing is downloaded or rewritten. (The expired one is
            # dead-lettered again: each delivered record gets its outcome.)
            await env.produce(events + others)
            await until(lambda: _caught_up(env))
            assert len(await dead_letters(env.kafka, expired_id)) == 2
            assert sink.downloads == 4  # only the expired one was tried again
            assert await env.rows() == rows
            for call_id, mtime in files.items():
                path = env.root / "sarj" / "2026" / "04" / f"{call_id}.wav"
                assert path.stat().st_mtime_ns == mtime
            assert bucket.hits == {first: 1, second: 1, gone: 2}
    finally:
        await wh_pool.close()


async def test_a_loopback_recording_url_is_dead_lettered_not_fetched(env: Env) -> None:
    """The production setting (public addresses only): a recording_url on loopback, its
    host even allow-listed, is refused after resolution and dead-lettered; the server
    behind it never sees a request."""
    bucket = Bucket()
    call_id = f"call_{env.run_id}_ssrf"
    event = call_ended(call_id, bucket.add(call_id, b"internal"))
    async with serve(bucket.app(), bucket.port), env.running(allow_private=False):
        await env.produce([event])
        await until(lambda: dead_letters(env.kafka, event["event_id"]))
    [dead] = await dead_letters(env.kafka, event["event_id"])
    assert dlq.header(dead.headers, dlq.H_REASON) == "recording_url_rejected"
    assert "127.0.0.1" in (dlq.header(dead.headers, dlq.H_DETAIL) or "")
    assert bucket.hits == {}
    assert await env.rows() == {}


async def _count(env: Env, want: int) -> bool:
    return len(await env.rows()) >= want


async def _caught_up(env: Env) -> bool:
    """The sink's group has committed every record of the events topic."""
    ends = await end_offsets(env.kafka, env.kafka.events_topic)
    consumer = make_consumer(env.kafka, f"test-recordings-{env.run_id}")
    await consumer.start()
    try:
        for tp, end in ends.items():
            if (await consumer.committed(tp) or 0) < end:
                return False
        return True
    finally:
        await consumer.stop()


async def test_index_upserts_only_changes_and_fills_calls_either_way(env: Env) -> None:
    pool = await WarehouseStore.create_pool(load(PostgresSettings), env.schema)
    try:
        warehouse = WarehouseStore(pool)
        await warehouse.migrate()
        index = PgRecordingsIndex(pool)
        before, after = call_ended("c-before", "http://h/a.wav"), call_ended("c-after",
                                                                            "http://h/b.wav")
        await warehouse.write([before])

        def row(event: dict[str, Any], location: str, sha: str = "ab") -> RecordingRow:
            return RecordingRow(call_key=f"sarj:{event['call_id']}", provider="sarj",
                                call_id=event["call_id"], event_id=event["event_id"],
                                location=location, bytes=10, sha256=sha,
                                content_type="audio/wav", source_url_host="h")

        await index.record([row(before, "file:///r/1.wav"), row(after, "file:///r/2.wav")])
        first = {r["call_key"]: r for r in await pool.fetch("SELECT * FROM recordings")}
        await index.record([row(before, "file:///r/1.wav")])  # the same: untouched
        assert (await pool.fetchval("SELECT stored_at FROM recordings WHERE call_key = $1",
                                    "sarj:c-before")) == first["sarj:c-before"]["stored_at"]
        await index.record([row(before, "s3://b/1.wav", "cd")])  # moved: updated
        moved = await pool.fetchrow("SELECT * FROM recordings WHERE call_key = 'sarj:c-before'")
        assert (moved["location"], moved["sha256"]) == ("s3://b/1.wav", "cd")
        assert moved["stored_at"] > first["sarj:c-before"]["stored_at"]
        await warehouse.write([after])  # the call arrives after its recording: the trigger
        calls = {r["call_id"]: r["recording_location"] for r in await pool.fetch(
            "SELECT call_id, recording_location FROM calls")}
        assert calls == {"c-before": "s3://b/1.wav", "c-after": "file:///r/2.wav"}
        assert (await index.known(["sarj:c-after", "sarj:nope"])).keys() == {"sarj:c-after"}
        # A call without a recording URL gets no location.
        sawt = orjson.loads((EXAMPLES / "call.ended.sawt.json").read_bytes())
        await warehouse.write([{**sawt, "event_id": str(uuid.uuid4())}])
        assert await pool.fetchval("SELECT count(*) FROM calls WHERE provider = 'sawt'"
                                   " AND recording_location IS NULL") == 1
    finally:
        await pool.close()


async def test_a_call_and_its_recording_committing_together_keep_the_location(
        env: Env) -> None:
    """The call's row is being inserted (its transaction open) when the recording is
    recorded: the sink waits for the call's lock, then finds the row and sets the
    location (before migration 0005, each missed the other and it stayed empty)."""
    pool = await WarehouseStore.create_pool(load(PostgresSettings), env.schema)
    try:
        await WarehouseStore(pool).migrate()
        index = PgRecordingsIndex(pool)
        event = call_ended("c-racing", "http://h/r.wav")
        key = f"sarj:{event['call_id']}"
        async with pool.acquire() as conn:
            insert = conn.transaction()
            await insert.start()
            await conn.execute(
                "INSERT INTO calls (call_key, provider, source, state_rank, state_at,"
                " state_event_id, first_event_at, last_event_at, recording_url)"
                " VALUES ($1, 'sarj', 's', 1, now(), $2, now(), now(), 'http://h/r.wav')",
                key, uuid.UUID(event["event_id"]))
            recording = asyncio.create_task(index.record([RecordingRow(
                call_key=key, provider="sarj", call_id=event["call_id"],
                event_id=event["event_id"], location="file:///r/racing.wav", bytes=10,
                sha256="ab", content_type="audio/wav", source_url_host="h")]))
            await asyncio.sleep(0.5)
            assert not recording.done(), "the sink waits for the call's lock"
            await insert.commit()
        await asyncio.wait_for(recording, 10)
        assert await pool.fetchval("SELECT recording_location FROM calls WHERE call_key = $1",
                                   key) == "file:///r/racing.wav"
    finally:
        await pool.close()
