"""The CRM sink: every finished call becomes a call activity on the customer's contact.

Handles ``call.ended`` (Sawt, Sarj.ai ``complete``), ``call.analyzed`` (Sawt's
summary and sentiment, merged into the same activity), ``call.not_connected``
(Sarj.ai) and ``session.ended`` (Saaya). Events of a batch are written one by
one, in order:

* written: next event;
* rate limited past the budget (``CRMRateLimited``): ``Retryable``, the framework
  retries the batch in place with backoff (already-written events are skipped);
* unavailable after retries (``CRMUnavailable``: 5xx, timeouts, connection
  errors): one circuit-breaker failure; ``Retryable`` while the circuit stays
  closed, and once it opens this event and the rest are *deferred* (parked on
  ``hookstream.sink.crm.retry.v1``);
* circuit open: the remaining events are deferred without calling the CRM, so
  the partition keeps moving and the parked events come back with growing delays;
* rejected (a 4xx other than 429), not mappable, or an unexpected error:
  dead-lettered (``crm_rejected`` / ``crm_unmappable`` / ``crm_error``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from ...core.errors import Retryable
from ...core.sink import SinkEvent, WriteOutcome
from .adapters import LRU, CRMAdapter, build_adapter
from .circuit import CLOSED, CircuitBreaker
from .http import RETRIES as http_retries
from .http import CRMRateLimited, CRMRejected, CRMUnavailable
from .mapping import FINISHED_TYPES, Unmappable, activity
from .settings import CRMSettings

log = logging.getLogger(__name__)

# Dead-letter reasons of this sink (hs-dlq-reason on hookstream.sink.crm.dlq.v1).
CRM_REJECTED = "crm_rejected"
CRM_UNMAPPABLE = "crm_unmappable"
CRM_ERROR = "crm_error"  # an unexpected error writing this event (a bug): see the detail
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

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        outcome = WriteOutcome()
        started = self._clock()
        for index, item in enumerate(events):
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
            if index and self._clock() - started > self.settings.batch_deadline_s:
                raise Retryable(f"crm batch deadline ({self.settings.batch_deadline_s:g}s) "
                                f"reached after {index} of {len(events)} events")
            if not self.circuit.allow():
                self._defer(outcome, events[index:], CIRCUIT_OPEN_DETAIL)
                break
            try:
                await self.adapter.log_call(act)
            except CRMRejected as exc:
                self.circuit.record_success()  # the CRM is up: it answered
                log.warning("crm rejected an event", extra={
                    "event_id": event_id, "call_key": act.call_key, "error": str(exc)})
                outcome.failed.append((item, CRM_REJECTED, str(exc)))
                continue
            except CRMRateLimited as exc:
                self.circuit.record_success()
                raise Retryable(f"crm rate limited: {exc}") from exc
            except CRMUnavailable as exc:
                self.circuit.record_failure()
                log.warning("crm unavailable", extra={
                    "event_id": event_id, "error": str(exc),
                    "circuit": self.circuit.state})
                if self.circuit.state == CLOSED:
                    raise Retryable(f"crm unavailable: {exc}") from exc
                self._defer(outcome, events[index:], f"{CIRCUIT_OPEN_DETAIL}: {exc}")
                break
            except Exception as exc:
                # Dead-letter (redrivable once fixed) rather than crash-loop the worker.
                self.circuit.release()
                log.exception("unexpected error writing an event to the crm", extra={
                    "event_id": event_id, "call_key": act.call_key})
                outcome.failed.append((item, CRM_ERROR, repr(exc)[:1000]))
                continue
            except BaseException:
                self.circuit.release()
                raise
            self.circuit.record_success()
            self._done.put(act.event_id, True)
        return outcome

    def _defer(self, outcome: WriteOutcome, rest: list[SinkEvent], detail: str) -> None:
        failed = {id(item) for item, _, _ in outcome.failed}
        for item in rest:
            event_id = str(item.event.get("event_id") or "")
            if id(item) in failed or (event_id and self._done.get(event_id)):
                continue
            outcome.deferred.append((item, detail))
