"""End to end: every sample delivery of all three providers, posted to the real ingest
app three times each, ends as the right rows in PostgreSQL, the right alerts in the
real Alertmanager and the right call activities at the local CRM fake; and the results
after three deliveries equal those after one.

Everything runs for real in this event loop: ingest (uvicorn), the normalizer, and the
warehouse, alerts and CRM sinks (each its own consumer group), on topics, a database
schema and an alert label of this test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from hookstream.cli import signed_request
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.sources import load_sources
from hookstream.devtools.samples import samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.normalizer.service import run as run_normalizer
from hookstream.normalizer.settings import NormalizerSettings
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import AlertsSink
from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.sink import CRMSink
from hookstream.sinks.runner import SinkRunner, SinkSettings
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink

from ..fakes.crm import TOKEN, FakeCRM
from ..support import REPO, SOURCES_FILE, caught_up, free_port, own_topics, serve

SOURCE_OF = {"saaya": "saaya-main", "sawt": "sawt-main", "sarj": "sarj-main"}
ALERTMANAGER = "http://127.0.0.1:9095"

# What the 34 sample deliveries must produce, written out from the samples themselves.
EXPECTED_ALERTS = Counter({"session_errored": 1, "session_escalated": 1,
                           "tool_failed": 3,  # saaya create_refund; sawt knowledge_base, send_sms
                           "campaign_budget_paused": 1, "kb_upload_failed": 1})
EXPECTED_CRM_CALLS = {
    "sawt:call_123", "sawt:call_7d3f19a2c04b",
    "sarj:call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b",
    "sarj:call_00000000-7e57-4b1d-9a0c-d45b0a4d7e57",
    "sarj:call_e0d4c3b2-a1f0-4e9d-8c7b-6a5f4e3d2c1b",
    "sarj:call_9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "sarj:call_3c1e7a92-0b4d-4e8f-9a2c-6d5b8e1f0a34",
    "sarj:call_a7f20c5d-91e3-4b6a-8c0d-3e4f5a6b7c8d",
    "sarj:call_51b9d8e0-2c7f-4a13-b6e4-9f0a1b2c3d4e",
    "saaya:ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D",
}


@dataclasses.dataclass
class Pipeline:
    kafka: KafkaSettings
    url: str
    schema: str
    run_id: str
    crm: FakeCRM
    pool: asyncpg.Pool

    async def post_all_samples(self) -> int:
        sources = load_sources(SOURCES_FILE)
        sent = 0
        async with httpx.AsyncClient(base_url=self.url) as client:
            for sample in samples():
                path, headers = signed_request(sources[SOURCE_OF[sample.provider]], sample,
                                               time.time(), f"msg_{sample.name}")
                response = await client.post(path, content=sample.body, headers=headers)
                assert response.status_code == 202, (sample.name, response.text)
                sent += 1
        return sent

    async def warehouse(self) -> dict[str, Any]:
        try:
            events = await self.pool.fetch(
                f"SELECT event_id::text, type, provider FROM {self.schema}.events")
            calls = await self.pool.fetch(
                f"SELECT call_key, status, last_event_type, duration_s, summary"
                f" FROM {self.schema}.calls")
        except asyncpg.UndefinedTableError:
            return {"events": [], "calls": []}
        return {"events": sorted(tuple(r) for r in events),
                "calls": sorted(tuple(r) for r in calls)}

    async def alerts(self) -> Counter[str]:
        async with httpx.AsyncClient(base_url=ALERTMANAGER) as client:
            response = await client.get("/api/v2/alerts",
                                        params={"filter": f'run_id="{self.run_id}"'})
            response.raise_for_status()
            return Counter(a["labels"]["alertname"] for a in response.json())

    def crm_calls(self) -> set[str]:
        return {c["properties"]["hookstream_call_key"] for c in self.crm.calls.values()}


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(coroutines: list[Callable[[asyncio.Event], Awaitable[None]]]
                  ) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c(stop)) for c in coroutines]
    try:
        yield
        for task in tasks:
            assert not task.done(), task.exception()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


@pytest.fixture
async def pipeline(stack: KafkaSettings) -> AsyncIterator[Pipeline]:
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    schema = f"test_e2e_{run_id}"
    crm = FakeCRM()
    crm_port, ingest_port, admin_port = free_port(), free_port(), free_port()
    pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
    sink_settings = SinkSettings(poll_timeout_ms=100, retry_delays_s=("1", "2"),
                                 backoff_max_s=1)
    pg = load(PostgresSettings)

    def sink(build: Callable[[], Any], name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        return lambda stop: SinkRunner(build(), kafka, sink_settings,
                                       group_id=f"test-{name}-{run_id}").run(stop, False)

    services = [
        lambda stop: run_normalizer(
            NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                               dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100),
            kafka, pg, stop, serve_http=False),
        sink(lambda: WarehouseSink(pg, WarehouseSettings(schema=schema)), "warehouse"),
        sink(lambda: AlertsSink(AlertsSettings(
            rules_file=str(REPO / "deploy" / "local" / "alerts.toml"),
            alertmanager_url=ALERTMANAGER, labels=(f"run_id={run_id}",))), "alerts"),
        sink(lambda: CRMSink(CRMSettings(url=f"http://127.0.0.1:{crm_port}", token=TOKEN)),
             "crm"),
    ]
    try:
        ingest = build_app(load_sources(SOURCES_FILE), IngestSettings(), kafka)
        async with serve(crm.app, crm_port), serve(ingest, ingest_port), serve(
                ingest.admin, admin_port):
            url = f"http://127.0.0.1:{ingest_port}"
            # Readiness is on ingest's admin listener, not on its webhook port.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as client:
                await until(lambda: _ready(client), 20, "ingest readiness")
            async with running(services):
                yield Pipeline(kafka, url, schema, run_id, crm, pool)
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.execute(f"DROP TABLE IF EXISTS test_dedupe_{run_id}")
        await pool.close()


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_every_sample_ends_in_warehouse_alertmanager_and_crm_once(
        pipeline: Pipeline) -> None:
    sent = await pipeline.post_all_samples()
    assert sent == 34

    async def settled() -> bool:
        wh = await pipeline.warehouse()
        return (len(wh["events"]) == sent and await pipeline.alerts() == EXPECTED_ALERTS
                and pipeline.crm_calls() == EXPECTED_CRM_CALLS)

    await until(settled, 90, "warehouse rows, alerts and CRM calls of one delivery")
    # Every call is in the CRM once settled; its later events (an analysis, a contact)
    # may still be on their way: the first picture is taken once every sink caught up.
    for name in ("warehouse", "alerts", "crm"):
        await caught_up(pipeline.kafka, f"test-{name}-{pipeline.run_id}",
                        pipeline.kafka.events_topic)
    first = await pipeline.warehouse()
    first_crm = pipeline.crm.snapshot()

    # Warehouse: one row per event, every provider; the calls table folded their state.
    assert Counter(p for _, _, p in first["events"]) == {"saaya": 18, "sawt": 9, "sarj": 7}
    calls = {key: (status, last, duration, summary)
             for key, status, last, duration, summary in first["calls"]}
    assert calls["sawt:call_123"][:3] == ("finished", "call.ended", 315.0)
    assert calls["sawt:call_123"][3].startswith("Customer called")  # from call.analyzed
    assert calls["sarj:call_3c1e7a92-0b4d-4e8f-9a2c-6d5b8e1f0a34"][1] == "call.not_connected"

    # Deliver everything twice more: nothing changes anywhere.
    assert await pipeline.post_all_samples() == sent
    assert await pipeline.post_all_samples() == sent
    # Every redelivery was read and dropped (or written idempotently) by every stage.
    await caught_up(pipeline.kafka, f"test-normalizer-{pipeline.run_id}",
                    pipeline.kafka.raw_topic)
    for name in ("warehouse", "alerts", "crm"):
        await caught_up(pipeline.kafka, f"test-{name}-{pipeline.run_id}",
                        pipeline.kafka.events_topic)
    assert await pipeline.warehouse() == first
    assert await pipeline.alerts() == EXPECTED_ALERTS
    assert pipeline.crm_calls() == EXPECTED_CRM_CALLS
    assert pipeline.crm.snapshot() == first_crm
