"""The transcripts sink against the real broker and PostgreSQL, fetching from a fake
Saaya transcript API on loopback (a Starlette app under uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
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
from hookstream.sinks.base import RETRIES_EXHAUSTED
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics
from hookstream.sinks.transcripts.index import PgTranscriptsIndex, TranscriptRow
from hookstream.sinks.transcripts.settings import TranscriptsSettings
from hookstream.sinks.transcripts.sink import TranscriptsSink
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.store import WarehouseStore

from ..support import REPO, free_port, serve

EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"
TOKEN = "Bearer sk_test_transcripts"


def turns(session_id: str) -> list[dict[str, str]]:
    return [{"role": "agent", "text": f"Hello, this is {session_id}."},
            {"role": "customer", "text": "Hi."}]


class SaayaApi:
    """``GET /api/v1/sessions/{id}/transcript``: a body per session, or a status."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes | int] = {}
        self.hits: dict[str, int] = {}
        self.port = free_port()

    def add(self, session_id: str, body: bytes | int | None = None) -> str:
        self.bodies[session_id] = (orjson.dumps({"sessionId": session_id,
                                                 "messages": turns(session_id)})
                                   if body is None else body)
        return f"http://127.0.0.1:{self.port}/api/v1/sessions/{session_id}/transcript"

    async def get(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        self.hits[session_id] = self.hits.get(session_id, 0) + 1
        if request.headers.get("authorization") != TOKEN:
            return Response(b'{"error": "unauthorized"}', 401)
        body = self.bodies.get(session_id, 404)
        if isinstance(body, int):
            return Response(b'{"error": "no"}', body)
        return Response(body, media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/v1/sessions/{session_id}/transcript", self.get)])


@dataclasses.dataclass
class Env:
    kafka: KafkaSettings
    schema: str
    pool: asyncpg.Pool
    run_id: str

    async def produce(self, events: list[dict[str, Any]]) -> None:
        producer = make_producer(self.kafka, "test")
        await producer.start()
        try:
            for event in events:
                key = (event.get("session_id") or "").encode() or None
                await producer.send(self.kafka.events_topic, orjson.dumps(event), key=key,
                                    headers=[("hs-event-type", event["type"].encode())])
            await producer.flush()
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def running(self, **settings: Any) -> AsyncIterator[TranscriptsSink]:
        stop = asyncio.Event()
        # The fake API is on loopback: allow-listed by address, and private addresses
        # allowed (tests and development only; production allows public addresses only).
        config = TranscriptsSettings(**{"allowed_hosts": ("127.0.0.1",),
                                        "allow_private_addresses": True,
                                        "authorization": TOKEN, "fetch_timeout_s": 3.0,
                                        **settings})
        sink = TranscriptsSink(config, load(PostgresSettings),
                               WarehouseSettings(schema=self.schema))
        # Short retry delays: an unreachable source is re-offered twice, then dead-lettered.
        runner = SinkRunner(sink, self.kafka, SinkSettings(poll_timeout_ms=100,
                                                           retry_delays_s=("0.5", "0.5")),
                            group_id=f"test-transcripts-{self.run_id}")
        task = asyncio.create_task(runner.run(stop, serve_http=False))
        try:
            await until(lambda: sink.ready() or task.done())
            if task.done():
                task.result()
            yield sink
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def stored(self) -> dict[str, asyncpg.Record]:
        try:
            found = await self.pool.fetch(f"SELECT * FROM {self.schema}.transcripts")
        except asyncpg.UndefinedTableError:
            return {}
        return {r["call_key"]: r for r in found}

    async def calls(self) -> dict[str, Any]:
        return {r["session_id"]: None if r["transcript"] is None else orjson.loads(
            r["transcript"]) for r in await self.pool.fetch(
            f"SELECT session_id, transcript FROM {self.schema}.calls")}

    async def caught_up(self) -> bool:
        """The sink's group has committed every record of the events topic."""
        ends = await end_offsets(self.kafka, self.kafka.events_topic)
        consumer = make_consumer(self.kafka, f"test-transcripts-{self.run_id}")
        await consumer.start()
        try:
            for tp, end in ends.items():
                if (await consumer.committed(tp) or 0) < end:
                    return False
            return True
        finally:
            await consumer.stop()


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
    """This event's records on the sink's dead-letter topic (this run's)."""
    _, dead = sink_topics(kafka, "transcripts")
    return [r async for batch in scan(kafka, dead) for r in batch
            if orjson.loads(r.value).get("event_id") == event_id]


@pytest.fixture
async def env(stack: KafkaSettings) -> AsyncIterator[Env]:
    run_id = uuid.uuid4().hex[:10]
    # Retry and dead-letter topics of this run only: a parked event of an earlier run
    # must not be re-offered to this run's sink.
    kafka = dataclasses.replace(stack, events_topic=f"test.events.{run_id}",
                                sink_topic_prefix=f"test.tr.{run_id}.sink")
    await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 3, topics.DAY_MS, "t")])
    schema = f"test_tr_{run_id}"
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    try:
        yield Env(kafka, schema, pool, run_id)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


def session(kind: str, session_id: str, url: str | None = None) -> dict[str, Any]:
    example = orjson.loads((EXAMPLES / f"{kind}.json").read_bytes())
    event = {**example, "event_id": str(uuid.uuid4()), "session_id": session_id}
    if kind == "session.ended":
        event["transcript_url"] = url
    return event


async def test_transcripts_are_stored_with_the_session_either_order_and_once(env: Env) -> None:
    api = SaayaApi()
    early, late = (f"ses_{env.run_id}_{n}" for n in ("early", "late"))
    events = [session("session.ended", early, api.add(early)),
              session("session.ended", late, api.add(late))]
    wh_pool = await WarehouseStore.create_pool(load(PostgresSettings), env.schema)
    warehouse = WarehouseStore(wh_pool)
    try:
        async with serve(api.app(), api.port), env.running() as sink:
            # The sink started first on an empty schema: it applied the migrations.
            await warehouse.migrate()  # nothing left to apply
            await warehouse.write([events[0]])  # the warehouse has one session first
            assert (await env.calls())[early] is None

            await env.produce(events)
            await until(lambda: _count(env, 2))
            await warehouse.write([events[1]])  # the other reaches the warehouse only now

            rows = await env.stored()
            assert set(rows) == {f"saaya:{early}", f"saaya:{late}"}
            for n, session_id in enumerate((early, late)):
                row = rows[f"saaya:{session_id}"]
                assert orjson.loads(row["document"]) == {"sessionId": session_id,
                                                         "messages": turns(session_id)}
                assert orjson.loads(row["turns"]) == turns(session_id)
                assert str(row["event_id"]) == events[n]["event_id"]
                assert (row["provider"], row["call_id"]) == ("saaya", session_id)
                assert row["content_type"] == "application/json"
                assert row["source_url_host"] == "127.0.0.1"
            # calls.transcript: set by the sink (early), by the insert trigger (late).
            assert await env.calls() == {early: turns(early), late: turns(late)}

            # The warehouse folds the session again (a later event): the turns stay,
            # though no Saaya event carries them.
            await warehouse.write([session("session.started", early),
                                   session("session.escalated", late)])
            assert await env.calls() == {early: turns(early), late: turns(late)}

            # Delivered again: nothing is fetched or rewritten.
            await env.produce(events)
            await until(env.caught_up)
            assert await env.stored() == rows
            assert api.hits == {early: 1, late: 1} and sink.fetches == 2
    finally:
        await wh_pool.close()


async def test_oversize_and_non_transcript_bodies_are_dead_lettered(env: Env) -> None:
    api = SaayaApi()
    big, html, gone = (f"ses_{env.run_id}_{n}" for n in ("big", "html", "gone"))
    events = [session("session.ended", big, api.add(big, b'{"t": "' + b"a" * 5000 + b'"}')),
              session("session.ended", html, api.add(html, b"<html>Sign in</html>")),
              session("session.ended", gone, api.add(gone, 410))]
    async with serve(api.app(), api.port), env.running(max_bytes=4096):
        await env.produce(events)
        for event in events:
            await until(lambda e=event: dead_letters(env.kafka, e["event_id"]))
    for event, reason, detail in zip(events, ("transcript_too_large", "not_a_transcript",
                                              "transcript_unavailable"),
                                     ("4096", "not JSON", "HTTP 410"), strict=True):
        [dead] = await dead_letters(env.kafka, event["event_id"])
        assert dlq.header(dead.headers, dlq.H_REASON) == reason
        assert dlq.header(dead.headers, dlq.H_STAGE) == "sink:transcripts"
        assert detail in (dlq.header(dead.headers, dlq.H_DETAIL) or "")
        assert orjson.loads(dead.value) == event  # the original record, replayable
    assert await env.stored() == {}


async def test_an_unreachable_source_is_retried_then_dead_lettered(env: Env) -> None:
    """Connection refused is transient: the event is parked on the retry topic,
    re-offered after each delay, then dead-lettered as retries_exhausted."""
    session_id = f"ses_{env.run_id}_down"
    url = f"http://127.0.0.1:{free_port()}/api/v1/sessions/{session_id}/transcript"
    event = session("session.ended", session_id, url)
    async with env.running() as sink:
        await env.produce([event])
        await until(lambda: dead_letters(env.kafka, event["event_id"]), timeout_s=60)
        assert sink.fetches == 3  # the first offer and two re-offers
    [dead] = await dead_letters(env.kafka, event["event_id"])
    assert dlq.header(dead.headers, dlq.H_REASON) == RETRIES_EXHAUSTED
    assert "ConnectError" in (dlq.header(dead.headers, dlq.H_DETAIL) or "")
    assert await env.stored() == {}


async def test_a_loopback_url_is_refused_in_the_production_setting(env: Env) -> None:
    api = SaayaApi()
    session_id = f"ses_{env.run_id}_ssrf"
    event = session("session.ended", session_id, api.add(session_id))
    async with serve(api.app(), api.port), env.running(allow_private_addresses=False):
        await env.produce([event])
        await until(lambda: dead_letters(env.kafka, event["event_id"]))
    [dead] = await dead_letters(env.kafka, event["event_id"])
    assert dlq.header(dead.headers, dlq.H_REASON) == "transcript_url_rejected"
    assert api.hits == {}


async def test_index_and_trigger_agree_in_either_order(env: Env) -> None:
    """The index alone: an identical upsert leaves the row; calls.transcript is filled
    whichever of the call and its transcript is written first, never over an inline
    transcript, and survives every later fold of the call."""
    pool = await WarehouseStore.create_pool(load(PostgresSettings), env.schema)
    try:
        warehouse = WarehouseStore(pool)
        await warehouse.migrate()
        index = PgTranscriptsIndex(pool)
        before, after = (session("session.ended", s, f"http://h/{s}")
                         for s in ("s-before", "s-after"))
        await warehouse.write([before])

        def row(event: dict[str, Any], sha: str = "ab",
                found: list[dict[str, str]] | None = None) -> TranscriptRow:
            sid = event["session_id"]
            return TranscriptRow(call_key=f"saaya:{sid}", provider="saaya", call_id=sid,
                                 event_id=event["event_id"],
                                 document=orjson.dumps(found or turns(sid)).decode(),
                                 turns=found or turns(sid), bytes=10, sha256=sha,
                                 content_type="application/json", source_url_host="h")

        await index.record([row(before), row(after)])
        first = await pool.fetchval("SELECT stored_at FROM transcripts WHERE call_key = $1",
                                    "saaya:s-before")
        await index.record([row(before)])  # the same: untouched
        assert await pool.fetchval("SELECT stored_at FROM transcripts WHERE call_key = $1",
                                   "saaya:s-before") == first
        await warehouse.write([after])  # the session arrives after its transcript
        assert await env.calls() == {"s-before": turns("s-before"),
                                     "s-after": turns("s-after")}
        assert await index.known(["saaya:s-after", "saaya:nope"]) == {"saaya:s-after"}
        # A call whose own event carried a transcript inline keeps it.
        sarj = orjson.loads((EXAMPLES / "call.ended.json").read_bytes())
        inline = sarj["transcript"]
        assert inline
        await warehouse.write([{**sarj, "event_id": str(uuid.uuid4()),
                                "transcript_url": "http://h/x"}])
        key = f"sarj:{sarj['call_id']}"
        await index.record([TranscriptRow(call_key=key, provider="sarj",
                                          call_id=sarj["call_id"], event_id=sarj["event_id"],
                                          document="[]", turns=[], bytes=2, sha256="cd",
                                          content_type=None, source_url_host="h")])
        stored = await pool.fetchval(
            f"SELECT transcript FROM {env.schema}.calls WHERE call_key = $1", key)
        assert orjson.loads(stored) == inline
    finally:
        await pool.close()


async def _count(env: Env, want: int) -> bool:
    return len(await env.stored()) >= want
