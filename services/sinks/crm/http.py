"""One CRM request with the sink's HTTP policy, shared by every adapter.

* Before sending: a token from the access token's shared buckets
  (:mod:`hookstream.sinks.crm.ratelimit`; searches take one from the search bucket
  too), so this process stays under its share of HubSpot's budgets.
* ``429``, by the body's ``policyName`` (HubSpot's usage guidelines):
  - ``DAILY``: :class:`CRMDailyLimited` at once, with the reset time (``Retry-After``
    when given, else the next midnight in ``portal_timezone``). Waiting in place
    would stall the partition for hours; the sink parks the events instead.
  - ``TEN_SECONDLY_ROLLING`` / ``SECONDLY`` / anything else: every request of the
    process holds off for the window (``Retry-After``, else
    ``X-HubSpot-RateLimit-Interval-Milliseconds``, else 10 s; 1 s for a search),
    then the same request is sent again. All waiting of one sink write (429s and
    the bucket's pacing) is bounded by ``rate_limit_budget_s`` (the ten-second
    window by default): past it, :class:`CRMRateLimited`, and the sink parks the
    rest of the batch rather than block the partition.
* ``X-HubSpot-RateLimit-Remaining: 0`` on an answer: the bucket holds off for the
  interval before the next request, instead of earning a 429.
* ``5xx``, timeouts, connection errors, ``401``/``403`` and unreadable answers:
  :class:`CRMTransient`. The request is *not* simply sent again: a create that
  timed out may have been applied. :meth:`CRMHttp.retrying` runs the adapter's
  whole idempotent sequence again up to ``max_retries`` more times with
  exponential backoff and jitter, then raises :class:`CRMUnavailable` (the
  circuit breaker counts those). A bad or revoked token is treated as an outage
  rather than a rejection, so a credentials mistake parks events instead of
  dead-lettering all of them.
* ``409``: :class:`CRMConflict` (a unique property value is held by another object).
* any other ``4xx``: :class:`CRMRejected` at once (the event is dead-lettered).

Every answer is counted in ``hookstream_crm_requests_total{operation,status}``
(``status`` is the HTTP code, or ``timeout`` / ``connection_error``), every retry
in ``hookstream_crm_retries_total{cause}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
import orjson
from prometheus_client import Counter

from . import ratelimit
from .settings import CRMSettings

log = logging.getLogger(__name__)

REQUESTS = Counter("hookstream_crm_requests_total",
                   "Requests to the CRM by operation and HTTP status "
                   "(or timeout / connection_error)", ["operation", "status"])
RETRIES = Counter("hookstream_crm_retries_total",
                  "CRM requests sent again, by cause (rate_limited, server_error, timeout, "
                  "connection_error, unauthorized, bad_response)", ["cause"])

USER_AGENT = "hookstream-sink-crm/1"

T = TypeVar("T")

# Seconds of rate-limit waiting spent by the current sink write (see rate_budget).
_WAITED: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "hookstream_crm_rate_waited", default=None)


class CRMError(Exception):
    def __init__(self, operation: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.detail = detail
        self.status = status


class CRMTransient(CRMError):
    """One try failed in a way that may pass (5xx, timeout, ...); ``cause`` says which."""

    def __init__(self, operation: str, detail: str, status: int | None = None, *,
                 cause: str) -> None:
        super().__init__(operation, detail, status)
        self.cause = cause


class CRMRejected(CRMError):
    """A 4xx other than 429: the CRM refuses this request as it stands (permanent)."""


class CRMConflict(CRMRejected):
    """409: a unique property value (``hasUniqueValue``) is already held by another
    object (e.g. a racing worker created it first): read it back, do not create."""


class CRMRateLimited(CRMError):
    """The rolling window stayed exhausted past the write's rate-limit budget: park the
    rest of the batch (short retry delays) rather than block the partition."""


class CRMDailyLimited(CRMError):
    """HubSpot's DAILY limit is spent: nothing can be written before ``reset_at`` (Unix
    time). The sink parks the events until then."""

    def __init__(self, operation: str, detail: str, reset_at: float) -> None:
        super().__init__(operation, detail, 429)
        self.reset_at = reset_at


class CRMUnavailable(CRMError):
    """5xx, timeouts or connection errors outlasted the retries: the CRM is down."""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _excerpt(response: httpx.Response, limit: int = 500) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: say so rather than fail here
        return "<unreadable body>"
    return text[:limit]


class CRMHttp:
    """An ``httpx.AsyncClient`` plus the retry policy above."""

    def __init__(self, settings: CRMSettings, *, base_url: str = "",
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, paced: bool = True) -> None:
        self.settings = settings
        self.paced = paced  # False: a receiver other than HubSpot (the webhook adapter)
        self._sleep = sleep
        # One pair of buckets per access token in this process (see ratelimit.bucket_for).
        self.buckets = ratelimit.bucket_for(
            str((headers or {}).get("Authorization") or base_url), settings.rate_limit_per_10s,
            settings.search_rate_per_s, settings.workers, clock)
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                     **(headers or {})},
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _backoff(self, retry: int) -> float:
        delay = min(self.settings.backoff_base_s * 2.0 ** retry, self.settings.backoff_max_s)
        return delay * (0.5 + random.random() / 2)

    @contextlib.contextmanager
    def rate_budget(self) -> Iterator[None]:
        """Everything sent inside the block shares one ``rate_limit_budget_s`` of
        rate-limit waiting (per task: the main and retry loops each have their own)."""
        token = _WAITED.set([0.0])
        try:
            yield
        finally:
            _WAITED.reset(token)

    def _allowance(self) -> float:
        waited = _WAITED.get()
        spent = waited[0] if waited is not None else 0.0
        return max(0.0, self.settings.rate_limit_budget_s - spent)

    def _spend(self, seconds: float) -> None:
        waited = _WAITED.get()
        if waited is not None:
            waited[0] += seconds

    async def _pace(self, operation: str, search: bool) -> None:
        """Take a token from each bucket this request needs, within the budget."""
        if not self.paced:
            return
        for bucket in ((self.buckets.requests, self.buckets.search) if search
                       else (self.buckets.requests,)):
            waited = await bucket.take(self._allowance(), self._sleep)
            if waited is None:
                raise CRMRateLimited(operation, "the shared rate-limit bucket would make "
                                     "this request wait past the rate-limit budget "
                                     f"({self.settings.rate_limit_budget_s:g}s)", 429)
            self._spend(waited)

    def _observe(self, response: httpx.Response) -> None:
        """``X-HubSpot-RateLimit-Remaining: 0``: the window is spent (other integrations
        of the portal count too); hold every request off for the interval."""
        headers = response.headers
        if headers.get("X-HubSpot-RateLimit-Remaining", "").strip() == "0":
            interval = ratelimit.float_header(
                headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
            self.buckets.requests.hold((interval or 10000) / 1000)

    async def request(self, operation: str, method: str, url: str, *,
                      json: Any = None, headers: Mapping[str, str] | None = None,
                      expect_json: bool = True, search: bool = False) -> Any:
        """Send once, waiting out rolling-window 429s; return the decoded JSON body
        (None when empty, or when ``expect_json`` is false: any 2xx will do).

        Raises :class:`CRMTransient` on a 5xx, a timeout, a connection error, a 401/403
        or an unreadable answer, without sending again: a create that timed out may have
        been applied, so only the caller knows whether resending is safe
        (see :meth:`retrying`). A 429 is always safe to resend: it was not processed.
        """
        content = None if json is None else orjson.dumps(json)
        send_headers = dict(headers or {})
        if content is not None:
            send_headers["Content-Type"] = "application/json"
        while True:
            await self._pace(operation, search)
            try:
                response = await self.client.request(method, url, content=content,
                                                     headers=send_headers)
            except httpx.TimeoutException as exc:
                REQUESTS.labels(operation, "timeout").inc()
                raise CRMTransient(operation, f"timed out ({type(exc).__name__})",
                                   cause="timeout") from exc
            except httpx.RequestError as exc:  # connection, protocol, decoding errors
                REQUESTS.labels(operation, "connection_error").inc()
                raise CRMTransient(operation, f"{type(exc).__name__}: {exc}",
                                   cause="connection_error") from exc
            status = response.status_code
            REQUESTS.labels(operation, str(status)).inc()
            if 200 <= status < 300:
                self._observe(response)
                if not response.content or not expect_json:
                    return None
                try:
                    return orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    raise CRMTransient(operation, f"{status} with a body that is not JSON",
                                       status, cause="bad_response") from None
            if status == 429:
                await self._rate_limited(operation, response, search)
                continue
            if status >= 500:
                raise CRMTransient(operation, f"{status}: {_excerpt(response, 200)}", status,
                                   cause="server_error")
            if status in (401, 403):
                log.error("crm refused the credentials", extra={
                    "operation": operation, "status": status})
                raise CRMTransient(operation, f"{status}: {_excerpt(response, 200)}", status,
                                   cause="unauthorized")
            if status == 409:
                raise CRMConflict(operation, f"{status}: {_excerpt(response)}", status)
            raise CRMRejected(operation, f"{status}: {_excerpt(response)}", status)

    async def _rate_limited(self, operation: str, response: httpx.Response,
                            search: bool) -> None:
        """A 429: raise for DAILY or past the budget, else hold every request off for
        the window and return (the caller sends again)."""
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        after = retry_after_s(response.headers.get("Retry-After"))
        limit = ratelimit.parse_429(response.headers, body, after, search)
        ratelimit.LIMITED.labels(limit.policy).inc()
        if limit.policy == ratelimit.DAILY:
            now = time.time()
            reset_at = (now + after if after is not None
                        else ratelimit.next_midnight(now, self.settings.portal_timezone))
            log.warning("crm daily limit reached; parking until the reset", extra={
                "operation": operation, "reset_at": round(reset_at)})
            raise CRMDailyLimited(operation, f"429 DAILY: {limit.message}", reset_at)
        wait = min(limit.wait_s, self.settings.rate_limit_max_wait_s)
        # Every request of the process holds off, not only this one (the window is the
        # token's, shared by the main and retry loops).
        (self.buckets.search if search else self.buckets.requests).hold(wait)
        if wait > self._allowance():
            raise CRMRateLimited(
                operation, f"429 {limit.policy}: the window ({wait:g}s) outlasts the "
                f"rate-limit budget left ({self._allowance():.1f}s of "
                f"{self.settings.rate_limit_budget_s:g}s)", 429)
        RETRIES.labels("rate_limited").inc()
        log.info("crm rate limited; waiting out the window", extra={
            "operation": operation, "policy": limit.policy, "wait_s": round(wait, 3)})

    async def retrying(self, operation: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` (a whole idempotent sequence of requests: search, then create
        or update) again after a :class:`CRMTransient`, up to ``max_retries`` more times
        with exponential backoff and jitter; then :class:`CRMUnavailable`."""
        failures = 0
        while True:
            try:
                return await attempt()
            except CRMTransient as exc:
                failures += 1
                if failures > self.settings.max_retries:
                    raise CRMUnavailable(exc.operation, f"{exc.detail} (after {failures} "
                                         f"tries of {operation})", exc.status) from exc
                RETRIES.labels(exc.cause).inc()
                delay = self._backoff(failures - 1)
                log.info("crm request failed; retrying", extra={
                    "operation": exc.operation, "cause": exc.cause,
                    "detail": exc.detail[:200], "retry_in_s": round(delay, 3)})
                await self._sleep(delay)
