"""Test deliveries through the real pipeline (issue 13, item 3): a Sarj.ai dashboard
"Send test webhook" (a synthetic ``complete``, recognised by the source's
``test_call_ids``) and our own smoke tests (``X-Hookstream-Test: 1``) land in the
warehouse's ``events`` with ``test = true`` and nowhere else: no ``calls`` row, no CRM
call or contact, no alert, no recording download. A real call and a real tool failure
sent alongside go everywhere, so each "nowhere" is a skip, not a pipeline that was idle.

Ingest (uvicorn), the normalizer and the warehouse, CRM, alerts and recordings sinks
run for real in this event loop against the local Kafka, PostgreSQL and Alertmanager,
on topics, a schema and an alert label of this test's own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import end_offsets
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
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.runner import TEST_SKIPPED, SinkRunner, SinkSettings, sink_topics
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink

from ..fakes.crm import TOKEN, FakeCRM
from ..support import REPO, free_port, own_topics, serve
from .test_end_to_end import _ready, running, until
from .test_sink_recordings import Bucket

ALERTMANAGER = os.environ.get("HOOKSTREAM_ALERTMANAGER_URL", "http://127.0.0.1:9095")
SARJ_SECRET = "sarj-test-path-secret-0123456789abcdef"
# The dashboard test's call id, as an operator lists it after pressing the button once.
TEST_CALL = "call_00000000-7e57-4b1d-9a0c-d45b0a4d7e57"
REAL_CALL = "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
TEST_PHONE = "+966500000000"

SOURCES_TOML = f"""
[sources.sarj-main]
provider = "sarj"
path_secret_env = "SARJ_TEST_PATH_SECRET"
test_call_ids = ["{TEST_CALL}"]

[sources.sawt-main]
provider = "sawt"
auth = "none"
allow_unauthenticated = true
"""


def sample_body(provider: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(next(s.body for s in samples(provider)
                                             if s.name == name))
    return body


def sarj_complete(name: str, call_id: str, recording_url: str,
                  phone: str | None = None) -> bytes:
    """A Sarj.ai ``complete`` example with its call id and recording URL replaced."""
    body = sample_body("sarj", name)
    body["call_id"] = body["payload"]["call_data"]["call_id"] = call_id
    body["payload"]["call_data"]["recording_url"] = recording_url
    if phone is not None:
        body["payload"]["call_data"]["phone_number"] = phone
    return orjson.dumps(body)


async def test_test_deliveries_stay_in_events_and_out_of_everything_else(
        stack: KafkaSettings, tmp_path: Path, monkeypatch: Any) -> None:
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    schema = f"test_td_{run_id}"
    sources_file = tmp_path / "sources.toml"
    sources_file.write_text(SOURCES_TOML)
    monkeypatch.setenv("SARJ_TEST_PATH_SECRET", SARJ_SECRET)
    crm, bucket = FakeCRM(), Bucket()
    smoke_call = f"call_smoke_{run_id}"
    sink_settings = SinkSettings(poll_timeout_ms=100, retry_delays_s=("1", "2"),
                                 backoff_max_s=1)
    pg = load(PostgresSettings)
    crm_port, ingest_port, admin_port = free_port(), free_port(), free_port()
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2)
    skipped_before = {name: TEST_SKIPPED.labels(name)._value.get()
                      for name in ("crm", "alerts", "recordings", "warehouse")}

    def skipped(name: str) -> float:
        return float(TEST_SKIPPED.labels(name)._value.get() - skipped_before[name])

    def sink(build: Any, name: str) -> Any:
        return lambda stop: SinkRunner(build(), kafka, sink_settings,
                                       group_id=f"test-{name}-{run_id}").run(stop, False)

    services = [
        # The normalizer reads the test calls from the sources file, as deployed.
        lambda stop: run_normalizer(
            NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                               dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100,
                               sources_file=str(sources_file)),
            kafka, pg, stop, serve_http=False),
        sink(lambda: WarehouseSink(pg, WarehouseSettings(schema=schema)), "warehouse"),
        sink(lambda: AlertsSink(AlertsSettings(
            rules_file=str(REPO / "deploy" / "local" / "alerts.toml"),
            alertmanager_url=ALERTMANAGER, labels=(f"run_id={run_id}",))), "alerts"),
        sink(lambda: CRMSink(CRMSettings(url=f"http://127.0.0.1:{crm_port}", token=TOKEN)),
             "crm"),
        sink(lambda: RecordingsSink(
            RecordingsSettings(dir=str(tmp_path / "recordings"), allowed_hosts=("127.0.0.1",),
                               allow_private_addresses=True),
            pg, WarehouseSettings(schema=schema)), "recordings"),
    ]
    recording = os.urandom(20_000)
    deliveries: list[tuple[str, bytes, dict[str, str]]] = [
        # Sarj.ai's dashboard test: a synthetic complete, nothing in it says "test";
        # the source's test_call_ids does.
        (f"/v1/webhooks/sarj-main/{SARJ_SECRET}",
         sarj_complete("complete.test_webhook", TEST_CALL, bucket.add(TEST_CALL, b"test")), {}),
        # Our own smoke test of a real-looking call, marked by the header.
        (f"/v1/webhooks/sarj-main/{SARJ_SECRET}",
         sarj_complete("complete", smoke_call, bucket.add(smoke_call, b"smoke"), TEST_PHONE),
         {"X-Hookstream-Test": "1"}),
        # A smoke-tested Sawt tool failure (an alert if it were real).
        ("/v1/webhooks/sawt-main",
         orjson.dumps({**sample_body("sawt", "tool.function.failed"),
                       "call_id": smoke_call, "tool_name": "smoke_tool"}),
         {"X-Routing-Key": "tool.function.failed", "X-Hookstream-Test": "true"}),
        # The real ones.
        (f"/v1/webhooks/sarj-main/{SARJ_SECRET}",
         sarj_complete("complete", REAL_CALL, bucket.add(REAL_CALL, recording)), {}),
        ("/v1/webhooks/sawt-main", orjson.dumps(sample_body("sawt", "tool.function.failed")),
         {"X-Routing-Key": "tool.function.failed"}),
    ]
    # Created here: the warehouse and recordings sinks each create it if missing, and
    # two concurrent CREATE SCHEMA IF NOT EXISTS can collide.
    await pool.execute(f'CREATE SCHEMA "{schema}"')
    try:
        ingest = build_app(load_sources(sources_file), IngestSettings(), kafka)
        async with serve(crm.app, crm_port), serve(bucket.app(), bucket.port), \
                serve(ingest, ingest_port), serve(ingest.admin, admin_port), running(services):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as admin:
                await until(lambda: _ready(admin), 20, "ingest readiness")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest_port}") as client:
                for path, body, headers in deliveries:
                    response = await client.post(path, content=body, headers={
                        "Content-Type": "application/json", **headers})
                    assert response.status_code == 202, response.text

            async def events() -> dict[tuple[str, str | None], bool]:
                try:
                    rows = await pool.fetch(
                        f"SELECT provider, call_id, test FROM {schema}.events")
                except asyncpg.UndefinedTableError:
                    return {}
                return {(r["provider"], r["call_id"]): r["test"] for r in rows}

            async def recorded() -> set[str]:
                try:
                    rows = await pool.fetch(f"SELECT call_key FROM {schema}.recordings")
                except asyncpg.UndefinedTableError:
                    return set()
                return {r["call_key"] for r in rows}

            async def settled() -> bool:
                return (len(await events()) == 5 and bool(crm.calls)
                        and await recorded() == {f"sarj:{REAL_CALL}"}
                        and bool(await alerts(run_id))
                        # every skip of a test event has been made and counted
                        and (skipped("crm"), skipped("recordings"), skipped("alerts"))
                        == (2, 2, 1))

            await until(settled, 90, "events, CRM, recording, alert and the skips")
            await asyncio.sleep(2)  # anything still on its way (nothing should be)

            # events: all five, the three test deliveries flagged.
            assert await events() == {
                ("sarj", TEST_CALL): True, ("sarj", smoke_call): True,
                ("sawt", smoke_call): True,
                ("sarj", REAL_CALL): False, ("sawt", "call_123"): False,
            }
            # calls: only the real call was folded.
            calls = await pool.fetch(f"SELECT call_key, status FROM {schema}.calls")
            assert sorted(tuple(r) for r in calls) == [(f"sarj:{REAL_CALL}", "completed")]
            # CRM: one call activity, the real one; no contact for the test's number.
            assert {c["properties"]["hookstream_call_key"] for c in crm.calls.values()} == {
                f"sarj:{REAL_CALL}"}
            assert crm.contacts_with_phone(TEST_PHONE) == []
            # Alerts: the real tool failure only.
            assert await alerts(run_id) == [("tool_failed", "send_sms")]
            # Recordings: the real call's downloaded; the test URLs never fetched.
            assert await recorded() == {f"sarj:{REAL_CALL}"}
            assert bucket.hits == {REAL_CALL: 1}
            stored = list((tmp_path / "recordings").rglob("*.wav"))
            assert [p.read_bytes() for p in stored] == [recording]
            # The warehouse took every event; no sink dead-lettered or parked anything.
            assert skipped("warehouse") == 0
            for name in ("warehouse", "crm", "alerts", "recordings"):
                retry, dead = sink_topics(kafka, name)
                assert sum((await end_offsets(kafka, dead)).values()) == 0, name
                assert sum((await end_offsets(kafka, retry)).values()) == 0, name
            assert sum((await end_offsets(kafka, kafka.dlq_topic)).values()) == 0
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.execute(f"DROP TABLE IF EXISTS test_dedupe_{run_id}")
        await pool.close()


async def alerts(run_id: str) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(base_url=ALERTMANAGER) as client:
        response = await client.get("/api/v2/alerts",
                                    params={"filter": f'run_id="{run_id}"'})
        response.raise_for_status()
        return sorted((a["labels"]["alertname"], a["labels"].get("tool_name", ""))
                      for a in response.json())
