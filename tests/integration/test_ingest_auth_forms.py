"""Issue 13, item 5, through a real ingest on a real port and the real broker: Sawt
deliveries with the routing key in each of the four places, and Saaya deliveries
signed in each configurable form, are answered 202 and land on the raw topic with
their source and routing key; a wrong signature in each form is answered 401 and
nothing of it reaches the topic.

Requests are built by ``hookstream.cli.signed_request`` (what ``hookstream send``, the
load generator and the fault suite use), from a sources file written the way an
operator would write it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition

from hookstream.cli import signed_request
from hookstream.core import topics
from hookstream.core.config import KafkaSettings
from hookstream.core.kafka import end_offsets
from hookstream.core.record import RawDelivery
from hookstream.core.sources import Source, load_sources
from hookstream.devtools.samples import Sample, fresh_copy, samples
from hookstream.ingest.app import build_app
from hookstream.ingest.settings import IngestSettings
from hookstream.providers.saaya.auth import SaayaVerifier

from ..support import free_port, read_from, serve

PATH_SECRET = "sawt-path-secret-" + "q" * 24
SAWT_SECRET = "sawt-integration-shared-secret"
SAAYA_SECRET = "saaya-integration-signing-secret"
WRONG_SECRET = b"some-other-signing-secret"

SOURCES_TOML = """
[sources.sawt-header]
provider = "sawt"
secret_env = "IT_SAWT_SECRET"
# routing_key_from = "header" is the default; so is routing_key_header = "X-Routing-Key"

[sources.sawt-query]
provider = "sawt"
secret_env = "IT_SAWT_SECRET"
routing_key_from = "query"
routing_key_param = "event"

[sources.sawt-path]
provider = "sawt"
secret_env = "IT_SAWT_SECRET"
path_secret_env = "IT_PATH_SECRET"
routing_key_from = "path"

[sources.sawt-fixed]
provider = "sawt"
secret_env = "IT_SAWT_SECRET"
routing_key_from = "fixed"
routing_key = "call.ended"

[sources.saaya-standard]
provider = "saaya"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-hex]
provider = "saaya"
preset = "hex"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-hex-bare]
provider = "saaya"
preset = "hex"
signature_prefix = ""
signature_header = "X-Saaya-Signature"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-base64-body]
provider = "saaya"
preset = "hex"
signature_encoding = "base64"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-timestamp-body]
provider = "saaya"
preset = "hex"
signed_string = "timestamp.body"
timestamp_header = "X-Saaya-Timestamp"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-standard-hex]
provider = "saaya"
preset = "standard-webhooks"
signature_encoding = "hex"
signature_prefix = "sha256="
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-combined]
provider = "saaya"
preset = "hex"
signature_form = "combined"
signed_string = "timestamp.body"
signature_header = "Saaya-Signature"
secret_env = "IT_SAAYA_SECRET"

[sources.saaya-combined-id]
provider = "saaya"
signature_form = "combined"
signature_header = "Saaya-Signature"
secret_env = "IT_SAAYA_SECRET"
"""
ENV = {"IT_SAWT_SECRET": SAWT_SECRET, "IT_PATH_SECRET": PATH_SECRET,
       "IT_SAAYA_SECRET": SAAYA_SECRET}

# What each Sawt source's request looks like, and the key the raw record must carry.
SAWT_EVENT = "call.ended"
SAWT_PATHS = {
    "sawt-header": "/v1/webhooks/sawt-header",
    "sawt-query": "/v1/webhooks/sawt-query?event=call.ended",
    "sawt-path": f"/v1/webhooks/sawt-path/{PATH_SECRET}/call.ended",
    "sawt-fixed": "/v1/webhooks/sawt-fixed",
}
# Each Saaya source: the signature header a sender writes, and its exact shape.
SAAYA_FORMS = {
    "saaya-standard": ("webhook-signature", r"v1,[A-Za-z0-9+/]{43}="),
    "saaya-hex": ("X-Signature", r"sha256=[0-9a-f]{64}"),
    "saaya-hex-bare": ("X-Saaya-Signature", r"[0-9a-f]{64}"),
    "saaya-base64-body": ("X-Signature", r"sha256=[A-Za-z0-9+/]{43}="),
    "saaya-timestamp-body": ("X-Signature", r"sha256=[0-9a-f]{64}"),
    "saaya-standard-hex": ("webhook-signature", r"sha256=[0-9a-f]{64}"),
    "saaya-combined": ("Saaya-Signature", r"t=[0-9]{10},v1=[0-9a-f]{64}"),
    "saaya-combined-id": ("Saaya-Signature", r"t=[0-9]{10},v1=[A-Za-z0-9+/]{43}="),
}


async def _read_raw(kafka: KafkaSettings, start: dict[TopicPartition, int], want: int,
                    timeout_s: float = 30) -> list[RawDelivery]:
    return [RawDelivery.from_kafka(r.headers, r.value)
            for r in await read_from(kafka, start, want, timeout_s)]


@pytest.fixture(scope="module")
async def raw_kafka(stack: KafkaSettings) -> KafkaSettings:
    """A raw topic of this module's own: nothing else writes to it."""
    kafka = dataclasses.replace(stack, raw_topic=f"test.raw.auth.{uuid.uuid4().hex[:10]}")
    await topics.ensure(kafka, topics.plan(kafka, partitions=3)[:1])
    return kafka


@pytest.fixture(scope="module")
def sources_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth-forms") / "sources.toml"
    path.write_text(SOURCES_TOML)
    return path


@pytest.fixture(scope="module")
async def ingest(raw_kafka: KafkaSettings, sources_file: Path
                 ) -> AsyncIterator[tuple[str, dict[str, Source]]]:
    sources = load_sources(sources_file, ENV)
    port, admin_port = free_port(), free_port()
    app = build_app(sources, IngestSettings(ack_timeout_s=5.0), raw_kafka)
    async with serve(app, port), serve(app.admin, admin_port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as admin:
            for _ in range(100):
                if (await admin.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}", sources


def _sawt_sample(tag: str) -> Sample:
    return fresh_copy(next(s for s in samples("sawt") if s.name == SAWT_EVENT), tag)


def _saaya_sample(tag: str) -> Sample:
    return fresh_copy(next(s for s in samples("saaya") if s.name == "session.ended"), tag)


async def test_sawt_routing_key_from_each_place_lands_on_the_raw_topic(
        ingest: tuple[str, dict[str, Source]], raw_kafka: KafkaSettings) -> None:
    url, sources = ingest
    start = await end_offsets(raw_kafka, raw_kafka.raw_topic)
    sent: dict[str, tuple[str, bytes]] = {}  # receipt -> (source, body)
    async with httpx.AsyncClient(base_url=url) as client:
        for name, expected_path in SAWT_PATHS.items():
            sample = _sawt_sample(name)
            path, headers = signed_request(sources[name], sample, time.time(), "m")
            assert path == expected_path
            # Only the header source gets the key in a header; the others have none.
            assert ("X-Routing-Key" in headers) == (name == "sawt-header")
            response = await client.post(path, content=sample.body, headers=headers)
            assert response.status_code == 202, (name, response.text)
            sent[response.json()["receipt"]] = (name, sample.body)

    stored = {raw.request_id: raw for raw in await _read_raw(raw_kafka, start, len(sent))}
    assert set(stored) == set(sent)
    for receipt, (name, body) in sent.items():
        raw = stored[receipt]
        assert (raw.source, raw.provider, raw.routing_key, raw.body) == (
            name, "sawt", "call.ended", body)


async def test_sawt_key_in_the_path_after_a_wrong_secret_is_401(
        ingest: tuple[str, dict[str, Source]], raw_kafka: KafkaSettings) -> None:
    url, sources = ingest
    sample = _sawt_sample("wrong-path")
    _, headers = signed_request(sources["sawt-path"], sample, time.time(), "m")
    start = await end_offsets(raw_kafka, raw_kafka.raw_topic)
    async with httpx.AsyncClient(base_url=url) as client:
        wrong = await client.post("/v1/webhooks/sawt-path/" + "w" * len(PATH_SECRET)
                                  + "/call.ended", content=sample.body, headers=headers)
        bare = await client.post("/v1/webhooks/sawt-path/call.ended", content=sample.body,
                                 headers=headers)
    assert (wrong.status_code, bare.status_code) == (401, 401)
    assert await _read_raw(raw_kafka, start, 1, timeout_s=2) == []


async def test_saaya_each_signature_form_accepted_and_wrong_ones_refused(
        ingest: tuple[str, dict[str, Source]], raw_kafka: KafkaSettings) -> None:
    url, sources = ingest
    start = await end_offsets(raw_kafka, raw_kafka.raw_topic)
    sent: dict[str, tuple[str, bytes]] = {}
    refused: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=url) as client:
        for name, (header, shape) in SAAYA_FORMS.items():
            source = sources[name]
            sample = _saaya_sample(name)
            path, headers = signed_request(source, sample, time.time(), f"msg_{name}")
            assert re.fullmatch(shape, headers[header]), (name, headers)
            response = await client.post(path, content=sample.body, headers=headers)
            assert response.status_code == 202, (name, response.text)
            sent[response.json()["receipt"]] = (name, sample.body)

            # The same form signed with a secret the source does not hold.
            assert isinstance(source.verifier, SaayaVerifier)
            forger = dataclasses.replace(source, verifier=dataclasses.replace(
                source.verifier, keys=(WRONG_SECRET,)))
            _, forged = signed_request(forger, sample, time.time(), f"msg_{name}")
            assert forged[header] != headers[header] and re.fullmatch(shape, forged[header])
            refused[name] = (await client.post(path, content=sample.body,
                                               headers=forged)).status_code
    assert refused == dict.fromkeys(SAAYA_FORMS, 401)

    stored = {raw.request_id: raw for raw in await _read_raw(raw_kafka, start, len(sent) + 1,
                                                             timeout_s=5)}
    # Exactly the accepted ones: nothing refused reached the topic.
    assert set(stored) == set(sent)
    for receipt, (name, body) in sent.items():
        raw = stored[receipt]
        assert (raw.source, raw.provider, raw.routing_key, raw.body) == (
            name, "saaya", None, body)
    event_ids = {stored[r].source: stored[r].event_id for r in sent}
    # webhook-id is the event id header of every Saaya source; only the forms that sign
    # an id send one.
    assert event_ids == {name: (f"msg_{name}" if name in (
        "saaya-standard", "saaya-standard-hex", "saaya-combined-id") else None)
        for name in SAAYA_FORMS}
