"""The fetching sink's own logic (services/sinks/fetching/), on a sink of this test's:
a thing fetched per call, kept in memory. What the recordings and transcripts sinks do
with it is in their own tests."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from hookstream.core.config import ConfigError, describe
from hookstream.core.errors import Retryable
from hookstream.sinks import egress
from hookstream.sinks.base import MALFORMED_EVENT, SinkEvent, WriteOutcome
from hookstream.sinks.fetching import settings as fetching
from hookstream.sinks.fetching.index import FetchedRow, FetchingIndex, in_lock_order
from hookstream.sinks.fetching.sink import FetchingSink, Job

WORDS = fetching.Words(thing="thing", things="things", act="grab", acts="grabs")
REASONS = egress.Reasons(url_rejected="thing_url_rejected", unavailable="thing_unavailable",
                         too_large="thing_too_large", allowed_hosts_setting="T_ALLOWED_HOSTS")
COUNTER = Counter("things_total", "things by outcome", ["outcome"],
                  registry=CollectorRegistry())


@dataclasses.dataclass(frozen=True)
class ThingSettings:
    max_bytes: int = fetching.max_bytes_setting("T_MAX_BYTES", 100, WORDS, "thing_too_large")
    grab_timeout_s: float = fetching.timeout_setting("T_GRAB_TIMEOUT_S", 5.0, WORDS)
    concurrency: int = fetching.concurrency_setting("T_CONCURRENCY", 2, WORDS)
    batch_deadline_s: float = fetching.batch_deadline_setting("T_BATCH_DEADLINE_S", 10.0,
                                                              WORDS)
    allowed_hosts: tuple[str, ...] = fetching.allowed_hosts_setting(
        "T_ALLOWED_HOSTS", ("things.example",), WORDS, "thing_url_rejected")
    allow_private_addresses: bool = fetching.allow_private_setting("T_ALLOW_PRIVATE")

    @property
    def timeout_s(self) -> float:
        return self.grab_timeout_s


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThingRow(FetchedRow):
    body: bytes


class MemoryIndex:
    def __init__(self) -> None:
        self.rows: dict[str, ThingRow] = {}

    async def known(self, call_keys: Sequence[str]) -> set[str]:
        return {k for k in call_keys if k in self.rows}

    async def record(self, rows: Sequence[ThingRow]) -> None:
        self.rows.update({r.call_key: r for r in rows})


class ThingsSink(FetchingSink[ThingSettings, ThingRow, set[str]]):
    name = "things"
    default_http_port = 1
    words = WORDS
    wanted = frozenset({"call.ended"})
    url_field = "thing_url"
    ids_named = "call_id"
    reasons = REASONS
    outcomes = COUNTER
    outcome_labels = ("known", "deferred", "thing_unavailable")
    not_fetched_event = "thing not fetched"
    record_failed = "recording the things failed"
    logger = logging.getLogger(__name__)

    def __init__(self, settings: ThingSettings, index: MemoryIndex,
                 transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(settings, index=index, transport=transport)
        self.fetched: list[str] = []

    def _pg_index(self, pool: asyncpg.Pool) -> FetchingIndex[ThingRow, set[str]]:
        raise AssertionError("in memory")

    async def _to_fetch(self, jobs: dict[str, Job], known: set[str]) -> list[Job]:
        return [job for key, job in jobs.items() if key not in known]

    async def _fetch(self, job: Job) -> ThingRow:
        assert self._client is not None
        self.fetched.append(job.call_id)
        if job.call_id.startswith("ours-down"):
            raise Retryable("our side is down")
        self._check_url(job.url)
        body = await egress.read_capped(self._client, job.url, REASONS, max_bytes=100,
                                        timeout_s=5)
        return ThingRow(call_key=job.call_key, provider=job.provider, call_id=job.call_id,
                        event_id=str(job.event["event_id"]), body=body.body, bytes=len(body.body),
                        sha256="-", content_type=body.content_type, source_url_host=None)


def source(request: httpx.Request) -> httpx.Response:
    status = int(request.url.path.strip("/"))
    return httpx.Response(status, content=b"a thing")


def ended(call_id: str, status: int = 200, **fields: Any) -> SinkEvent:
    return SinkEvent({"type": "call.ended", "provider": "p", "call_id": call_id,
                      "event_id": str(uuid.uuid4()),
                      "thing_url": f"https://things.example/{status}", **fields}, record=None)


@pytest.fixture
async def sink() -> AsyncIterator[ThingsSink]:
    sink = ThingsSink(ThingSettings(), MemoryIndex(), httpx.MockTransport(source))
    await sink.start()
    yield sink
    await sink.stop()


async def test_each_event_ends_written_failed_or_parked(sink: ThingsSink) -> None:
    ok, again, gone, busy = ended("ok"), ended("ok"), ended("gone", 404), ended("busy", 503)
    no_url, bad = ended("none", thing_url=None), ended("bad", event_id="not-a-uuid")
    outcome = await sink.write([ok, again, gone, busy, no_url, bad])
    assert sink.fetched == ["ok", "gone", "busy"]  # a call once; no URL: nothing to fetch
    assert [(i, r) for i, r, _ in outcome.failed] == [(bad, MALFORMED_EVENT),
                                                      (gone, "thing_unavailable")]
    assert outcome.failed[0][2] == ("call.ended with a thing_url but no valid provider, "
                                    "call_id or event_id")
    assert [i for i, _ in outcome.deferred] == [busy]
    assert set(sink._index.rows) == {"p:ok"}  # type: ignore[union-attr]
    # A redelivery of what is stored fetches nothing.
    assert await sink.write([ended("ok")]) == WriteOutcome() and len(sink.fetched) == 3


async def test_a_job_that_raises_retryable_fails_the_whole_batch(sink: ThingsSink) -> None:
    with pytest.raises(Retryable, match="our side is down"):
        await sink.write([ended("fine"), ended("ours-down")])
    assert sink._index.rows == {}  # type: ignore[union-attr]


async def test_what_has_not_started_by_the_deadline_is_parked() -> None:
    settings = ThingSettings(concurrency=1, batch_deadline_s=1e-9)
    sink = ThingsSink(settings, MemoryIndex(), httpx.MockTransport(source))
    await sink.start()
    try:
        items = [ended("a"), ended("b")]
        outcome = await sink.write(items)
    finally:
        await sink.stop()
    assert [(i, d) for i, d in outcome.deferred] == [
        (i, "not started within T_BATCH_DEADLINE_S") for i in items]


def test_the_shared_settings_are_documented_and_checked_in_the_sinks_own_words() -> None:
    docs = {var: doc for var, _, doc in describe(ThingSettings)}
    assert docs["T_CONCURRENCY"] == "grabs in flight at once"
    assert docs["T_MAX_BYTES"].startswith("largest thing fetched; a larger one is "
                                          "dead-lettered (thing_too_large)")
    fetching.validate(ThingSettings(), WORDS, timeout_field="grab_timeout_s")
    for bad, message in [({"max_bytes": 0}, "T_MAX_BYTES must be positive"),
                         ({"concurrency": 0}, "T_CONCURRENCY must be >= 1"),
                         ({"grab_timeout_s": 0}, "things setting grab_timeout_s must be"),
                         ({"allowed_hosts": ("https://x",)}, "T_ALLOWED_HOSTS: 'https://x'")]:
        with pytest.raises(ConfigError, match=message):
            fetching.validate(ThingSettings(**bad), WORDS, timeout_field="grab_timeout_s")


def test_rows_are_written_in_call_key_order() -> None:
    rows = [ThingRow(call_key=k, provider="p", call_id=k, event_id="e", body=b"", bytes=0,
                     sha256="-", content_type=None, source_url_host=None) for k in "cab"]
    assert [r.call_key for r in in_lock_order(rows)] == ["a", "b", "c"]
