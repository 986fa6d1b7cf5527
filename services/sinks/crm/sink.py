"""The CRM sink: every finished call becomes a call activity on the customer's contact.

Handles ``call.ended``, ``call.analyzed`` (a summary and sentiment, merged into the
same activity), ``call.not_connected`` and ``session.ended`` (the catalog,
docs/catalog.md, lists which provider event maps to each). The events of a batch are written in
order, in chunks of ``batch_size`` (one HubSpot batch request per kind of object):

* written: next chunk;
* HubSpot's DAILY limit (``CRMDailyLimited``): this chunk and the rest are *held*,
  parked on ``hookstream.sink.crm.retry.v1`` until the reset, and every later batch
  too, without calling the CRM, until then (gauge
  ``hookstream_crm_daily_limit_reset_timestamp_seconds``, counter
  ``hookstream_crm_rate_limit_parked_events_total``);
* the rolling window outlasting the write's rate-limit budget (``CRMRateLimited``):
  the rest is *deferred* (parked with the usual short delays): the partition never
  waits on a rate limit for more than ``rate_limit_budget_s`` (ten seconds);
* unavailable after retries (``CRMUnavailable``: 5xx, timeouts, connection
  errors): one circuit-breaker failure; ``Retryable`` while the circuit stays
  closed, and once it opens this chunk and the rest are *deferred*;
* circuit open: the remaining events are deferred without calling the CRM, so
  the partition keeps moving and the parked events come back with growing delays;
* rejected (a 4xx other than 429) or an unexpected error: a chunk of several events
  is written again one event at a time, to find the one the CRM refuses; that one is
  dead-lettered (``crm_rejected`` / ``crm_error``), as is one not mappable
  (``crm_unmappable``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from ...core.errors import Retryable, sink_reasons
from ..base import SinkEvent, WriteOutcome
from .adapters import LRU, CRMAdapter, build_adapter
from .circuit import CLOSED, CircuitBreaker
from .http import RETRIES as http_retries
from .http import CRMDailyLimited, CRMHttp, CRMRateLimited, CRMRejected, CRMUnavailable
from .mapping import FINISHED_TYPES, CallActivity, Unmappable, activity
from .ratelimit import DAILY, LIMITED, PARKED, RESET_AT, TEN_SECONDLY
from .settings import CRMSettings

log = logging.getLogger(__name__)

# Dead-letter reasons of this sink (hs-dlq-reason on hookstream.sink.crm.dlq.v1).
# crm_error: an unexpected error writing this event (a bug): see the detail.
CRM_REJECTED, CRM_UNMAPPABLE, CRM_ERROR = sink_reasons(
    "crm", "crm_rejected", "crm_unmappable", "crm_error")
CIRCUIT_OPEN_DETAIL = "crm circuit open"


class CRMSink:
    name = "crm"
    default_http_port = 8094
    takes_test_events = False  # the runner skips test deliveries (counted, logged)

    def __init__(self, settings: CRMSettings, *, adapter: CRMAdapter | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 circuit: CircuitBreaker | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.adapter = adapter if adapter is not None else build_adapter(settings, transport)
        self.circuit = circuit or CircuitBreaker(settings.circuit_failures,
                                                 settings.circuit_cooldown_s, clock)
        self._clock = clock
        self._done: LRU[str, bool] = LRU(20000)  # event ids written by this process
        self._daily_reset_at = 0.0  # while HubSpot's DAILY limit is spent: its reset
        for policy in (DAILY, TEN_SECONDLY):
            PARKED.labels(policy)
        for policy in (DAILY, TEN_SECONDLY, "SECONDLY", "unknown"):
            LIMITED.labels(policy)  # series exist from the start, at 0
        RESET_AT.set(0)
        for cause in ("rate_limited", "timeout", "connection_error", "server_error",
                      "unauthorized", "bad_response"):
            http_retries.labels(cause)  # series exist from the start, at 0
        self._started = False

    def wants(self, event_type: str) -> bool:
        return event_type in FINISHED_TYPES

    async def start(self) -> None:
        self._started = True
        log.info("crm sink ready", extra={"adapter": self.adapter.name})

    async def stop(self) -> None:
        self._started = False
        await self.adapter.aclose()

    def ready(self) -> bool:
        return self._started

    def _budget(self) -> contextlib.AbstractContextManager[None]:
        """One rate-limit budget for the whole write (see CRMHttp.rate_budget)."""
        http = getattr(self.adapter, "http", None)
        return http.rate_budget() if isinstance(http, CRMHttp) else contextlib.nullcontext()

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        outcome = WriteOutcome()
        started = self._clock()
        pending: list[tuple[SinkEvent, CallActivity]] = []
        for item in events:
            event_id = str(item.event.get("event_id") or "")
            if event_id and self._done.get(event_id):
                continue  # written before a retry of this batch, or delivered twice
            try:
                act = activity(item.event,
                               transcript_max_chars=self.settings.transcript_max_chars,
                               default_country_code=self.settings.default_country_code)
            except Unmappable as exc:
                log.warning("event not mappable to a crm call", extra={
                    "event_id": event_id, "error": str(exc)})
                outcome.failed.append((item, CRM_UNMAPPABLE, str(exc)))
                continue
            pending.append((item, act))
        size = self.settings.batch_size
        with self._budget():
            for start in range(0, len(pending), size):
                rest = [item for item, _ in pending[start:]]
                if start and self._clock() - started > self.settings.batch_deadline_s:
                    raise Retryable(f"crm batch deadline ({self.settings.batch_deadline_s:g}s)"
                                    f" reached after {start} of {len(pending)} events")
                if self._daily_limited():
                    self._hold(outcome, rest)
                    break
                if not self.circuit.allow():
                    self._defer(outcome, rest, CIRCUIT_OPEN_DETAIL)
                    break
                try:
                    outcome.failed.extend(await self._write_chunk(pending[start:start + size]))
                except CRMDailyLimited as exc:
                    self.circuit.record_success()  # the CRM is up: it answered
                    self._daily_reset_at = exc.reset_at
                    RESET_AT.set(exc.reset_at)
                    self._hold(outcome, rest)
                    break
                except CRMRateLimited as exc:
                    self.circuit.record_success()
                    log.warning("crm rate limit outlasted the budget; parking the rest",
                                extra={"error": str(exc), "events": len(rest)})
                    before = len(outcome.deferred)
                    self._defer(outcome, rest, f"crm rate limited: {exc}")
                    PARKED.labels(TEN_SECONDLY).inc(len(outcome.deferred) - before)
                    break
                except CRMUnavailable as exc:
                    self.circuit.record_failure()
                    log.warning("crm unavailable", extra={
                        "error": str(exc), "circuit": self.circuit.state})
                    if self.circuit.state == CLOSED:
                        raise Retryable(f"crm unavailable: {exc}") from exc
                    self._defer(outcome, rest, f"{CIRCUIT_OPEN_DETAIL}: {exc}")
                    break
                except BaseException:
                    self.circuit.release()
                    raise
        return outcome

    async def _write_chunk(self, chunk: list[tuple[SinkEvent, CallActivity]]
                           ) -> list[tuple[SinkEvent, str, str]]:
        """Write ``chunk``; the events that failed for good, with their reasons. A
        rejection of a chunk of several events is split to find the one refused."""
        try:
            await self.adapter.log_calls([act for _, act in chunk])
        except CRMRejected as exc:
            self.circuit.record_success()  # the CRM is up: it answered
            if len(chunk) > 1:
                return await self._one_by_one(chunk)
            item, act = chunk[0]
            log.warning("crm rejected an event", extra={
                "event_id": act.event_id, "call_key": act.call_key, "error": str(exc)})
            return [(item, CRM_REJECTED, str(exc))]
        except (CRMRateLimited, CRMDailyLimited, CRMUnavailable):
            raise
        except Exception as exc:
            # Dead-letter (redrivable once fixed) rather than crash-loop the worker.
            self.circuit.release()
            if len(chunk) > 1:
                return await self._one_by_one(chunk)
            item, act = chunk[0]
            log.exception("unexpected error writing an event to the crm", extra={
                "event_id": act.event_id, "call_key": act.call_key})
            return [(item, CRM_ERROR, repr(exc)[:1000])]
        self.circuit.record_success()
        for _, act in chunk:
            self._done.put(act.event_id, True)
        return []

    async def _one_by_one(self, chunk: list[tuple[SinkEvent, CallActivity]]
                          ) -> list[tuple[SinkEvent, str, str]]:
        failed: list[tuple[SinkEvent, str, str]] = []
        for one in chunk:
            if not self.circuit.allow():
                raise CRMUnavailable("log_calls", "circuit opened while isolating a "
                                     "rejected event")
            failed += await self._write_chunk([one])
        return failed

    def _daily_limited(self) -> bool:
        """Is HubSpot's DAILY limit still spent? (Clears the state once reset.)"""
        if self._daily_reset_at and time.time() >= self._daily_reset_at:
            log.info("crm daily limit reset; writing again")
            self._daily_reset_at = 0.0
            RESET_AT.set(0)
        return self._daily_reset_at > 0

    def _hold(self, outcome: WriteOutcome, rest: list[SinkEvent]) -> None:
        """Park ``rest`` until the DAILY limit resets (attempts not spent)."""
        failed = {id(item) for item, _, _ in outcome.failed}
        until_ms = int(self._daily_reset_at * 1000)
        detail = (f"crm daily limit reached; parked until "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self._daily_reset_at))}")
        held = 0
        for item in rest:
            event_id = str(item.event.get("event_id") or "")
            if id(item) in failed or (event_id and self._done.get(event_id)):
                continue
            outcome.held.append((item, detail, until_ms))
            held += 1
        PARKED.labels(DAILY).inc(held)
        log.warning("crm daily limit: events parked until the reset", extra={
            "events": held, "reset_at": round(self._daily_reset_at)})

    def _defer(self, outcome: WriteOutcome, rest: list[SinkEvent], detail: str) -> None:
        failed = {id(item) for item, _, _ in outcome.failed}
        for item in rest:
            event_id = str(item.event.get("event_id") or "")
            if id(item) in failed or (event_id and self._done.get(event_id)):
                continue
            outcome.deferred.append((item, detail))
