"""HubSpot's rate limits, as the CRM sink meets them.

HubSpot limits every access token twice (usage guidelines, see
docs/sinks-crm.md): a rolling ten-second budget (``X-HubSpot-RateLimit-Max``
requests per ``X-HubSpot-RateLimit-Interval-Milliseconds``) and a daily one
(``X-HubSpot-RateLimit-Daily``, reset at midnight in the portal's time zone).
The search endpoints have their own, lower limit (a few requests per second) and
send none of these headers. A 429's JSON body names the exhausted policy in
``policyName``: ``TEN_SECONDLY_ROLLING`` (or ``SECONDLY`` on search), or ``DAILY``.

* :class:`TokenBucket` keeps this process under its share of those budgets
  *before* HubSpot has to say no; :func:`bucket_for` hands every client of one
  access token the same buckets (the main and retry loops, several adapters).
* :func:`parse_429` reads one 429 answer: which policy, and how long to wait.
* :func:`next_midnight` is when a DAILY limit resets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

DAILY = "DAILY"
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
SECONDLY = "SECONDLY"  # what a search 429 has said; waited out like the ten-secondly one
# HubSpot's own documented default window: the wait when a ten-secondly 429 carries no
# interval header (a search 429 never does; its window is one second).
DEFAULT_INTERVAL_S = 10.0
SEARCH_INTERVAL_S = 1.0
# What this process spends of its share: other integrations of the portal use the same
# budget, and the rolling window does not line up with our bucket's refill exactly.
HEADROOM = 0.8

PARKED = Counter("hookstream_crm_rate_limit_parked_events_total",
                 "Events parked on the CRM sink's retry topic because of HubSpot's rate "
                 "limits, by policy (DAILY: until the reset; TEN_SECONDLY_ROLLING: the "
                 "window outlasted the write's budget)", ["policy"])
RESET_AT = Gauge("hookstream_crm_daily_limit_reset_timestamp_seconds",
                 "While HubSpot's DAILY limit is exhausted: when it resets (Unix time); "
                 "0 when the daily limit is not reached")
WAITED = Counter("hookstream_crm_rate_limit_wait_seconds_total",
                 "Seconds the CRM sink waited for its token bucket before sending (its "
                 "own pacing, and the windows that 429s said to wait out)")
LIMITED = Counter("hookstream_crm_rate_limited_total",
                  "429 answers of the CRM by HubSpot policy (TEN_SECONDLY_ROLLING, SECONDLY, "
                  "DAILY, unknown)", ["policy"])


@dataclasses.dataclass(frozen=True)
class Limit429:
    policy: str  # DAILY, TEN_SECONDLY_ROLLING, SECONDLY or unknown
    wait_s: float  # how long the window says to wait (DAILY: until the reset is unknown)
    message: str


def float_header(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_429(headers: Mapping[str, str], body: Any, retry_after_s: float | None,
              search: bool) -> Limit429:
    """The policy and the wait of one 429 answer.

    The wait is ``Retry-After`` when HubSpot sends one, else the interval header, else
    the policy's window (ten seconds; one second for a search)."""
    policy = ""
    message = ""
    if isinstance(body, dict):
        policy = str(body.get("policyName") or "").upper()
        message = str(body.get("message") or "")
    if not policy:
        lowered = message.lower()
        policy = (DAILY if "daily" in lowered else TEN_SECONDLY if "ten_secondly" in lowered
                  else SECONDLY if "secondly" in lowered else "unknown")
    interval_ms = float_header(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
    if retry_after_s is not None:
        wait = retry_after_s
    elif interval_ms is not None and interval_ms > 0:
        wait = interval_ms / 1000
    else:
        wait = SEARCH_INTERVAL_S if search or policy == SECONDLY else DEFAULT_INTERVAL_S
    return Limit429(policy, wait, message[:200])


def next_midnight(now: float, timezone: str) -> float:
    """The Unix time of the next midnight in ``timezone`` (an IANA name): when HubSpot
    resets a portal's DAILY limit."""
    zone = zoneinfo.ZoneInfo(timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    tomorrow = (local + dt.timedelta(days=1)).date()
    return dt.datetime.combine(tomorrow, dt.time(), zone).timestamp()


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` waits for one.

    :meth:`hold` empties the bucket until a time (a 429 said the window is spent):
    every task of the process then waits, instead of each learning it from its own
    429. Waiters are served in arrival order (one lock), so no loop starves another.
    """

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self._held_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _refill(self) -> None:
        now = self._clock()
        if now > self._stamp:  # (a hold puts the stamp in the future)
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def delay(self) -> float:
        """Seconds until a token is free (0: now)."""
        self._refill()
        held = max(0.0, self._held_until - self._clock())
        short = max(0.0, (1 - self._tokens) / self.rate)
        return max(held, short)

    def hold(self, seconds: float) -> None:
        """No token for ``seconds`` (and the bucket starts empty after)."""
        until = self._clock() + seconds
        if until > self._held_until:
            self._held_until = until
            self._tokens = 0.0
            self._stamp = until

    def _loop_lock(self) -> asyncio.Lock:
        # One bucket may outlive an event loop (a CLI run, a test): a lock per loop.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def take(self, max_wait_s: float, sleep: Callable[[float], Awaitable[None]]
                   ) -> float | None:
        """Wait for one token and return how long that took; None (and no token, no
        wait) when it would take longer than ``max_wait_s``."""
        async with self._loop_lock():
            wait = self.delay()
            if wait > max_wait_s:
                return None
            if wait > 0:
                WAITED.inc(wait)
                await sleep(wait)
            # Taken now, even if the sleep came back early: a token owed (the count goes
            # below zero) makes the next caller wait longer instead.
            self._refill()
            self._tokens -= 1
            return wait


@dataclasses.dataclass
class Buckets:
    """The buckets of one access token: every request, and searches on top."""

    requests: TokenBucket
    search: TokenBucket


_BUCKETS: dict[tuple[str, float, float, int], Buckets] = {}


def forget_buckets() -> None:
    """Start every token afresh (tests)."""
    _BUCKETS.clear()


def bucket_for(token: str, per_10s: float, search_per_s: float, workers: int,
               clock: Callable[[], float] = time.monotonic) -> Buckets:
    """The one pair of buckets of ``token`` in this process. HubSpot counts per token,
    and every worker process holds its own bucket, so each takes ``1/workers`` of the
    budget (with :data:`HEADROOM` left for the portal's other integrations)."""
    share = HEADROOM / max(1, workers)
    key = (hashlib.sha256(token.encode()).hexdigest(), per_10s, search_per_s, workers)
    found = _BUCKETS.get(key)
    if found is None:
        rate = per_10s / 10 * share
        search_rate = search_per_s * share
        found = Buckets(TokenBucket(rate, max(1.0, rate), clock),
                        TokenBucket(search_rate, max(1.0, search_rate), clock))
        _BUCKETS[key] = found
    return found
