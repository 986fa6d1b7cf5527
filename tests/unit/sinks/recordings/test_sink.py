"""The recordings sink's write(): what is fetched, skipped, parked, dead-lettered or
retried, with a local store in a temporary directory and an in-memory index."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hookstream.core.errors import Retryable
from hookstream.sinks.base import MALFORMED_EVENT, SinkEvent
from hookstream.sinks.recordings.fetch import RECORDING_TOO_LARGE, RECORDING_UNAVAILABLE
from hookstream.sinks.recordings.index import Known, RecordingRow
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.recordings.store import LocalDirStore, Spooled, Stored, StoreError
from tests.support import REPO

EXAMPLE = orjson.loads((REPO / "schemas/canonical/v1/examples/call.ended.json").read_bytes())
HOST = "https://storage.googleapis.com/sarj-recordings-prod/org_4412"
SARJ = ("storage.googleapis.com",)  # the allow-list (empty: every recording refused)


class MemoryIndex:
    def __init__(self) -> None:
        self.rows: dict[str, RecordingRow] = {}
        self.failing = False

    async def known(self, call_keys: Sequence[str]) -> dict[str, Known]:
        if self.failing:
            raise OSError("connection refused")
        return {k: Known(r.location, r.bytes) for k, r in self.rows.items() if k in call_keys}

    async def record(self, rows: Sequence[RecordingRow]) -> None:
        if self.failing:
            raise OSError("connection refused")
        self.rows.update({r.call_key: r for r in rows})


class Source:
    """Recordings by path: bytes, or an HTTP status; every request counted."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes | int] = {}
        self.hits: dict[str, int] = {}

    def add(self, call_id: str, body: bytes | int) -> str:
        self.bodies[f"/sarj-recordings-prod/org_4412/{call_id}.wav"] = body
        return f"{HOST}/{call_id}.wav?X-Goog-Expires=3600&X-Goog-Signature=abc"

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        body = self.bodies.get(path, 404)
        if isinstance(body, int):
            return httpx.Response(body, text="expired")
        return httpx.Response(200, content=body, headers={"content-type": "audio/wav"})


def ended(call_id: str, url: str | None) -> SinkEvent:
    event = {**EXAMPLE, "event_id": str(uuid.uuid4()), "call_id": call_id, "recording_url": url}
    return SinkEvent(event, record=None)


@dataclasses.dataclass
class Harness:
    sink: RecordingsSink
    source: Source
    index: MemoryIndex
    store: LocalDirStore
    root: Path


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    source, index = Source(), MemoryIndex()
    store = LocalDirStore(tmp_path)
    settings = RecordingsSettings(dir=str(tmp_path), allowed_hosts=SARJ, max_bytes=10_000)
    sink = RecordingsSink(settings, store=store, index=index,
                          transport=httpx.MockTransport(source.handler))
    await sink.start()
    yield Harness(sink, source, index, store, tmp_path)
    await sink.stop()


def test_wants_only_call_ended() -> None:
    sink = RecordingsSink(RecordingsSettings(), index=MemoryIndex())
    assert sink.name == "recordings" and sink.default_http_port == 8095
    assert sink.wants("call.ended")
    assert not any(sink.wants(t) for t in ("call.started", "call.analyzed", "session.ended"))


async def test_stores_the_file_and_records_it(harness: Harness) -> None:
    data = b"RIFF" + bytes(range(256)) * 20
    item = ended("call_a", harness.source.add("call_a", data))
    outcome = await harness.sink.write([item])
    assert (outcome.deferred, outcome.failed) == ([], [])
    final = harness.root / "sarj" / "2026" / "04" / "call_a.wav"  # the call ended 2026-04-12
    assert final.read_bytes() == data
    row = harness.index.rows["sarj:call_a"]
    assert (row.location, row.bytes, row.sha256) == (
        final.as_uri(), len(data), hashlib.sha256(data).hexdigest())
    assert (row.provider, row.call_id, row.event_id) == ("sarj", "call_a", item.event["event_id"])
    assert row.content_type == "audio/wav" and row.source_url_host == "storage.googleapis.com"


async def test_a_redelivery_downloads_nothing(harness: Harness) -> None:
    url = harness.source.add("call_b", b"x" * 500)
    await harness.sink.write([ended("call_b", url)])
    final = harness.root / "sarj" / "2026" / "04" / "call_b.wav"
    before = final.stat().st_mtime_ns
    outcome = await harness.sink.write([ended("call_b", url), ended("call_b", url)])
    assert (outcome.deferred, outcome.failed) == ([], [])
    assert harness.sink.downloads == 1 and sum(harness.source.hits.values()) == 1
    assert final.stat().st_mtime_ns == before and harness.store.writes == 1


async def test_a_recorded_file_that_went_missing_is_fetched_again(harness: Harness) -> None:
    url = harness.source.add("call_c", b"y" * 300)
    await harness.sink.write([ended("call_c", url)])
    final = harness.root / "sarj" / "2026" / "04" / "call_c.wav"
    final.unlink()
    await harness.sink.write([ended("call_c", url)])
    assert final.read_bytes() == b"y" * 300 and harness.sink.downloads == 2


async def test_the_same_call_twice_in_a_batch_is_fetched_once(harness: Harness) -> None:
    url = harness.source.add("call_d", b"z" * 100)
    outcome = await harness.sink.write([ended("call_d", url), ended("call_d", url)])
    assert (outcome.deferred, outcome.failed) == ([], [])
    assert harness.sink.downloads == 1


async def test_events_without_a_url_are_written_as_nothing_to_do(harness: Harness) -> None:
    sawt = orjson.loads((REPO / "schemas/canonical/v1/examples/call.ended.sawt.json")
                        .read_bytes())
    outcome = await harness.sink.write([ended("call_e", None),
                                        SinkEvent(sawt, record=None)])
    assert (outcome.deferred, outcome.failed) == ([], [])
    assert harness.sink.downloads == 0 and harness.index.rows == {}


async def test_expired_or_missing_urls_are_dead_lettered(harness: Harness) -> None:
    expired = ended("call_f", harness.source.add("call_f", 403))
    gone = ended("call_g", harness.source.add("call_g", 404))
    good = ended("call_h", harness.source.add("call_h", b"ok"))
    outcome = await harness.sink.write([expired, gone, good])
    assert [(i, r) for i, r, _ in outcome.failed] == [(expired, RECORDING_UNAVAILABLE),
                                                     (gone, RECORDING_UNAVAILABLE)]
    assert "HTTP 403" in outcome.failed[0][2] and "Signature" not in outcome.failed[0][2]
    assert outcome.deferred == [] and set(harness.index.rows) == {"sarj:call_h"}


async def test_too_large_is_dead_lettered(harness: Harness) -> None:
    big = ended("call_i", harness.source.add("call_i", b"a" * 10_001))
    outcome = await harness.sink.write([big])
    assert [(i, r) for i, r, _ in outcome.failed] == [(big, RECORDING_TOO_LARGE)]
    assert list(harness.store.spool_dir().iterdir()) == []
    assert not (harness.root / "sarj").exists()


async def test_a_failing_source_parks_the_event_not_the_batch(harness: Harness) -> None:
    """5xx: deferred to the retry topic, so the partition's other recordings (whose URLs
    also expire) are fetched now."""
    flaky = ended("call_j", harness.source.add("call_j", 503))
    good = ended("call_k", harness.source.add("call_k", b"fine"))
    outcome = await harness.sink.write([flaky, good])
    assert [i for i, _ in outcome.deferred] == [flaky] and "HTTP 503" in outcome.deferred[0][1]
    assert outcome.failed == [] and set(harness.index.rows) == {"sarj:call_k"}


async def test_a_failing_store_retries_the_batch(harness: Harness) -> None:
    async def broken_put(key: str, spooled: Spooled) -> Stored:
        spooled.path.unlink()
        raise StoreError("disk full")

    harness.store.put = broken_put  # type: ignore[method-assign]
    with pytest.raises(Retryable, match="disk full"):
        await harness.sink.write([ended("call_l", harness.source.add("call_l", b"x"))])
    assert harness.index.rows == {}


async def test_a_failing_database_retries_the_batch(harness: Harness) -> None:
    url = harness.source.add("call_m", b"x" * 50)
    harness.index.failing = True
    with pytest.raises(Retryable):
        await harness.sink.write([ended("call_m", url)])
    assert harness.sink.downloads == 0  # nothing is fetched before the lookup works
    harness.index.failing = False
    await harness.sink.write([ended("call_m", url)])
    assert "sarj:call_m" in harness.index.rows


async def test_the_batch_deadline_parks_what_has_not_started(tmp_path: Path) -> None:
    source, index = Source(), MemoryIndex()
    sink = RecordingsSink(RecordingsSettings(dir=str(tmp_path), allowed_hosts=SARJ,
                                             concurrency=1, batch_deadline_s=1e-9),
                          store=LocalDirStore(tmp_path), index=index,
                          transport=httpx.MockTransport(source.handler))
    await sink.start()
    items = [ended(f"call_n{n}", source.add(f"call_n{n}", b"x")) for n in range(3)]
    outcome = await sink.write(items)
    assert [i for i, _ in outcome.deferred] == items
    assert all("BATCH_DEADLINE" in d for _, d in outcome.deferred)
    await sink.stop()


@pytest.mark.parametrize(("field", "value"), [
    ("call_id", None), ("call_id", "nul\x00id"), ("provider", None), ("event_id", "not-a-uuid")])
async def test_values_the_database_would_reject_are_malformed(
        field: str, value: Any, harness: Harness) -> None:
    item = ended("x", "https://storage.googleapis.com/a.wav")
    item.event[field] = value
    outcome = await harness.sink.write([item])
    assert [(i, r) for i, r, _ in outcome.failed] == [(item, MALFORMED_EVENT)]
    assert harness.sink.downloads == 0
