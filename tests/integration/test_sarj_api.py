"""Sarj.ai's call API closing the gaps (issue 13, item 4), against the local fake API on
a real port and the real broker and PostgreSQL:

* a recording whose signed URL has expired is archived all the same: the recordings
  sink asks the API for the call, gets a fresh URL and downloads again;
* ``hookstream backfill sarj`` run twice over the same calls (one of them delivered by
  webhook before) adds each call once to the warehouse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from hookstream import cli
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import make_producer
from hookstream.core.record import H_ORIGIN, RawDelivery, new_request_id, now_ms
from hookstream.normalizer.service import run as run_normalizer
from hookstream.normalizer.settings import NormalizerSettings
from hookstream.providers.sarj import SPEC as PROVIDER
from hookstream.providers.sarj.api import SarjApi
from hookstream.providers.sarj.settings import SarjApiSettings
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink

from ..fakes.sarj import KEY, FakeSarj, complete_detail
from ..support import free_port, own_topics, read_topic, serve
from .test_end_to_end import running, until
from .test_sink_recordings import Env, call_ended
from .test_sink_recordings import env as env  # the recordings sink's fixture


async def test_an_expired_recording_url_is_refreshed_and_archived(env: Env) -> None:
    fake = FakeSarj(free_port())
    call_id = f"call_{env.run_id}_expired"
    recording = os.urandom(120_000)
    fake.add(call_id, recording=recording)
    webhook_url = fake.sign(call_id)  # what the complete webhook carried...
    fake.expire(call_id)  # ...has expired before the sink fetched it
    event = {**call_ended(call_id, webhook_url), "source": "sarj-main"}
    api = SarjApi(SarjApiSettings(url=fake.url), {"sarj-main": KEY})
    async with serve(fake.app, fake.port), env.running(api=api) as sink:
        await env.produce([event])

        async def archived() -> bool:
            return f"sarj:{call_id}" in await env.rows()

        await until(archived, 30, "the recording archived")
        row = (await env.rows())[f"sarj:{call_id}"]
        path = env.root / "sarj" / "2026" / "04" / f"{call_id}.wav"
        assert path.read_bytes() == recording
        assert row["location"] == path.resolve().as_uri()
        assert row["sha256"] == hashlib.sha256(recording).hexdigest()
        # The expired URL once (403), the API once, the fresh URL once.
        assert fake.downloads[call_id] == 2 and fake.requests[call_id] == 1
        assert sink.downloads == 2


@dataclasses.dataclass
class Pipeline:
    kafka: KafkaSettings
    schema: str
    pool: asyncpg.Pool

    async def events(self) -> list[tuple[str, str]]:
        try:
            rows = await self.pool.fetch(
                f"SELECT call_id, provider_type FROM {self.schema}.events ORDER BY call_id")
        except asyncpg.UndefinedTableError:
            return []
        return [(r["call_id"], r["provider_type"]) for r in rows]

    async def calls(self) -> list[str]:
        try:
            rows = await self.pool.fetch(f"SELECT call_id FROM {self.schema}.calls")
        except asyncpg.UndefinedTableError:
            return []
        return sorted(r["call_id"] for r in rows)


@contextlib.asynccontextmanager
async def pipeline(stack: KafkaSettings) -> Any:
    """The normalizer and the warehouse sink, on topics and a schema of this run's own."""
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    schema = f"test_bf_{run_id}"
    pg = load(PostgresSettings)
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
    services = [
        lambda stop: run_normalizer(
            NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                               dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100),
            kafka, pg, stop, serve_http=False),
        lambda stop: SinkRunner(WarehouseSink(pg, WarehouseSettings(schema=schema)), kafka,
                                SinkSettings(poll_timeout_ms=100),
                                group_id=f"test-warehouse-{run_id}").run(stop, False),
    ]
    try:
        async with running(services):
            yield Pipeline(kafka, schema, pool)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.execute(f"DROP TABLE IF EXISTS test_dedupe_{run_id}")
        await pool.close()


async def webhook(kafka: KafkaSettings, source: str, body: bytes) -> None:
    """A delivery as ingest stores it (no hs-origin)."""
    record = RawDelivery(source, "sarj", now_ms(), new_request_id(), body, "application/json")
    producer = make_producer(kafka, "test")
    await producer.start()
    try:
        await producer.send_and_wait(kafka.raw_topic, body, key=PROVIDER.natural_key(body),
                                     headers=record.headers())
    finally:
        await producer.stop()


async def test_backfill_twice_adds_each_call_once(
        stack: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeSarj(free_port())
    tag = uuid.uuid4().hex[:8]
    delivered, failed_before, unanswered = (f"call_{tag}_{n}" for n in ("a", "b", "c"))
    fake.add(delivered, recording=b"a")
    fake.add(failed_before, complete_detail(failed_before, phone="+966500000001"),
             recording=b"b")
    fake.add(unanswered, {"type": "no_answer"})
    sources = tmp_path / "sources.toml"
    sources.write_text('[sources.sarj-main]\nprovider = "sarj"\n'
                       'allow_cidrs = ["127.0.0.0/8"]\napi_key_env = "SARJ_TEST_API_KEY"\n')
    ids = tmp_path / "calls.txt"
    ids.write_text(f"# calls Sarj.ai marked failed\n{failed_before}\n\n{unanswered}\n")

    async with pipeline(stack) as p, serve(fake.app, fake.port):
        monkeypatch.setenv("SARJ_TEST_API_KEY", KEY)
        monkeypatch.setenv("HOOKSTREAM_SARJ_API_URL", fake.url)
        monkeypatch.setenv("HOOKSTREAM_SARJ_API_BACKOFF_S", "0.05")
        for name, value in (("HOOKSTREAM_KAFKA_BOOTSTRAP", p.kafka.bootstrap),
                            ("HOOKSTREAM_RAW_TOPIC", p.kafka.raw_topic)):
            monkeypatch.setenv(name, value)
        # One call did arrive by webhook (with the recording URL of that moment).
        body = {"call_id": delivered, "payload": {
            **complete_detail(delivered), "type": "complete"}}
        body["payload"]["call_data"]["recording_url"] = fake.sign(delivered)
        await webhook(p.kafka, "sarj-main", orjson.dumps(body))
        await until(lambda: _has(p, 1), 60, "the webhook's event in the warehouse")

        argv = ["backfill", "sarj", delivered, "--from-file", str(ids),
                "--sources", str(sources)]
        fake.fail_next(1, 503)  # the API stumbles once: retried
        assert await asyncio.to_thread(cli.main, argv) == 0
        first = capsys.readouterr()
        assert first.out.count("published") == 3, first.out
        await until(lambda: _has(p, 3), 60, "the backfilled events in the warehouse")
        assert await asyncio.to_thread(cli.main, argv) == 0  # again: nothing new
        await asyncio.sleep(3)  # time for anything the second run could add

        want = sorted([(delivered, "complete"), (failed_before, "complete"),
                       (unanswered, "no_answer")])
        assert await p.events() == want
        assert await p.calls() == sorted([delivered, failed_before, unanswered])
        raw = await read_topic(p.kafka, p.kafka.raw_topic, 7)
        origins = [dict(r.headers).get(H_ORIGIN) for r in raw]
        assert origins.count(b"api-backfill") == 6 and origins.count(None) == 1
        # Keyed by call id, as ingest keys a Sarj.ai delivery: the same partition.
        assert {r.key for r in raw} == {c.encode() for c in (delivered, failed_before,
                                                             unanswered)}

        # A call the API does not know: reported, exit status 1; the others still go.
        capsys.readouterr()
        assert await asyncio.to_thread(cli.main, ["backfill", "sarj", "call_unknown",
                                                  unanswered, "--sources",
                                                  str(sources)]) == 1
        out = capsys.readouterr().out
        assert "call_unknown" in out and "HTTP 404" in out
        # Usage errors: exit status 2.
        assert await asyncio.to_thread(cli.main, ["backfill", "sarj", "--sources",
                                                  str(sources)]) == 2


async def _has(p: Pipeline, n: int) -> bool:
    return len(await p.events()) >= n
