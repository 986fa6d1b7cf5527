"""The recordings sink: fetch each call's recording to a durable store.

A provider's finished call (canonical ``call.ended``) may carry a signed,
expiring ``recording_url``, often with no stated lifetime, only "download
promptly or generate a fresh one" from the provider's call API. Per event, in a
batch:

1. no URL (other providers, unrecorded calls): nothing to do, written;
2. already recorded in the warehouse and still in the store: nothing to do
   (a redelivery downloads nothing);
3. else download (fetch.py: streamed, size-capped, hashed) and store it
   (store.py: atomic, idempotent), at most ``concurrency`` at a time;
4. record the locations of the batch in the warehouse in one transaction
   (index.py): ``recordings`` and ``calls.recording_location``.

An expired URL: the storage answers a 4xx. For a call of a provider with a way to
fresh URLs (``ProviderSpec.recording_urls``: its call API, set up, and a key for
the call's source), the sink asks the call API for the call again, takes its
fresh ``recording_url`` and downloads once more before giving up. So no lifetime
is assumed anywhere: a recording parked on the retry topic for longer than its URL
lives is still fetched.

Failures:

* the URL is dead (4xx, and no fresh one, or the fresh one fails too), too
  large, or not allowed: dead letter (``recording_unavailable``,
  ``recording_too_large``, ``recording_url_rejected``), the partition moves on;
* the *source* is failing transiently (5xx, 429, timeout, connection error; or
  the call API, after its own retries): the event is parked on the retry topic
  (``WriteOutcome.deferred``), not the batch retried in place. The other
  recordings of the partition have URLs that expire too, so one slow or
  failing object must not hold them up;
* *our* side is failing (the store, the database): ``Retryable``, the whole
  batch waits with backoff. Every event would fail alike, and parking them
  would only burn their retry budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from prometheus_client import Counter

from ...core.config import PostgresSettings
from ...core.errors import Retryable
from ...core.postgres import DATABASE_ERRORS
from ...core.times import parse_utc
from ...providers import recording_hosts_note
from ...providers.base import ApiFailed, ApiUnavailable, RecordingUrls
from ..base import MALFORMED_EVENT, SinkEvent, WriteOutcome
from ..warehouse import schema as warehouse
from ..warehouse.settings import WarehouseSettings
from . import fetch
from .index import PgRecordingsIndex, RecordingRow, RecordingsIndex
from .settings import RecordingsSettings
from .store import (
    RecordingStore,
    Spooled,
    Stored,
    StoreError,
    build_store,
    extension,
    recording_key,
)

log = logging.getLogger(__name__)

WANTED = "call.ended"

RECORDINGS = Counter("hookstream_recordings_total",
                     "Recordings by outcome (stored, unchanged, known, deferred, "
                     "recording_unavailable, recording_too_large, recording_url_rejected)",
                     ["outcome"])
BYTES = Counter("hookstream_recordings_bytes_total", "Bytes of recordings downloaded")
REFRESHES = Counter("hookstream_recordings_url_refreshes_total",
                    "Expired recording URLs for which the call API was asked for a fresh one, "
                    "by outcome (refreshed, no_url, api_failed, api_unavailable)", ["outcome"])


@dataclasses.dataclass
class _Job:
    """One recording to fetch: the first event of its call in the batch, plus repeats."""

    items: list[SinkEvent]
    call_key: str
    provider: str
    call_id: str
    url: str
    when: dt.datetime
    source: str | None = None  # the event's source: whose call-API key to use


@dataclasses.dataclass
class _Done:
    job: _Job
    stored: Stored
    bytes: int
    sha256: str
    content_type: str | None
    url: str  # the URL downloaded: the event's, or a fresh one from the call API


def _when(event: dict[str, Any]) -> dt.datetime:
    """The month a recording is filed under: the call's end, else the event's times."""
    for field in ("ended_at", "occurred_at", "received_at"):
        parsed = parse_utc(event.get(field))
        if parsed is not None:
            return parsed
    return dt.datetime.now(dt.UTC)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


class RecordingsSink:
    name = "recordings"
    default_http_port = 8095
    takes_test_events = False  # the runner skips test deliveries (counted, logged)

    def __init__(self, settings: RecordingsSettings, pg: PostgresSettings | None = None,
                 warehouse: WarehouseSettings | None = None, *,
                 store: RecordingStore | None = None, index: RecordingsIndex | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 api: RecordingUrls | None = None,
                 apis: Sequence[RecordingUrls] = ()) -> None:
        self._settings = settings
        for outcome in ("stored", "unchanged", "known", "deferred", "recording_unavailable",
                        "recording_too_large", "recording_url_rejected"):
            RECORDINGS.labels(outcome)  # series exist from the start, at 0
        for outcome in ("refreshed", "no_url", "api_failed", "api_unavailable"):
            REFRESHES.labels(outcome)
        # Per provider, its call API for fresh URLs (absent: none, or not configured).
        self._apis = {a.provider: a for a in (*apis, *([api] if api is not None else []))}
        self._pg = pg or PostgresSettings()
        self._warehouse = warehouse or WarehouseSettings()
        self.store = store or build_store(settings)
        self._index = index
        self._transport = transport
        self._pool: asyncpg.Pool | None = None
        self._client: httpx.AsyncClient | None = None
        self.downloads = 0  # downloads started (tests, metrics)

    def wants(self, event_type: str) -> bool:
        return event_type == WANTED

    def ready(self) -> bool:
        return self._index is not None and self._client is not None

    async def start(self) -> None:
        await self.store.start()
        self._client = fetch.make_client(
            self._settings.allowed_hosts, self._settings.download_timeout_s,
            max_connections=self._settings.concurrency * 2, transport=self._transport,
            allow_private=self._settings.allow_private_addresses)
        if not self._settings.allowed_hosts:
            log.warning("HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS is empty: no recording will be "
                        "fetched, each is dead-lettered (recording_url_rejected); "
                        f"{recording_hosts_note()}")
        if self._settings.allow_private_addresses:
            log.warning("HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES is on: recordings may "
                        "be fetched from loopback and private addresses (tests and "
                        "development only)")
        if self._index is None:
            # The warehouse's migrations (0002 creates ``recordings``), so either sink
            # can start first.
            self._pool = await warehouse.create_pool(self._pg, self._warehouse.schema)
            applied = await warehouse.migrate(self._pool)
            self._index = PgRecordingsIndex(self._pool)
            log.info("recordings ready", extra={"schema": self._warehouse.schema,
                                                "store": self.store.kind,
                                                "migrations_applied": applied})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for api in self._apis.values():
            await api.aclose()
        await self.store.close()
        if self._pool is not None:
            await self._pool.close()

    # ------------------------------------------------------------ write
    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        assert self._index is not None and self._client is not None, "start() first"
        outcome = WriteOutcome()
        jobs = self._jobs(events, outcome)
        if not jobs:
            return outcome
        try:
            known = await self._index.known(list(jobs))
        except DATABASE_ERRORS as exc:
            raise Retryable(f"recordings lookup failed: {exc!r}") from exc
        todo: list[_Job] = []
        for key, job in jobs.items():
            seen = known.get(key)
            if seen is not None and await self._exists(seen.location, seen.bytes):
                RECORDINGS.labels("known").inc()
                continue  # a redelivery: stored and recorded already
            todo.append(job)

        done = await self._fetch_all(todo, outcome)
        rows = [RecordingRow(d.job.call_key, d.job.provider, d.job.call_id,
                             str(d.job.items[0].event["event_id"]), d.stored.location,
                             d.bytes, d.sha256, d.content_type, urlsplit(d.url).hostname)
                for d in done]
        try:
            await self._index.record(rows)
        except DATABASE_ERRORS as exc:
            # The files are stored; a retry finds them identical and records them.
            raise Retryable(f"recording the locations failed: {exc!r}") from exc
        return outcome

    def _jobs(self, events: list[SinkEvent], outcome: WriteOutcome) -> dict[str, _Job]:
        jobs: dict[str, _Job] = {}
        for item in events:
            event = item.event
            url = event.get("recording_url")
            if not isinstance(url, str) or not url:
                continue  # nothing to fetch: written
            call_id = event.get("call_id") or event.get("session_id")
            provider = event.get("provider")
            if not (_text(call_id) and _text(provider) and _uuid(event.get("event_id"))):
                # Checked here: a value the database rejects would fail the batch forever.
                outcome.failed.append((item, MALFORMED_EVENT, "call.ended with a recording_url "
                                       "but no valid provider, call_id or event_id"))
                continue
            assert isinstance(call_id, str) and isinstance(provider, str)
            key = warehouse.subject_key(provider, call_id)
            if key in jobs:
                jobs[key].items.append(item)  # same call twice in one batch: fetched once
            else:
                source = event.get("source")
                jobs[key] = _Job([item], key, provider, call_id, url, _when(event),
                                 source if isinstance(source, str) else None)
        return jobs

    async def _exists(self, location: str, size: int) -> bool:
        try:
            return await self.store.exists(location, size)
        except StoreError as exc:
            raise Retryable(f"recordings store unavailable: {exc}") from exc

    async def _fetch_all(self, jobs: list[_Job], outcome: WriteOutcome) -> list[_Done]:
        """Fetch ``jobs`` with bounded concurrency; what has not started by the batch
        deadline is parked. A store failure fails the whole batch (Retryable)."""
        if not jobs:
            return []
        deadline = time.monotonic() + self._settings.batch_deadline_s
        semaphore = asyncio.Semaphore(self._settings.concurrency)
        results: dict[int, _Done | tuple[str, str | None, str]] = {}

        async def run(n: int, job: _Job) -> None:
            async with semaphore:
                if time.monotonic() > deadline:
                    results[n] = ("deferred", None, "not started within "
                                  "HOOKSTREAM_RECORDINGS_BATCH_DEADLINE_S")
                    return
                results[n] = await self._fetch_one(job)

        try:
            async with asyncio.TaskGroup() as group:
                for n, job in enumerate(jobs):
                    group.create_task(run(n, job))
        except* StoreError as errors:
            raise Retryable(f"recordings store unavailable: {errors.exceptions[0]}") from None

        done: list[_Done] = []
        for n, job in enumerate(jobs):
            result = results[n]
            if isinstance(result, _Done):
                done.append(result)
                continue
            kind, reason, detail = result
            RECORDINGS.labels(reason or kind).inc(len(job.items))
            for item in job.items:
                if kind == "deferred":
                    outcome.deferred.append((item, detail))
                else:
                    outcome.failed.append((item, reason or "", detail))
        return done

    async def _fetch_one(self, job: _Job) -> _Done | tuple[str, str | None, str]:
        url = job.url
        try:
            try:
                spooled = await self._download(url)
            except fetch.FetchFailed as exc:
                if not (exc.expired and self._can_refresh(job)):
                    raise
                url = await self._fresh_url(job, exc)
                spooled = await self._download(url)  # a 4xx again: given up
        except fetch.FetchFailed as exc:
            log.warning("recording not fetched", extra={
                "call_key": job.call_key, "reason": exc.reason, "detail": exc.detail})
            return ("failed", exc.reason, exc.detail)
        except fetch.FetchTransient as exc:
            log.info("recording fetch parked", extra={"call_key": job.call_key,
                                                      "detail": str(exc)})
            return ("deferred", None, str(exc))
        BYTES.inc(spooled.size)
        key = recording_key(job.provider, job.call_id, job.when,
                            extension(url, spooled.content_type))
        stored = await self.store.put(key, spooled)
        RECORDINGS.labels("stored" if stored.written else "unchanged").inc()
        log.info("recording stored", extra={
            "call_key": job.call_key, "location": stored.location, "bytes": spooled.size,
            "written": stored.written, "fresh_url": url != job.url})
        return _Done(job, stored, spooled.size, spooled.sha256, spooled.content_type, url)

    async def _download(self, url: str) -> Spooled:
        assert self._client is not None
        self.downloads += 1
        fetch.check_url(url, self._settings.allowed_hosts)
        return await fetch.download(
            self._client, url, self.store.spool_dir(), max_bytes=self._settings.max_bytes,
            timeout_s=self._settings.download_timeout_s)

    def _can_refresh(self, job: _Job) -> bool:
        """Only a provider with a call API (set up) gives a fresh URL; the source must
        have a key."""
        api = self._apis.get(job.provider)
        return api is not None and job.source is not None and api.can_refresh(job.source)

    async def _fresh_url(self, job: _Job, expired: fetch.FetchFailed) -> str:
        """A fresh ``recording_url`` from ``GET /calls/{call_id}``; or the download's
        failure, with why no fresh URL was had (FetchFailed or FetchTransient)."""
        api = self._apis.get(job.provider)
        assert api is not None and job.source is not None
        try:
            fresh = await api.fresh_recording_url(job.source, job.call_id)
        except ApiUnavailable as exc:
            REFRESHES.labels("api_unavailable").inc()
            raise fetch.FetchTransient(f"{expired.detail}; call API: {exc}") from exc
        except ApiFailed as exc:
            REFRESHES.labels("api_failed").inc()
            raise fetch.FetchFailed(expired.reason, f"{expired.detail}; call API: {exc}",
                                    expired.status) from exc
        if fresh is None:
            REFRESHES.labels("no_url").inc()
            raise fetch.FetchFailed(expired.reason, f"{expired.detail}; the call API gives "
                                    "no recording_url", expired.status)
        REFRESHES.labels("refreshed").inc()
        log.info("fresh recording URL from the call API", extra={
            "call_key": job.call_key, "url": fetch.describe(fresh)})
        return fresh
