"""A small circuit breaker for the CRM: stop calling it while it is down.

closed ──(``failure_threshold`` consecutive failures)──▶ open
open ──(``cooldown_s`` elapsed)──▶ half-open: one trial call at a time
half-open ──(trial succeeds)──▶ closed;  ──(trial fails)──▶ open (a new cool-down)

A *failure* is one CRM operation that stayed unavailable after its own retries
(5xx, timeouts, connection errors: ``hookstream.sinks.crm.http.CRMUnavailable``),
not every single failed request. A rejection (4xx) or a rate limit (429) means
the CRM is up and answering, so both count as success here.

While the circuit is not closed, the gauge ``hookstream_crm_circuit_open`` is 1
(half-open included: the CRM has not yet proven it is back), else 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Gauge

log = logging.getLogger(__name__)

CIRCUIT_OPEN = Gauge("hookstream_crm_circuit_open",
                     "1 while the CRM circuit breaker is open or half-open, 0 when closed")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        CIRCUIT_OPEN.set(0)

    @property
    def state(self) -> str:
        """The state now (an open circuit whose cool-down is over reads half-open)."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go to the CRM now? In half-open, True for one trial at a time:
        the caller must then report it with ``record_success``, ``record_failure`` or
        ``release``."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if self._state == OPEN:
            self._transition(HALF_OPEN)
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state != CLOSED:
            self._transition(CLOSED)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self._failures += 1
        if self._state == HALF_OPEN or (self._state == CLOSED
                                        and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._transition(OPEN)
        elif self._state == OPEN:
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call allowed by ``allow`` never reached the CRM: no verdict."""
        self._trial_in_flight = False

    def _transition(self, state: str) -> None:
        previous, self._state = self._state, state
        CIRCUIT_OPEN.set(0 if state == CLOSED else 1)
        level = logging.WARNING if state == OPEN else logging.INFO
        log.log(level, "crm circuit %s", state, extra={
            "from": previous, "to": state, "consecutive_failures": self._failures,
            "cooldown_s": self.cooldown_s})
