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

The batch flow, the guarded fetch and the failure handling are every fetching
sink's (../fetching/sink.py); this module keeps what is the transcripts sink's own:
what it wants, the fetch's credential, and reading the transcript (parse.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import asyncpg
import httpx
from prometheus_client import Counter

from ...core.config import PostgresSettings
from .. import egress
from ..fetching.sink import FetchingSink, Job
from ..warehouse.settings import WarehouseSettings
from .index import PgTranscriptsIndex, TranscriptRow, TranscriptsIndex
from .parse import (
    NOT_A_TRANSCRIPT,
    TRANSCRIPT_TOO_LARGE,
    TRANSCRIPT_UNAVAILABLE,
    TRANSCRIPT_URL_REJECTED,
    parse,
)
from .settings import WORDS, TranscriptsSettings

log = logging.getLogger(__name__)

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


class TranscriptsSink(FetchingSink[TranscriptsSettings, TranscriptRow, set[str]]):
    name = "transcripts"
    default_http_port = 8096

    words = WORDS
    # The events that close a session. The documents show transcript_url on
    # session.ended only; session.errored is taken too should the optional field appear
    # there. session.escalated is not: mid-session, its transcript would be partial.
    wanted = frozenset({"session.ended", "session.errored"})
    url_field = "transcript_url"
    ids_named = "session/call id"
    reasons = REASONS
    outcomes = TRANSCRIPTS
    outcome_labels = OUTCOMES
    not_fetched_event = "transcript not stored"
    # One transaction per call: the calls stored before the failure are known on the
    # retry, the rest are fetched again (small, and not expiring URLs).
    record_failed = "storing the transcripts failed"
    logger = log

    def __init__(self, settings: TranscriptsSettings, pg: PostgresSettings | None = None,
                 warehouse: WarehouseSettings | None = None, *,
                 index: TranscriptsIndex | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(settings, pg, warehouse, index=index, transport=transport)
        self.fetches = 0  # fetches started (tests)

    # ------------------------------------------------------------ the fetching sink's hooks
    def _headers(self) -> dict[str, str] | None:
        return ({"authorization": self._settings.authorization}
                if self._settings.authorization else None)

    def _pg_index(self, pool: asyncpg.Pool) -> TranscriptsIndex:
        return PgTranscriptsIndex(pool)

    async def _to_fetch(self, jobs: dict[str, Job], known: set[str]) -> list[Job]:
        for key in known:
            TRANSCRIPTS.labels("known").inc(len(jobs.pop(key).items))
        return list(jobs.values())

    async def _fetch(self, job: Job) -> TranscriptRow:
        assert self._client is not None
        self.fetches += 1
        self._check_url(job.url)
        fetched = await egress.read_capped(
            self._client, job.url, REASONS, max_bytes=self._settings.max_bytes,
            timeout_s=self._settings.fetch_timeout_s)
        transcript = parse(fetched.body)
        BYTES.inc(len(fetched.body))
        if transcript.turns is None:
            log.warning("transcript stored, but its shape has no turns hookstream can read",
                        extra={"call_key": job.call_key, "url": egress.describe(job.url)})
        log.info("transcript fetched", extra={
            "call_key": job.call_key, "bytes": len(fetched.body),
            "turns": None if transcript.turns is None else len(transcript.turns)})
        return TranscriptRow(call_key=job.call_key, provider=job.provider,
                             call_id=job.call_id, event_id=str(job.event["event_id"]),
                             document=transcript.document, turns=transcript.turns,
                             bytes=len(fetched.body), sha256=transcript.sha256,
                             content_type=fetched.content_type,
                             source_url_host=urlsplit(job.url).hostname)

    def _recorded(self, rows: list[TranscriptRow]) -> None:
        for row in rows:
            TRANSCRIPTS.labels("stored" if row.turns is not None
                               else "stored_without_turns").inc()
