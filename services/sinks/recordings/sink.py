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

The batch flow, the guarded fetch and the failure handling are every fetching
sink's (../fetching/sink.py); this module keeps what is the recordings sink's own:
which stored recordings need fetching again, the download with its URL refresh, and
the store.

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

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from prometheus_client import Counter

from ...core.config import PostgresSettings
from ...core.errors import Retryable
from ...core.times import parse_utc
from ...providers import recording_hosts_note
from ...providers.base import ApiFailed, ApiUnavailable, RecordingUrls
from ..fetching.sink import FetchingSink, Job
from ..warehouse.settings import WarehouseSettings
from . import fetch
from .index import Known, PgRecordingsIndex, RecordingRow, RecordingsIndex
from .settings import WORDS, RecordingsSettings
from .store import RecordingStore, Spooled, StoreError, build_store, extension, recording_key

log = logging.getLogger(__name__)

RECORDINGS = Counter("hookstream_recordings_total",
                     "Recordings by outcome (stored, unchanged, known, deferred, "
                     "recording_unavailable, recording_too_large, recording_url_rejected)",
                     ["outcome"])
BYTES = Counter("hookstream_recordings_bytes_total", "Bytes of recordings downloaded")
REFRESHES = Counter("hookstream_recordings_url_refreshes_total",
                    "Expired recording URLs for which the call API was asked for a fresh one, "
                    "by outcome (refreshed, no_url, api_failed, api_unavailable)", ["outcome"])


def _when(event: dict[str, Any]) -> dt.datetime:
    """The month a recording is filed under: the call's end, else the event's times."""
    for field in ("ended_at", "occurred_at", "received_at"):
        parsed = parse_utc(event.get(field))
        if parsed is not None:
            return parsed
    return dt.datetime.now(dt.UTC)


def _source(job: Job) -> str | None:
    """The event's source: whose call-API key to use for a fresh URL."""
    source = job.event.get("source")
    return source if isinstance(source, str) else None


class RecordingsSink(FetchingSink[RecordingsSettings, RecordingRow, dict[str, Known]]):
    name = "recordings"
    default_http_port = 8095

    words = WORDS
    wanted = frozenset({"call.ended"})
    url_field = "recording_url"
    ids_named = "call_id"
    reasons = fetch.REASONS
    outcomes = RECORDINGS
    outcome_labels = ("stored", "unchanged", "known", "deferred", "recording_unavailable",
                      "recording_too_large", "recording_url_rejected")
    not_fetched_event = "recording not fetched"
    # The files are stored; a retry finds them identical and records them.
    record_failed = "recording the locations failed"
    logger = log

    def __init__(self, settings: RecordingsSettings, pg: PostgresSettings | None = None,
                 warehouse: WarehouseSettings | None = None, *,
                 store: RecordingStore | None = None, index: RecordingsIndex | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 api: RecordingUrls | None = None,
                 apis: Sequence[RecordingUrls] = ()) -> None:
        super().__init__(settings, pg, warehouse, index=index, transport=transport)
        for outcome in ("refreshed", "no_url", "api_failed", "api_unavailable"):
            REFRESHES.labels(outcome)
        # Per provider, its call API for fresh URLs (absent: none, or not configured).
        self._apis = {a.provider: a for a in (*apis, *([api] if api is not None else []))}
        self.store = store or build_store(settings)
        self.downloads = 0  # downloads started (tests, metrics)

    # ------------------------------------------------------------ the fetching sink's hooks
    async def _open(self) -> None:
        await self.store.start()

    async def _close(self) -> None:
        for api in self._apis.values():
            await api.aclose()
        await self.store.close()

    def _allow_list_note(self) -> str:
        return recording_hosts_note()

    def _ready_details(self) -> dict[str, Any]:
        return {"store": self.store.kind}

    def _pg_index(self, pool: asyncpg.Pool) -> RecordingsIndex:
        return PgRecordingsIndex(pool)

    async def _to_fetch(self, jobs: dict[str, Job], known: dict[str, Known]) -> list[Job]:
        todo: list[Job] = []
        for key, job in jobs.items():
            seen = known.get(key)
            if seen is not None and await self._exists(seen.location, seen.bytes):
                RECORDINGS.labels("known").inc()
                continue  # a redelivery: stored and recorded already
            todo.append(job)
        return todo

    async def _fetch(self, job: Job) -> RecordingRow:
        """Download (with a fresh URL once, for an expired one) and store; a store
        failure fails the whole batch (Retryable)."""
        try:
            return await self._download_and_store(job)
        except StoreError as exc:
            raise Retryable(f"recordings store unavailable: {exc}") from exc

    # ------------------------------------------------------------ its own
    async def _exists(self, location: str, size: int) -> bool:
        try:
            return await self.store.exists(location, size)
        except StoreError as exc:
            raise Retryable(f"recordings store unavailable: {exc}") from exc

    async def _download_and_store(self, job: Job) -> RecordingRow:
        url = job.url
        try:
            spooled = await self._download(url)
        except fetch.FetchFailed as exc:
            if not (exc.expired and self._can_refresh(job)):
                raise
            url = await self._fresh_url(job, exc)
            spooled = await self._download(url)  # a 4xx again: given up
        BYTES.inc(spooled.size)
        key = recording_key(job.provider, job.call_id, _when(job.event),
                            extension(url, spooled.content_type))
        stored = await self.store.put(key, spooled)
        RECORDINGS.labels("stored" if stored.written else "unchanged").inc()
        log.info("recording stored", extra={
            "call_key": job.call_key, "location": stored.location, "bytes": spooled.size,
            "written": stored.written, "fresh_url": url != job.url})
        return RecordingRow(call_key=job.call_key, provider=job.provider,
                            call_id=job.call_id, event_id=str(job.event["event_id"]),
                            location=stored.location, bytes=spooled.size,
                            sha256=spooled.sha256, content_type=spooled.content_type,
                            source_url_host=urlsplit(url).hostname)

    async def _download(self, url: str) -> Spooled:
        assert self._client is not None
        self.downloads += 1
        self._check_url(url)
        return await fetch.download(
            self._client, url, self.store.spool_dir(), max_bytes=self._settings.max_bytes,
            timeout_s=self._settings.download_timeout_s)

    def _can_refresh(self, job: Job) -> bool:
        """Only a provider with a call API (set up) gives a fresh URL; the source must
        have a key."""
        api = self._apis.get(job.provider)
        source = _source(job)
        return api is not None and source is not None and api.can_refresh(source)

    async def _fresh_url(self, job: Job, expired: fetch.FetchFailed) -> str:
        """A fresh ``recording_url`` from ``GET /calls/{call_id}``; or the download's
        failure, with why no fresh URL was had (FetchFailed or FetchTransient)."""
        api = self._apis.get(job.provider)
        source = _source(job)
        assert api is not None and source is not None
        try:
            fresh = await api.fresh_recording_url(source, job.call_id)
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
