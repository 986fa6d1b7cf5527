"""The transcripts sink's write() and the shared capped fetch (sinks/egress.py), against
httpx.MockTransport and an in-memory index: what is fetched, skipped, parked,
dead-lettered or retried."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest

from hookstream.core.errors import Retryable
from hookstream.sinks import egress
from hookstream.sinks.base import MALFORMED_EVENT, SinkEvent
from hookstream.sinks.transcripts.index import TranscriptRow
from hookstream.sinks.transcripts.parse import (
    NOT_A_TRANSCRIPT,
    TRANSCRIPT_TOO_LARGE,
    TRANSCRIPT_UNAVAILABLE,
    TRANSCRIPT_URL_REJECTED,
)
from hookstream.sinks.transcripts.settings import TranscriptsSettings
from hookstream.sinks.transcripts.sink import REASONS, TranscriptsSink
from tests.support import REPO

EXAMPLE = orjson.loads((REPO / "schemas/canonical/v1/examples/session.ended.json")
                       .read_bytes())
HOST = "https://api.saaya.ai/api/v1/sessions"
TURNS = [{"role": "agent", "text": "Hi!"}, {"role": "customer", "text": "Hello."}]


class MemoryIndex:
    def __init__(self) -> None:
        self.rows: dict[str, TranscriptRow] = {}
        self.failing = False

    async def known(self, call_keys: Sequence[str]) -> set[str]:
        if self.failing:
            raise OSError("connection refused")
        return {k for k in self.rows if k in call_keys}

    async def record(self, rows: Sequence[TranscriptRow]) -> None:
        if self.failing:
            raise OSError("connection refused")
        self.rows.update({r.call_key: r for r in rows})


class Source:
    """Transcripts by session id: a body, or an HTTP status; every request counted."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes | int] = {}
        self.hits: dict[str, int] = {}
        self.auth: list[str | None] = []

    def add(self, session_id: str, body: bytes | int | Any) -> str:
        self.bodies[session_id] = body if isinstance(body, bytes | int) else orjson.dumps(body)
        return f"{HOST}/{session_id}/transcript"

    def handler(self, request: httpx.Request) -> httpx.Response:
        session_id = request.url.path.split("/")[-2]
        self.hits[session_id] = self.hits.get(session_id, 0) + 1
        self.auth.append(request.headers.get("authorization"))
        body = self.bodies.get(session_id, 404)
        if isinstance(body, int):
            return httpx.Response(body, text="no")
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})


def ended(session_id: str, url: str | None, **fields: Any) -> SinkEvent:
    event = {**EXAMPLE, "event_id": str(uuid.uuid4()), "session_id": session_id,
             "transcript_url": url, **fields}
    return SinkEvent(event, record=None)


@dataclasses.dataclass
class Harness:
    sink: TranscriptsSink
    source: Source
    index: MemoryIndex


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    source, index = Source(), MemoryIndex()
    settings = TranscriptsSettings(max_bytes=10_000, authorization="Bearer sk_test")
    sink = TranscriptsSink(settings, index=index, transport=httpx.MockTransport(source.handler))
    await sink.start()
    yield Harness(sink, source, index)
    await sink.stop()


def test_wants_the_events_that_close_a_session() -> None:
    sink = TranscriptsSink(TranscriptsSettings(), index=MemoryIndex())
    assert sink.name == "transcripts" and sink.default_http_port == 8096
    assert sink.wants("session.ended") and sink.wants("session.errored")
    assert not any(sink.wants(t) for t in ("session.started", "session.escalated",
                                           "call.ended", "tool.called"))
    assert not sink.takes_test_events


def test_saaya_api_host_is_allowed_by_default() -> None:
    assert TranscriptsSettings().allowed_hosts == ("api.saaya.ai",)
    assert TranscriptsSettings().allow_private_addresses is False
    assert "sk_" not in repr(TranscriptsSettings(authorization="Bearer sk_live"))


async def test_stores_the_document_and_its_turns(harness: Harness) -> None:
    document = {"sessionId": "ses_a", "turns": TURNS}
    item = ended("ses_a", harness.source.add("ses_a", document))
    outcome = await harness.sink.write([item])
    assert (outcome.deferred, outcome.failed) == ([], [])
    row = harness.index.rows["saaya:ses_a"]
    assert orjson.loads(row.document) == document and row.turns == TURNS
    assert (row.provider, row.call_id, row.event_id) == ("saaya", "ses_a",
                                                         item.event["event_id"])
    assert row.content_type == "application/json" and row.source_url_host == "api.saaya.ai"
    assert row.bytes == len(orjson.dumps(document))
    assert harness.source.auth == ["Bearer sk_test"]  # HOOKSTREAM_TRANSCRIPTS_AUTHORIZATION


async def test_a_redelivery_fetches_nothing(harness: Harness) -> None:
    url = harness.source.add("ses_b", TURNS)
    await harness.sink.write([ended("ses_b", url)])
    before = harness.index.rows["saaya:ses_b"]
    outcome = await harness.sink.write([ended("ses_b", url), ended("ses_b", url)])
    assert (outcome.deferred, outcome.failed) == ([], [])
    assert harness.sink.fetches == 1 and harness.source.hits == {"ses_b": 1}
    assert harness.index.rows["saaya:ses_b"] is before


async def test_the_same_session_twice_in_a_batch_is_fetched_once(harness: Harness) -> None:
    url = harness.source.add("ses_c", TURNS)
    outcome = await harness.sink.write([ended("ses_c", url), ended("ses_c", url)])
    assert (outcome.deferred, outcome.failed) == ([], []) and harness.sink.fetches == 1


async def test_events_without_a_url_are_written_as_nothing_to_do(harness: Harness) -> None:
    outcome = await harness.sink.write([ended("ses_d", None)])
    assert (outcome.deferred, outcome.failed) == ([], [])
    assert harness.sink.fetches == 0 and harness.index.rows == {}


async def test_an_unknown_shape_is_stored_without_turns(harness: Harness) -> None:
    document = {"sessionId": "ses_e", "text": "Agent: hi. Customer: hello."}
    await harness.sink.write([ended("ses_e", harness.source.add("ses_e", document))])
    row = harness.index.rows["saaya:ses_e"]
    assert orjson.loads(row.document) == document and row.turns is None


async def test_permanent_failures_are_dead_lettered_with_their_reason(
        harness: Harness) -> None:
    gone = ended("ses_f", harness.source.add("ses_f", 404))
    denied = ended("ses_g", harness.source.add("ses_g", 401))
    big = ended("ses_h", harness.source.add("ses_h", b"[" + b"1," * 6000 + b"1]"))
    html = ended("ses_i", harness.source.add("ses_i", b"<html>Sign in</html>"))
    scalar = ended("ses_j", harness.source.add("ses_j", b'"ok"'))
    elsewhere = ended("ses_k", "https://evil.example/ses_k/transcript")
    not_http = ended("ses_l", "file:///etc/passwd")
    good = ended("ses_m", harness.source.add("ses_m", TURNS))
    outcome = await harness.sink.write([gone, denied, big, html, scalar, elsewhere,
                                        not_http, good])
    assert [(i, r) for i, r, _ in outcome.failed] == [
        (gone, TRANSCRIPT_UNAVAILABLE), (denied, TRANSCRIPT_UNAVAILABLE),
        (big, TRANSCRIPT_TOO_LARGE), (html, NOT_A_TRANSCRIPT), (scalar, NOT_A_TRANSCRIPT),
        (elsewhere, TRANSCRIPT_URL_REJECTED), (not_http, TRANSCRIPT_URL_REJECTED)]
    assert "HTTP 404" in outcome.failed[0][2]
    assert "HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS" in outcome.failed[5][2]
    assert outcome.deferred == [] and set(harness.index.rows) == {"saaya:ses_m"}
    assert "ses_k" not in harness.source.hits  # refused before any request


async def test_a_failing_source_parks_the_event_not_the_batch(harness: Harness) -> None:
    flaky = ended("ses_n", harness.source.add("ses_n", 503))
    limited = ended("ses_o", harness.source.add("ses_o", 429))
    good = ended("ses_p", harness.source.add("ses_p", TURNS))
    outcome = await harness.sink.write([flaky, limited, good])
    assert [i for i, _ in outcome.deferred] == [flaky, limited]
    assert "HTTP 503" in outcome.deferred[0][1]
    assert outcome.failed == [] and set(harness.index.rows) == {"saaya:ses_p"}


async def test_an_event_without_ids_is_dead_lettered_as_malformed(harness: Harness) -> None:
    url = harness.source.add("ses_q", TURNS)
    bad = [ended("", url), ended("ses_q", url, provider=None),
           ended("ses_q", url, event_id="not-a-uuid")]
    outcome = await harness.sink.write(bad)
    assert [(i, r) for i, r, _ in outcome.failed] == [(b, MALFORMED_EVENT) for b in bad]
    assert harness.sink.fetches == 0


async def test_a_failing_database_retries_the_batch(harness: Harness) -> None:
    url = harness.source.add("ses_r", TURNS)
    harness.index.failing = True
    with pytest.raises(Retryable):
        await harness.sink.write([ended("ses_r", url)])
    assert harness.sink.fetches == 0  # nothing is fetched before the lookup works
    harness.index.failing = False
    await harness.sink.write([ended("ses_r", url)])
    assert "saaya:ses_r" in harness.index.rows


# ------------------------------------------------------------------ egress.read_capped
class Chunks(httpx.AsyncByteStream):
    """``count`` chunks of 1 KiB that counts how many were pulled; fails after some."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.count, self.fail_after, self.yielded = count, fail_after, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n in range(self.count):
            if n == self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            self.yielded += 1
            yield b"x" * 1024


async def read(transport: httpx.MockTransport, max_bytes: int = 4096,
               url: str = f"{HOST}/ses_1/transcript?token=s3cr3t") -> egress.Fetched:
    async with egress.make_client(("api.saaya.ai",), REASONS, timeout_s=5,
                                  max_connections=2, user_agent="t",
                                  transport=transport) as client:
        return await egress.read_capped(client, url, REASONS, max_bytes=max_bytes,
                                        timeout_s=5)


async def test_read_capped_reads_up_to_the_cap() -> None:
    fetched = await read(httpx.MockTransport(lambda r: httpx.Response(200, stream=Chunks(4))))
    assert fetched.body == b"x" * 4096


async def test_read_capped_stops_reading_past_the_cap() -> None:
    body = Chunks(100)
    with pytest.raises(egress.FetchFailed) as caught:
        await read(httpx.MockTransport(lambda r: httpx.Response(200, stream=body)))
    assert caught.value.reason == TRANSCRIPT_TOO_LARGE and body.yielded == 5  # 5 KiB > 4 KiB
    assert "s3cr3t" not in caught.value.detail  # the query (a credential) is never shown


async def test_read_capped_refuses_a_declared_length_without_reading() -> None:
    body = Chunks(100)
    with pytest.raises(egress.FetchFailed) as caught:
        await read(httpx.MockTransport(lambda r: httpx.Response(
            200, stream=body, headers={"content-length": str(100 * 1024)})))
    assert caught.value.reason == TRANSCRIPT_TOO_LARGE and body.yielded == 0


async def test_read_capped_classes_a_reset_and_a_timeout_as_transient() -> None:
    with pytest.raises(egress.FetchTransient, match="ReadError"):
        await read(httpx.MockTransport(lambda r: httpx.Response(
            200, stream=Chunks(4, fail_after=2))))

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(egress.FetchTransient, match="timed out"):
        await read(httpx.MockTransport(slow))


async def test_a_redirect_to_a_host_not_allowed_is_refused() -> None:
    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})

    with pytest.raises(egress.FetchFailed) as caught:
        await read(httpx.MockTransport(redirect))
    assert caught.value.reason == TRANSCRIPT_URL_REJECTED
