"""Ingest against the real broker: every sample delivery lands on the raw topic
byte-for-byte with its metadata headers, and an unreachable broker gets 503."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from aiokafka import TopicPartition

from hookstream.cli import signed_request
from hookstream.core import topics
from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import end_offsets
from hookstream.core.record import RawDelivery
from hookstream.core.sources import Source, load_sources
from hookstream.devtools.samples import samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings

from ..support import SOURCES_FILE, free_port, read_from, serve
from ..support import stack as run_stack

Stored = tuple[bytes | None, RawDelivery, dict[str, bytes]]


async def _read_raw(kafka: KafkaSettings, start: dict[TopicPartition, int], want: int,
                    timeout_s: float = 30) -> list[Stored]:
    return [(r.key, RawDelivery.from_kafka(r.headers, r.value), dict(r.headers))
            for r in await read_from(kafka, start, want, timeout_s)]


@pytest.fixture(scope="module")
async def raw_kafka(stack: KafkaSettings) -> KafkaSettings:
    """The real broker, with a raw topic of this module's own (nothing else writes to it)."""
    kafka = dataclasses.replace(stack, raw_topic=f"test.raw.{uuid.uuid4().hex[:10]}")
    await topics.ensure(kafka, topics.plan(kafka, partitions=3)[:1])
    return kafka


@pytest.fixture(scope="module")
async def ingest(raw_kafka: KafkaSettings) -> AsyncIterator[tuple[str, dict[str, Source]]]:
    sources = load_sources(SOURCES_FILE)
    port, admin_port = free_port(), free_port()
    app = build_app(sources, IngestSettings(ack_timeout_s=5.0), raw_kafka)
    async with serve(app, port), serve(app.admin, admin_port):
        url = f"http://127.0.0.1:{port}"
        # Readiness is on the admin listener; the public one does not serve it.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as admin:
            for _ in range(100):  # readiness: the producer connects in the background
                if (await admin.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/readyz")).status_code == 404
            assert (await client.get("/metrics")).status_code == 404
        yield url, sources


@pytest.mark.parametrize("source_name", ["saaya-main", "saaya-hex", "sawt-main",
                                         "sawt-basic", "sarj-main"])
async def test_every_sample_lands_on_raw_topic_byte_for_byte(
    ingest: tuple[str, dict[str, Source]], raw_kafka: KafkaSettings, source_name: str
) -> None:
    stack = raw_kafka
    url, sources = ingest
    source = sources[source_name]
    provider_samples = list(samples(source.provider.name))
    assert provider_samples, f"no samples for {source.provider.name}"
    start = await end_offsets(stack, stack.raw_topic)
    sent: dict[str, tuple[bytes, str]] = {}
    before_ms = time.time_ns() // 1_000_000
    async with httpx.AsyncClient(base_url=url) as client:
        for sample in provider_samples:
            path, headers = signed_request(source, sample, time.time(), f"msg_{sample.name}")
            response = await client.post(path, content=sample.body, headers=headers)
            assert response.status_code == 202, (sample.name, response.text)
            sent[response.json()["receipt"]] = (sample.body, sample.event)

    stored = await _read_raw(stack, start, len(sent))
    by_receipt = {raw.request_id: (key, raw, headers) for key, raw, headers in stored}
    assert set(by_receipt) == set(sent)
    for receipt, (body, event) in sent.items():
        key, raw, headers = by_receipt[receipt]
        assert raw.body == body  # exactly the bytes received
        assert raw.source == source_name
        assert raw.provider == source.provider.name
        assert before_ms <= raw.received_at_ms <= time.time_ns() // 1_000_000
        assert raw.content_type == "application/json"
        if source.provider.name == "sawt" and source.routing_key_header:
            assert raw.routing_key == event
        else:
            assert raw.routing_key is None
        if source_name == "saaya-main":  # Standard Webhooks: webhook-id is the event id
            assert raw.event_id is not None and raw.event_id.startswith("msg_")
        # The key is the delivery's natural id: Saaya `id`, otherwise `call_id`.
        parsed = orjson.loads(body)
        natural = parsed["id"] if source.provider.name == "saaya" else parsed["call_id"]
        assert key == natural.encode()


async def test_rejected_deliveries_never_reach_the_raw_topic(
    ingest: tuple[str, dict[str, Source]], raw_kafka: KafkaSettings
) -> None:
    stack = raw_kafka
    url, sources = ingest
    sample = next(samples("saaya"))
    start = await end_offsets(stack, stack.raw_topic)
    path, headers = signed_request(sources["saaya-main"], sample, time.time(), "msg_x")
    async with httpx.AsyncClient(base_url=url) as client:
        tampered = await client.post(path, content=sample.body + b" ", headers=headers)
        unknown = await client.post("/v1/webhooks/nope", content=sample.body, headers=headers)
        wrong_path = await client.post("/v1/webhooks/sarj-main/" + "x" * 32,
                                       content=b'{"call_id":"c"}')
    assert (tampered.status_code, unknown.status_code, wrong_path.status_code) == (401, 404, 401)
    assert await _read_raw(stack, start, 1, timeout_s=2) == []


async def test_broker_down_answers_503_within_the_bound(tmp_path_factory: pytest.TempPathFactory,
                                                        stack: KafkaSettings) -> None:
    """A throwaway second broker is stopped mid-run: ingest answers 503, never hangs."""
    state = tmp_path_factory.mktemp("outage-broker")
    port, controller = free_port(), free_port()
    env = {**os.environ, "HOOKSTREAM_STACK_DIR": str(state), "KAFKA_PORT": str(port),
           "KAFKA_CONTROLLER_PORT": str(controller), "KAFKA_HEAP": "-Xms256m -Xmx512m"}
    await asyncio.to_thread(run_stack, "up", "kafka", env=env)
    try:
        kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}")
        await topics.ensure(kafka, topics.plan(kafka, partitions=1))
        sources = load_sources(SOURCES_FILE)
        settings = IngestSettings(ack_timeout_s=2.0, probe_interval_s=0.5, retry_after_s=3,
                                  shutdown_timeout_s=3.0)
        app_port, admin_port = free_port(), free_port()
        sample = next(samples("sarj"))
        path, headers = signed_request(sources["sarj-main"], sample, time.time(), "m")
        app = build_app(sources, settings, kafka)
        async with serve(app, app_port), serve(app.admin, admin_port):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app_port}",
                                         timeout=30) as client, httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{admin_port}", timeout=30) as admin:
                for _ in range(100):
                    if (await admin.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert (await client.post(path, content=sample.body,
                                          headers=headers)).status_code == 202

                await asyncio.to_thread(run_stack, "down", "kafka", env=env)

                started = time.monotonic()
                response = await client.post(path, content=sample.body, headers=headers)
                elapsed = time.monotonic() - started
                assert response.status_code == 503
                assert response.headers["retry-after"] == "3"
                assert elapsed < settings.ack_timeout_s + 1.0, elapsed
                # Readiness follows the broker: the probe notices within a few intervals.
                for _ in range(40):
                    if (await admin.get("/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.25)
                assert (await admin.get("/readyz")).status_code == 503
    finally:
        await asyncio.to_thread(run_stack, "down", "--purge", "kafka", env=env)
