"""The batch flow of a fetching sink: a sink that consumes canonical events, fetches
a URL found on each (a provider links to a recording or a transcript rather than
sending it), stores what it fetched and indexes it in the warehouse.

Per batch (:meth:`FetchingSink.write`):

1. jobs: one per call, from the events with a URL (an event without one is written:
   nothing to do); a call twice in one batch is fetched once; an event whose ids the
   database would refuse is dead-lettered (``malformed_event``) here, before it can
   fail the batch forever;
2. the index is asked what is stored already, and the sink decides what of that
   still needs fetching (a redelivery fetches nothing);
3. the rest is fetched, at most ``concurrency`` at a time, each through the guard of
   ../egress.py (allow-listed hosts, public addresses, streamed, size-capped); what
   has not started by the batch deadline is parked;
4. what was fetched is recorded in the index.

Failures, the same for every fetching sink:

* permanent (the URL is refused, the thing is gone, too large, or not what it should
  be: :class:`~..egress.FetchFailed`): the event is dead-lettered with the sink's
  reason, the partition moves on;
* the *source* failing transiently (:class:`~..egress.FetchTransient`): the event is
  parked on the retry topic (``WriteOutcome.deferred``), not the batch retried in
  place; one slow source must not hold up the partition;
* *our* side failing (the database; a sink's own store): ``Retryable``, the whole
  batch waits with backoff. Every event would fail alike; parking them would only
  burn their retries.

What is a sink's own: what it wants, what of the stored needs fetching again, the
fetch itself past the guard (:meth:`FetchingSink._fetch`: spool and store a
recording, read a transcript) and its table (its ``index``).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg
import httpx
from prometheus_client import Counter

from ...core.config import PostgresSettings, load
from ...core.errors import Retryable
from ...core.postgres import DATABASE_ERRORS
from .. import egress
from ..base import MALFORMED_EVENT, SinkEvent, WriteOutcome
from ..warehouse import schema as warehouse
from ..warehouse.settings import WarehouseSettings
from .index import FetchedRow, FetchingIndex
from .settings import FetchingSettings, Words, variable

SettingsT = TypeVar("SettingsT", bound=FetchingSettings)
RowT = TypeVar("RowT", bound=FetchedRow)
KnownT = TypeVar("KnownT")


@dataclasses.dataclass
class Job:
    """One URL to fetch: the first event of its call in the batch, plus repeats."""

    items: list[SinkEvent]
    call_key: str
    provider: str
    call_id: str
    url: str

    @property
    def event(self) -> dict[str, Any]:
        """The event whose URL is fetched."""
        return self.items[0].event


@dataclasses.dataclass(frozen=True)
class NotFetched:
    """A job given up in this batch: dead-lettered with ``reason``, or parked (None)."""

    reason: str | None
    detail: str


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


class FetchingSink(abc.ABC, Generic[SettingsT, RowT, KnownT]):
    """A :class:`~..base.Sink` that fetches; a subclass names its own (the class
    attributes) and implements :meth:`_to_fetch`, :meth:`_fetch` and :meth:`_pg_index`."""

    name: str
    default_http_port: int
    takes_test_events = False  # the runner skips test deliveries (counted, logged)

    words: ClassVar[Words]
    wanted: ClassVar[frozenset[str]]  # the canonical types that may carry the URL
    url_field: ClassVar[str]  # the canonical field of the URL, e.g. "recording_url"
    ids_named: ClassVar[str]  # the ids an event must have, as a dead letter names them
    reasons: ClassVar[egress.Reasons]
    outcomes: ClassVar[Counter]  # the sink's counter by "outcome"
    outcome_labels: ClassVar[tuple[str, ...]]  # its series, made at start (at 0)
    not_fetched_event: ClassVar[str]  # the log event of a dead-lettered fetch
    record_failed: ClassVar[str]  # the Retryable's words when the index refuses a batch
    logger: ClassVar[logging.Logger]  # the sink module's own: its log lines keep its name

    def __init__(self, settings: SettingsT, pg: PostgresSettings | None = None,
                 warehouse: WarehouseSettings | None = None, *,
                 index: FetchingIndex[RowT, KnownT] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        for outcome in self.outcome_labels:
            self.outcomes.labels(outcome)  # series exist from the start, at 0
        self._pg = pg or load(PostgresSettings)
        self._warehouse = warehouse or WarehouseSettings()
        self._index = index
        self._transport = transport
        self._pool: asyncpg.Pool | None = None
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ a sink's own
    @abc.abstractmethod
    async def _to_fetch(self, jobs: dict[str, Job], known: KnownT) -> list[Job]:
        """The jobs still to fetch, given what the index has stored already."""

    @abc.abstractmethod
    async def _fetch(self, job: Job) -> RowT:
        """Fetch ``job`` (check the URL first: :meth:`_check_url`) and keep it; the row
        to record. Raise FetchFailed or FetchTransient for the job alone, Retryable
        when the whole batch must wait."""

    @abc.abstractmethod
    def _pg_index(self, pool: asyncpg.Pool) -> FetchingIndex[RowT, KnownT]:
        """The sink's table in the warehouse."""

    async def _open(self) -> None:
        """Start what else the sink needs (first thing at start)."""

    async def _close(self) -> None:
        """Close what :meth:`_open` started (after the client, before the pool)."""

    def _headers(self) -> dict[str, str] | None:
        """Headers sent with every fetch."""
        return None

    def _allow_list_note(self) -> str:
        """Said after the warning that no host is allowed."""
        return ""

    def _ready_details(self) -> dict[str, Any]:
        """More for the log line at start."""
        return {}

    def _recorded(self, rows: list[RowT]) -> None:
        """Called with the rows once the index has them."""

    # ------------------------------------------------------------ the Sink
    def wants(self, event_type: str) -> bool:
        return event_type in self.wanted

    def ready(self) -> bool:
        return self._index is not None and self._client is not None

    async def start(self) -> None:
        await self._open()
        settings = self._settings
        self._client = egress.make_client(
            settings.allowed_hosts, self.reasons, timeout_s=settings.timeout_s,
            max_connections=settings.concurrency * 2,
            user_agent=f"hookstream-sink-{self.name}/1", headers=self._headers(),
            transport=self._transport, allow_private=settings.allow_private_addresses)
        if not settings.allowed_hosts:
            note = self._allow_list_note()
            self.logger.warning(f"{variable(settings, 'allowed_hosts')} is empty: no "
                             f"{self.words.thing} will be fetched, each is dead-lettered "
                             f"({self.reasons.url_rejected})" + (f"; {note}" if note else ""))
        if settings.allow_private_addresses:
            self.logger.warning(f"{variable(settings, 'allow_private_addresses')} is on: "
                             f"{self.words.things} may be fetched from loopback and private "
                             "addresses (tests and development only)")
        if self._index is None:
            # The warehouse's migrations (they create the sink's table), so any of the
            # sinks sharing the warehouse can start first.
            self._pool = await warehouse.create_pool(self._pg, self._warehouse.schema)
            applied = await warehouse.migrate(self._pool)
            self._index = self._pg_index(self._pool)
            self.logger.info(f"{self.name} ready", extra={
                "schema": self._warehouse.schema, **self._ready_details(),
                "migrations_applied": applied})

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._close()
        if self._pool is not None:
            await self._pool.close()

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        assert self._index is not None and self._client is not None, "start() first"
        outcome = WriteOutcome()
        jobs = self._jobs(events, outcome)
        if not jobs:
            return outcome
        try:
            known = await self._index.known(list(jobs))
        except DATABASE_ERRORS as exc:
            raise Retryable(f"{self.name} lookup failed: {exc!r}") from exc
        rows = await self._fetch_all(await self._to_fetch(jobs, known), outcome)
        try:
            await self._index.record(rows)
        except DATABASE_ERRORS as exc:
            # What was fetched is kept or cheap to fetch again: the retry records it.
            raise Retryable(f"{self.record_failed}: {exc!r}") from exc
        self._recorded(rows)
        return outcome

    # ------------------------------------------------------------ the flow
    def _jobs(self, events: list[SinkEvent], outcome: WriteOutcome) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        for item in events:
            event = item.event
            url = event.get(self.url_field)
            if not isinstance(url, str) or not url:
                continue  # nothing to fetch: written
            # The warehouse's call key (schema.call_key): the call id, else the session id.
            call_id = event.get("call_id") or event.get("session_id")
            provider = event.get("provider")
            if not (_text(call_id) and _text(provider) and _uuid(event.get("event_id"))):
                # Checked here: a value the database rejects would fail the batch forever.
                outcome.failed.append((item, MALFORMED_EVENT, f"{item.type} with a "
                                       f"{self.url_field} but no valid provider, "
                                       f"{self.ids_named} or event_id"))
                continue
            assert isinstance(call_id, str) and isinstance(provider, str)
            key = warehouse.subject_key(provider, call_id)
            if key in jobs:
                jobs[key].items.append(item)  # same call twice in one batch: fetched once
            else:
                jobs[key] = Job([item], key, provider, call_id, url)
        return jobs

    async def _fetch_all(self, jobs: list[Job], outcome: WriteOutcome) -> list[RowT]:
        """Fetch ``jobs`` with bounded concurrency; what has not started by the batch
        deadline is parked. A job that raises Retryable fails the whole batch."""
        if not jobs:
            return []
        deadline = time.monotonic() + self._settings.batch_deadline_s
        semaphore = asyncio.Semaphore(self._settings.concurrency)
        results: dict[int, RowT | NotFetched] = {}

        async def run(n: int, job: Job) -> None:
            async with semaphore:
                if time.monotonic() > deadline:
                    results[n] = NotFetched(None, "not started within "
                                            f"{variable(self._settings, 'batch_deadline_s')}")
                    return
                results[n] = await self._fetch_one(job)

        try:
            async with asyncio.TaskGroup() as group:
                for n, job in enumerate(jobs):
                    group.create_task(run(n, job))
        except* Retryable as errors:
            raise errors.exceptions[0] from None

        rows: list[RowT] = []
        for n, job in enumerate(jobs):
            result = results[n]
            if not isinstance(result, NotFetched):
                rows.append(result)
                continue
            self.outcomes.labels(result.reason or "deferred").inc(len(job.items))
            for item in job.items:
                if result.reason is None:
                    outcome.deferred.append((item, result.detail))
                else:
                    outcome.failed.append((item, result.reason, result.detail))
        return rows

    async def _fetch_one(self, job: Job) -> RowT | NotFetched:
        try:
            return await self._fetch(job)
        except egress.FetchFailed as exc:
            self.logger.warning(self.not_fetched_event, extra={
                "call_key": job.call_key, "reason": exc.reason, "detail": exc.detail})
            return NotFetched(exc.reason, exc.detail)
        except egress.FetchTransient as exc:
            self.logger.info(f"{self.words.thing} fetch parked", extra={
                "call_key": job.call_key, "detail": str(exc)})
            return NotFetched(None, str(exc))

    def _check_url(self, url: str) -> None:
        """The allow-list, before the request (the client's hook checks each redirect)."""
        egress.check_url(url, self._settings.allowed_hosts, self.reasons)
