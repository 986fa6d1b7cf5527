"""The normalizer against the real broker and database.

Every sample delivery of every provider goes through the real ingest app onto a
raw topic, through the normalizer, and is read back from the canonical topic;
redeliveries collapse to one event (also across a restart); every dead-letter
reason is found on the DLQ with its reason; replay and redrive are idempotent.
Each test uses its own topics and dedupe table, so runs never see each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from argparse import Namespace
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from hookstream.cli import _redrive, signed_request
from hookstream.core import dlq
from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.kafka import make_producer
from hookstream.core.sources import Source, load_sources
from hookstream.devtools.samples import Sample, samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.normalizer.service import replay, run
from hookstream.normalizer.settings import NormalizerSettings

from ..support import SOURCES_FILE, caught_up, free_port, own_topics, read_topic, serve

# The documented mapping, written out independently of the adapters.
CANONICAL_TYPE = {
    ("saaya", "session.started"): "session.started",
    ("saaya", "session.ended"): "session.ended",
    ("saaya", "session.errored"): "session.errored",
    ("saaya", "session.escalated"): "session.escalated",
    ("saaya", "tool.called"): "tool.called",
    ("saaya", "tool.errored"): "tool.failed",
    ("saaya", "agent.created"): "agent.created",
    ("saaya", "agent.updated"): "agent.updated",
    ("saaya", "agent.published"): "agent.published",
    ("saaya", "agent.rolledback"): "agent.rolled_back",
    ("saaya", "campaign.created"): "campaign.created",
    ("saaya", "campaign.started"): "campaign.started",
    ("saaya", "campaign.paused"): "campaign.paused",
    ("saaya", "campaign.row.completed"): "campaign.row.completed",
    ("saaya", "campaign.completed"): "campaign.completed",
    ("saaya", "kb.upload.completed"): "kb.upload.completed",
    ("saaya", "kb.upload.failed"): "kb.upload.failed",
    ("sawt", "call.initializing"): "call.initializing",
    ("sawt", "call.started"): "call.started",
    ("sawt", "call.updated"): "call.updated",
    ("sawt", "call.ended"): "call.ended",
    ("sawt", "call.analyzed"): "call.analyzed",
    ("sawt", "tool.knowledge_base.failed"): "tool.failed",
    ("sawt", "tool.function.failed"): "tool.failed",
    ("sarj", "complete"): "call.ended",
    ("sarj", "no_answer"): "call.not_connected",
    ("sarj", "user_rejected"): "call.not_connected",
    ("sarj", "user_unavailable"): "call.not_connected",
    ("sarj", "automation"): "call.not_connected",
    ("sarj", "failed"): "call.not_connected",
}


@dataclasses.dataclass
class Pipeline:
    kafka: KafkaSettings
    settings: NormalizerSettings
    pg: PostgresSettings
    sources: dict[str, Source]
    url: str

    async def post(self, source_name: str, sample: Sample, *, routing_key: bool = True,
                   body: bytes | None = None) -> httpx.Response:
        source = self.sources[source_name]
        payload = sample.body if body is None else body
        signed = dataclasses.replace(sample, body=payload)
        path, headers = signed_request(source, signed, time.time(), f"msg_{uuid.uuid4().hex}")
        if not routing_key and source.routing_key_header:
            headers.pop(source.routing_key_header, None)
        async with httpx.AsyncClient(base_url=self.url) as client:
            return await client.post(path, content=payload, headers=headers)

    @contextlib.asynccontextmanager
    async def normalizer(self, **overrides: Any) -> AsyncIterator[None]:
        """Run the real normalizer service in this event loop until the block ends."""
        stop = asyncio.Event()
        settings = dataclasses.replace(self.settings, **overrides)
        task = asyncio.create_task(run(settings, self.kafka, self.pg, stop, serve_http=False))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    async def events(self, want: int, timeout_s: float = 30) -> list[dict[str, Any]]:
        records = await read_topic(self.kafka, self.kafka.events_topic, want, timeout_s)
        return [orjson.loads(r.value) for r in records]

    async def drained(self, timeout_s: float = 30) -> None:
        """Wait until the normalizer's group has committed up to the raw topic's end."""
        await caught_up(self.kafka, self.settings.group_id, self.kafka.raw_topic, timeout_s)

    async def dead_letters(self, want: int, timeout_s: float = 30) -> list[Any]:
        return await read_topic(self.kafka, self.kafka.dlq_topic, want, timeout_s)


@pytest.fixture
async def pipeline(stack: KafkaSettings) -> AsyncIterator[Pipeline]:
    """Fresh topics, consumer group and dedupe table; the real ingest app in front."""
    run_id = uuid.uuid4().hex[:10]
    kafka = await own_topics(stack, run_id)
    settings = NormalizerSettings(group_id=f"test-normalizer-{run_id}",
                                  dedupe_table=f"test_dedupe_{run_id}", poll_timeout_ms=100)
    sources = load_sources(SOURCES_FILE)
    port = free_port()
    async with serve(build_app(sources, IngestSettings(), kafka), port):
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(100):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        yield Pipeline(kafka, settings, load(PostgresSettings), sources, url)


SOURCE_OF = {"saaya": "saaya-main", "sawt": "sawt-main", "sarj": "sarj-main"}


async def test_every_provider_event_round_trips_raw_to_canonical(pipeline: Pipeline) -> None:
    all_samples = list(samples())
    kinds = {(s.provider, s.event) for s in all_samples}
    assert kinds == set(CANONICAL_TYPE), "every one of the 30 event kinds has a sample"
    for sample in all_samples:
        response = await pipeline.post(SOURCE_OF[sample.provider], sample)
        assert response.status_code == 202, (sample.name, response.text)

    async with pipeline.normalizer():
        events = await pipeline.events(len(all_samples))
    assert len(events) == len(all_samples)
    assert await pipeline.dead_letters(0, timeout_s=0) == []

    by_data = {orjson.dumps(e["data"], option=orjson.OPT_SORT_KEYS): e for e in events}
    for sample in all_samples:
        body = orjson.loads(sample.body)
        event = by_data[orjson.dumps(body, option=orjson.OPT_SORT_KEYS)]  # data kept whole
        assert event["envelope"] == "hookstream.event.v1"
        assert event["provider"] == sample.provider
        assert event["source"] == SOURCE_OF[sample.provider]
        assert event["provider_type"] == sample.event
        assert event["type"] == CANONICAL_TYPE[(sample.provider, sample.event)], sample.name
        assert uuid.UUID(event["event_id"])
        assert event["received_at"].endswith("Z")
        if sample.provider == "saaya":
            assert event["provider_version"] == body["version"]
            assert event["occurred_at"] == body["createdAt"]
            assert event["session_id"] == body["data"].get("sessionId")
            assert event["agent_id"] == body["data"].get("agentId")
            assert event["campaign_id"] == body["data"].get("campaignId")
        else:
            assert event["call_id"] == body["call_id"]
            assert event["type_inferred"] is False

    ended = next(e for e in events if e["provider_type"] == "session.ended")
    assert ended["duration_s"] == pytest.approx(ended["data"]["data"]["durationMs"] / 1000)
    assert ended["cost"] == ended["data"]["data"]["cost"]["totalUsd"]
    assert ended["sentiment"] == ended["data"]["data"]["sentiment"]["avg"]
    sawt_end = next(e for e in events if e["provider_type"] == "call.ended"
                    and e["data"]["call_id"] == "call_123")
    assert (sawt_end["status"], sawt_end["direction"], sawt_end["duration_s"]) == (
        "finished", "inbound", 315)
    assert [t["role"] for t in sawt_end["transcript"]] == ["agent", "customer"]
    sarj_done = next(e for e in events if e["provider"] == "sarj" and e["type"] == "call.ended"
                     and "test_webhook" not in e["data"]["call_id"])
    assert sarj_done["recording_url"] == sarj_done["data"]["payload"]["call_data"][
        "recording_url"]
    not_connected = {e["outcome"] for e in events if e["type"] == "call.not_connected"}
    assert not_connected == {"no_answer", "user_rejected", "user_unavailable", "automation",
                             "failed"}


async def test_sawt_routing_key_inferred_when_no_header(pipeline: Pipeline) -> None:
    sawt = [s for s in samples("sawt") if "." not in s.name.removeprefix(s.event)]
    for sample in sawt:
        assert (await pipeline.post("sawt-basic", sample, routing_key=False)).status_code == 202
    async with pipeline.normalizer():
        events = await pipeline.events(len(sawt))
    assert sorted((e["provider_type"], e["type_inferred"]) for e in events) == sorted(
        (s.event, True) for s in sawt)


async def test_three_redeliveries_and_a_restart_yield_one_event(pipeline: Pipeline) -> None:
    sarj = list(samples("sarj"))
    for sample in sarj:  # first and second delivery, like Sarj.ai's retries
        for _ in range(2):
            assert (await pipeline.post("sarj-main", sample)).status_code == 202
    async with pipeline.normalizer():
        first = await pipeline.events(len(sarj))
    # The normalizer is stopped and started again; the third delivery arrives.
    for sample in sarj:
        assert (await pipeline.post("sarj-main", sample)).status_code == 202
    async with pipeline.normalizer():
        await pipeline.drained()  # the third deliveries were read and dropped
    events = await pipeline.events(len(sarj) + 1, timeout_s=2)
    assert len(first) == len(events) == len(sarj)
    assert len({e["event_id"] for e in events}) == len(sarj)


async def _produce_raw(kafka: KafkaSettings, value: bytes, headers: list[tuple[str, bytes]]
                       ) -> None:
    producer = make_producer(kafka, "test")
    await producer.start()
    try:
        await producer.send_and_wait(kafka.raw_topic, value=value, headers=headers)
    finally:
        await producer.stop()


async def test_every_dead_letter_reason_lands_on_the_dlq(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    saaya = next(s for s in samples("saaya") if s.event == "session.ended")
    sarj = next(s for s in samples("sarj") if s.event == "no_answer")
    body = orjson.loads(saaya.body)
    cases: dict[str, bytes] = {}

    async def via_ingest(reason: str, source: str, sample: Sample, payload: bytes) -> None:
        response = await pipeline.post(source, sample, body=payload)
        assert response.status_code == 202, (reason, response.text)
        cases[reason] = payload

    await via_ingest("invalid_utf8", "sarj-main", sarj, b'{"call_id": "c\xff\xfe"}')
    await via_ingest("malformed_json", "sarj-main", sarj, b'{"call_id": "c1", "payload": ')
    await via_ingest("not_an_object", "sarj-main", sarj, b'[{"call_id": "c1"}]')
    await via_ingest("unknown_event_type", "saaya-main", saaya,
                     orjson.dumps({**body, "type": "session.teleported"}))
    await via_ingest("unknown_version", "saaya-main", saaya,
                     orjson.dumps({**body, "version": "2099-01-01"}))
    await via_ingest("schema_violation", "saaya-main", saaya,
                     orjson.dumps({**body, "data": {**body["data"], "durationMs": "long"}}))
    cases["missing_metadata"] = b'{"call_id": "no-headers"}'
    await _produce_raw(pipeline.kafka, cases["missing_metadata"], [])
    cases["unknown_provider"] = b'{"call_id": "who"}'
    await _produce_raw(pipeline.kafka, cases["unknown_provider"], [
        ("hs-source", b"x"), ("hs-provider", b"vonage"), ("hs-received-at", b"1"),
        ("hs-request-id", b"r1")])
    # A mapping bug (here: planted for one call id) dead-letters that event only.
    from hookstream.providers import PROVIDERS as _PROVIDERS
    ADAPTERS = {name: spec.adapter for name, spec in _PROVIDERS.items()}

    sarj_adapter = ADAPTERS["sarj"]
    real_mapping = sarj_adapter.to_canonical

    def buggy(raw: Any, payload: dict[str, Any], *args: Any) -> Any:
        if payload.get("call_id") == "call_mapping_bug":
            raise KeyError("planted mapping bug")
        return real_mapping(raw, payload, *args)

    monkeypatch.setattr(sarj_adapter, "to_canonical", buggy)
    await via_ingest("mapping_failed", "sarj-main", sarj,
                     orjson.dumps({**orjson.loads(sarj.body), "call_id": "call_mapping_bug"}))
    # A good delivery after the poison ones: the partition must move on.
    assert (await pipeline.post("sarj-main", sarj)).status_code == 202

    async with pipeline.normalizer():
        letters = await pipeline.dead_letters(len(cases))
        events = await pipeline.events(1)
    assert [e["provider_type"] for e in events] == ["no_answer"]
    by_reason = {dlq.header(r.headers, dlq.H_REASON): r for r in letters}
    assert set(by_reason) == set(cases)
    for reason, payload in cases.items():
        record = by_reason[reason]
        assert record.value == payload  # the raw bytes, untouched
        assert dlq.header(record.headers, dlq.H_STAGE) == "normalizer"
        assert dlq.header(record.headers, dlq.H_DETAIL)
        assert dlq.header(record.headers, dlq.H_ORIGIN).startswith(pipeline.kafka.raw_topic)
        if reason != "missing_metadata":  # the original headers travel along
            assert dlq.header(record.headers, "hs-request-id")


async def test_replay_after_a_fix_is_idempotent(pipeline: Pipeline) -> None:
    saaya = [s for s in samples("saaya") if s.event.startswith("session.")]
    started_ms = time.time_ns() // 1_000_000 - 1000
    for sample in saaya:
        assert (await pipeline.post("saaya-main", sample)).status_code == 202
    # Deployed with only an older Saaya version configured: every delivery dead-letters.
    async with pipeline.normalizer(versions={"saaya": ("2025-01-01",)}):
        letters = await pipeline.dead_letters(len(saaya))
    assert {dlq.header(r.headers, dlq.H_REASON) for r in letters} == {"unknown_version"}
    assert await pipeline.events(0, timeout_s=0) == []

    # The fix: replay the range with the version configured.
    first = await replay(pipeline.settings, pipeline.kafka, pipeline.pg, started_ms, None,
                         "saaya-main")
    assert (first["matched"], first["published"], first["duplicates"]) == (
        len(saaya), len(saaya), 0)
    again = await replay(pipeline.settings, pipeline.kafka, pipeline.pg, started_ms, None, None)
    assert (again["published"], again["duplicates"]) == (0, len(saaya))
    assert len(await pipeline.events(len(saaya))) == len(saaya)


async def test_dlq_redrive_is_idempotent(pipeline: Pipeline) -> None:
    saaya = [s for s in samples("saaya") if s.event.startswith("agent.")]
    for sample in saaya:
        assert (await pipeline.post("saaya-main", sample)).status_code == 202
    async with pipeline.normalizer(versions={"saaya": ("2025-01-01",)}):
        await pipeline.dead_letters(len(saaya))
    args = Namespace(reason="unknown_version", stage=None, source=None, from_=None,
                     dry_run=False)
    assert await _redrive(pipeline.kafka, args) == (len(saaya), 0)
    async with pipeline.normalizer():  # now configured for the version: events appear
        assert len(await pipeline.events(len(saaya))) == len(saaya)
        await pipeline.drained()
    assert await _redrive(pipeline.kafka, args) == (len(saaya), 0)  # the same again
    async with pipeline.normalizer():
        await pipeline.drained()
    assert len(await pipeline.events(len(saaya) + 1, timeout_s=2)) == len(saaya)
