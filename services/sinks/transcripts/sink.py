"""The transcripts sink: fetch the transcript a session's event links to, store it with
the session in the warehouse.

A session's ``session.ended`` may carry ``transcript_url``, a link, never the
transcript itself. Per event, in a batch:

1. no URL (other providers, other events): nothing to do, written;
2. the call's transcript is stored already: nothing to do (a redelivery fetches
   nothing, changes nothing);
3. else fetch it (../egress.py: allow-listed hosts, public addresses only, streamed,
   size-capped) and read it (parse.py), at most ``concurrency`` at a time;
4. store what was fetched (index.py): ``transcripts`` (the document, whole) and
   ``calls.transcript`` (its canonical turns), one call per transaction.

Failures:

* the URL is not allowed, the transcript is gone (4xx), too large, or not a
  transcript: dead letter (``transcript_url_rejected``, ``transcript_unavailable``,
  ``transcript_too_large``, ``not_a_transcript``), the partition moves on;
* the *source* is failing transiently (5xx, 408/425/429, timeout, connection
  error): the event is parked on the retry topic (``WriteOutcome.deferred``) and
  re-offered with growing delays, then dead-lettered as ``retries_exhausted``. One
  slow source must not hold up the partition;
* *our* side is failing (the database): ``Retryable``, the whole batch waits with
  backoff. Every event would fail alike; parking them would only burn their retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from prometheus_client import Counter

from ...core.config import PostgresSettings
from ...core.errors import Retryable
from ...core.postgres import DATABASE_ERRORS
from .. import egress
from ..base import MALFORMED_EVENT, SinkEvent, WriteOutcome
from ..warehouse import schema as warehouse
from ..warehouse.settings import WarehouseSettings
from .index import PgTranscriptsIndex, TranscriptRow, TranscriptsIndex
from .parse import (
    NOT_A_TRANSCRIPT,
    TRANSCRIPT_TOO_LARGE,
    TRANSCRIPT_UNAVAILABLE,
    TRANSCRIPT_URL_REJECTED,
    parse,
)
from .settings import TranscriptsSettings

log = logging.getLogger(__name__)

# The events that close a session. The documents show transcript_url on session.ended
# only; session.errored is taken too should the optional field appear there.
# session.escalated is not: mid-session, its transcript would be partial.
WANTED = frozenset({"session.ended", "session.errored"})

REASONS = egress.Reasons(url_rejected=TRANSCRIPT_URL_REJECTED,
                         unavailable=TRANSCRIPT_UNAVAILABLE, too_large=TRANSCRIPT_TOO_LARGE,
                         allowed_hosts_setting="HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS")
OUTCOMES = ("stored", "stored_without_turns", "known", "deferred", TRANSCRIPT_URL_REJECTED,
            TRANSCRIPT_UNAVAILABLE, TRANSCRIPT_TOO_LARGE, NOT_A_TRANSCRIPT)

TRANSCRIPTS = Counter("hookstream_transcripts_total",
                      "Transcripts by outcome (stored, stored_without_turns: a shape whose "
                      "turns could not be read, known, deferred, or a dead-letter reason)",
                      ["outcome"])
BYTES = Counter("hookstream_transcripts_bytes_total", "Bytes of transcripts fetched")


@dataclasses.dataclass
class _Job:
    """One transcript to fetch: the first event of its call in the batch, plus repeats."""

    items: list[SinkEvent]
    call_key: str
    provider: str
    call_id: str
    url: str


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


class TranscriptsSink:
    name = "transcripts"
    default_http_port = 8096
    takes_test_events = False  # the runner skips test deliveries (counted, logged)

    def __init__(self, settings: TranscriptsSettings, pg: PostgresSettings | None = None,
                 warehouse: WarehouseSettings | None = None, *,
                 index: TranscriptsIndex | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        for outcome in OUTCOMES:
            TRANSCRIPTS.labels(outcome)  # series exist from the start, at 0
        self._pg = pg or PostgresSettings()
        self._warehouse = warehouse or WarehouseSettings()
        self._index = index
        self._transport = transport
        self._pool: asyncpg.Pool | None = None
        self._client: httpx.AsyncClient | None = None
        self.fetches = 0  # fetches started (tests)

    def wants(self, event_type: str) -> bool:
        return event_type in WANTED

    def ready(self) -> bool:
        return self._index is not None and self._client is not None

    async def start(self) -> None:
        headers = ({"authorization": self._settings.authorization}
                   if self._settings.authorization else None)
        self._client = egress.make_client(
            self._settings.allowed_hosts, REASONS, timeout_s=self._settings.fetch_timeout_s,
            max_connections=self._settings.concurrency * 2,
            user_agent="hookstream-sink-transcripts/1", headers=headers,
            transport=self._transport,
            allow_private=self._settings.allow_private_addresses)
        if not self._settings.allowed_hosts:
            log.warning("HOOKSTREAM_TRANSCRIPTS_ALLOWED_HOSTS is empty: no transcript will "
                        "be fetched, each is dead-lettered (transcript_url_rejected)")
        if self._settings.allow_private_addresses:
            log.warning("HOOKSTREAM_TRANSCRIPTS_ALLOW_PRIVATE_ADDRESSES is on: transcripts "
                        "may be fetched from loopback and private addresses (tests and "
                        "development only)")
        if self._index is None:
            # The warehouse's migrations (0004 creates ``transcripts``), so any of the
            # sinks can start first.
            self._pool = await warehouse.create_pool(self._pg, self._warehouse.schema)
            applied = await warehouse.migrate(self._pool)
            self._index = PgTranscriptsIndex(self._pool)
            log.info("transcripts ready", extra={"schema": self._warehouse.schema,
                                                 "migrations_applied": applied})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
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
            raise Retryable(f"transcripts lookup failed: {exc!r}") from exc
        for key in known:
            TRANSCRIPTS.labels("known").inc(len(jobs.pop(key).items))
        rows = await self._fetch_all(list(jobs.values()), outcome)
        try:
            await self._index.record(rows)
        except DATABASE_ERRORS as exc:
            # One transaction per call: the calls stored before the failure are known
            # on the retry, the rest are fetched again (small, and not expiring URLs).
            raise Retryable(f"storing the transcripts failed: {exc!r}") from exc
        for row in rows:
            TRANSCRIPTS.labels("stored" if row.turns is not None
                               else "stored_without_turns").inc()
        return outcome

    def _jobs(self, events: list[SinkEvent], outcome: WriteOutcome) -> dict[str, _Job]:
        jobs: dict[str, _Job] = {}
        for item in events:
            event = item.event
            url = event.get("transcript_url")
            if not isinstance(url, str) or not url:
                continue  # nothing to fetch: written
            # The warehouse's call key (schema.call_key): the call id, else the session id.
            call_id = event.get("call_id") or event.get("session_id")
            provider = event.get("provider")
            if not (_text(call_id) and _text(provider) and _uuid(event.get("event_id"))):
                # Checked here: a value the database rejects would fail the batch forever.
                outcome.failed.append((item, MALFORMED_EVENT, f"{item.type} with a "
                                       "transcript_url but no valid provider, session/call "
                                       "id or event_id"))
                continue
            assert isinstance(call_id, str) and isinstance(provider, str)
            key = warehouse.subject_key(provider, call_id)
            if key in jobs:
                jobs[key].items.append(item)  # same call twice in one batch: fetched once
            else:
                jobs[key] = _Job([item], key, provider, call_id, url)
        return jobs

    async def _fetch_all(self, jobs: list[_Job], outcome: WriteOutcome) -> list[TranscriptRow]:
        """Fetch ``jobs`` with bounded concurrency; what has not started by the batch
        deadline is parked."""
        if not jobs:
            return []
        deadline = time.monotonic() + self._settings.batch_deadline_s
        semaphore = asyncio.Semaphore(self._settings.concurrency)
        results: dict[int, TranscriptRow | tuple[str, str | None, str]] = {}

        async def run(n: int, job: _Job) -> None:
            async with semaphore:
                if time.monotonic() > deadline:
                    results[n] = ("deferred", None, "not started within "
                                  "HOOKSTREAM_TRANSCRIPTS_BATCH_DEADLINE_S")
                    return
                results[n] = await self._fetch_one(job)

        async with asyncio.TaskGroup() as group:
            for n, job in enumerate(jobs):
                group.create_task(run(n, job))

        rows: list[TranscriptRow] = []
        for n, job in enumerate(jobs):
            result = results[n]
            if isinstance(result, TranscriptRow):
                rows.append(result)
                continue
            kind, reason, detail = result
            TRANSCRIPTS.labels(reason or kind).inc(len(job.items))
            for item in job.items:
                if kind == "deferred":
                    outcome.deferred.append((item, detail))
                else:
                    outcome.failed.append((item, reason or "", detail))
        return rows

    async def _fetch_one(self, job: _Job) -> TranscriptRow | tuple[str, str | None, str]:
        assert self._client is not None
        self.fetches += 1
        try:
            egress.check_url(job.url, self._settings.allowed_hosts, REASONS)
            fetched = await egress.read_capped(
                self._client, job.url, REASONS, max_bytes=self._settings.max_bytes,
                timeout_s=self._settings.fetch_timeout_s)
            transcript = parse(fetched.body)
        except egress.FetchFailed as exc:
            log.warning("transcript not stored", extra={
                "call_key": job.call_key, "reason": exc.reason, "detail": exc.detail})
            return ("failed", exc.reason, exc.detail)
        except egress.FetchTransient as exc:
            log.info("transcript fetch parked", extra={"call_key": job.call_key,
                                                       "detail": str(exc)})
            return ("deferred", None, str(exc))
        BYTES.inc(len(fetched.body))
        if transcript.turns is None:
            log.warning("transcript stored, but its shape has no turns hookstream can read",
                        extra={"call_key": job.call_key, "url": egress.describe(job.url)})
        log.info("transcript fetched", extra={
            "call_key": job.call_key, "bytes": len(fetched.body),
            "turns": None if transcript.turns is None else len(transcript.turns)})
        return TranscriptRow(job.call_key, job.provider, job.call_id,
                             str(job.items[0].event["event_id"]), transcript.document,
                             transcript.turns, len(fetched.body), transcript.sha256,
                             fetched.content_type, urlsplit(job.url).hostname)
