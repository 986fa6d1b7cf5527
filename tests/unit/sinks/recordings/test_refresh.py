"""The recordings sink and an expired Sarj.ai URL: a 4xx from storage makes it ask the
call API (the fake, in process) for a fresh URL and download once more, before giving
up. Only a Sarj.ai call whose source has a key is refreshed; a second 4xx is final."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from hookstream.providers.sarj.api import SarjApi
from hookstream.providers.sarj.settings import SarjApiSettings
from hookstream.sinks.base import SinkEvent
from hookstream.sinks.recordings.fetch import RECORDING_UNAVAILABLE
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.recordings.store import LocalDirStore
from tests.fakes.sarj import KEY, FakeSarj
from tests.support import REPO

from .test_sink import MemoryIndex

EXAMPLE = orjson.loads((REPO / "schemas/canonical/v1/examples/call.ended.json").read_bytes())


def ended(call_id: str, url: str, provider: str = "sarj",
          source: str = "sarj-main") -> SinkEvent:
    return SinkEvent({**EXAMPLE, "event_id": str(uuid.uuid4()), "call_id": call_id,
                      "recording_url": url, "provider": provider, "source": source},
                     record=None)


@dataclasses.dataclass
class Harness:
    sink: RecordingsSink
    fake: FakeSarj
    index: MemoryIndex
    api: SarjApi


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    fake, index = FakeSarj(port=8999), MemoryIndex()
    transport = httpx.ASGITransport(fake.app)  # the API and its storage, in process

    async def no_wait(_: float) -> None:
        return None

    api = SarjApi(SarjApiSettings(url=fake.url, retries=1), {"sarj-main": KEY},
                  transport=transport, sleep=no_wait)
    settings = RecordingsSettings(dir=str(tmp_path), allowed_hosts=("127.0.0.1",))
    sink = RecordingsSink(settings, store=LocalDirStore(tmp_path), index=index,
                          transport=transport, api=api)
    await sink.start()
    yield Harness(sink, fake, index, api)
    await sink.stop()


async def test_an_expired_url_is_fetched_again_with_a_fresh_one(harness: Harness) -> None:
    fake = harness.fake
    fake.add("call_a", recording=b"RIFF-a")
    url = fake.sign("call_a")  # what the webhook carried...
    fake.expire("call_a")  # ...has expired by the time the sink gets to it
    outcome = await harness.sink.write([ended("call_a", url)])
    assert outcome.failed == [] and outcome.deferred == []
    row = harness.index.rows["sarj:call_a"]
    assert row.bytes == len(b"RIFF-a") and row.source_url_host == "127.0.0.1"
    assert fake.requests["call_a"] == 1 and fake.downloads["call_a"] == 2
    assert harness.sink.downloads == 2


async def test_a_valid_url_does_not_ask_the_api(harness: Harness) -> None:
    harness.fake.add("call_b", recording=b"b")
    outcome = await harness.sink.write([ended("call_b", harness.fake.sign("call_b"))])
    assert outcome.failed == [] and harness.fake.requests == {}


async def test_when_the_fresh_url_fails_too_it_is_dead_lettered(harness: Harness) -> None:
    fake = harness.fake
    fake.add("call_c", recording=b"c")
    url = fake.sign("call_c")
    fake.expire("call_c")
    del fake.recordings["call_c"]  # the fresh URL's object is gone: 404 (no fresh URL)
    fake.add("call_d", recording=b"d")
    fake.expired_at_once.add("call_d")  # the fresh URL is refused as well
    outcome = await harness.sink.write([ended("call_c", url),
                                        ended("call_d", fake.sign("call_d"))])
    reasons = {i.event["call_id"]: (r, d) for i, r, d in outcome.failed}
    assert reasons["call_c"][0] == RECORDING_UNAVAILABLE
    assert "the call API gives no recording_url" in reasons["call_c"][1]
    assert reasons["call_d"][0] == RECORDING_UNAVAILABLE and "HTTP 403" in reasons["call_d"][1]
    assert fake.requests == {"call_c": 1, "call_d": 1}  # one refresh each, no loop
    assert fake.downloads["call_d"] == 2 and harness.index.rows == {}


async def test_an_unknown_call_or_a_failing_api(harness: Harness) -> None:
    fake = harness.fake
    url = fake.sign("call_e")  # storage has no such recording: 404, the API neither
    outcome = await harness.sink.write([ended("call_e", url)])
    [(_, reason, detail)] = outcome.failed
    assert reason == RECORDING_UNAVAILABLE and "call API: GET /calls/call_e: HTTP 404" in detail
    assert "Signature" not in detail
    fake.add("call_f", recording=b"f")
    url = fake.sign("call_f")
    fake.expire("call_f")
    fake.fail_next(2, 503)  # the API is down for both tries: parked, not dead
    outcome = await harness.sink.write([ended("call_f", url)])
    assert outcome.failed == [] and "call API" in outcome.deferred[0][1]
    outcome = await harness.sink.write([ended("call_f", url)])  # re-offered later
    assert outcome.failed == outcome.deferred == [] and "sarj:call_f" in harness.index.rows


async def test_only_sarj_calls_of_a_source_with_a_key_are_refreshed(harness: Harness) -> None:
    fake = harness.fake
    fake.add("call_g", recording=b"g")
    url = fake.sign("call_g")
    fake.expire("call_g")
    outcome = await harness.sink.write([ended("call_g", url, source="sarj-other"),
                                        ended("call_g2", url, provider="sawt")])
    assert [r for _, r, _ in outcome.failed] == [RECORDING_UNAVAILABLE] * 2
    assert fake.requests == {}
