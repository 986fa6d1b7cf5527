"""One CRM request with the sink's HTTP policy, shared by every adapter.

* ``429``: wait what ``Retry-After`` says (seconds or an HTTP date; capped at
  ``rate_limit_max_wait_s``; 1 s, doubling, when absent), then send the same
  request again; once the waits of one request add up past
  ``rate_limit_budget_s``: :class:`CRMRateLimited`.
* ``5xx``, timeouts, connection errors, ``401``/``403`` and unreadable answers:
  :class:`CRMTransient`. The request is *not* simply sent again: a create that
  timed out may have been applied. :meth:`CRMHttp.retrying` runs the adapter's
  whole idempotent sequence again (search first, then create or update) up to
  ``max_retries`` more times with exponential backoff and jitter, then raises
  :class:`CRMUnavailable` (the circuit breaker counts those).
  A bad or revoked token is treated as an outage rather than a rejection, so a
  credentials mistake parks events instead of dead-lettering all of them.
* any other ``4xx``: :class:`CRMRejected` at once (the event is dead-lettered).

Every answer is counted in ``hookstream_crm_requests_total{operation,status}``
(``status`` is the HTTP code, or ``timeout`` / ``connection_error``), every retry
in ``hookstream_crm_retries_total{cause}``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson
from prometheus_client import Counter

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


class CRMRateLimited(CRMError):
    """Still 429 after waiting the whole rate-limit budget: retry the batch later."""


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
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
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

    async def request(self, operation: str, method: str, url: str, *,
                      json: Any = None, headers: Mapping[str, str] | None = None,
                      expect_json: bool = True) -> Any:
        """Send once, waiting out 429s; return the decoded JSON body (None when empty, or
        when ``expect_json`` is false: any 2xx will do).

        Raises :class:`CRMTransient` on a 5xx, a timeout, a connection error, a 401/403
        or an unreadable answer, without sending again: a create that timed out may have
        been applied, so only the caller knows whether resending is safe
        (see :meth:`retrying`). A 429 is always safe to resend: it was not processed.
        """
        content = None if json is None else orjson.dumps(json)
        send_headers = dict(headers or {})
        if content is not None:
            send_headers["Content-Type"] = "application/json"
        waited = 0.0
        default_wait = 1.0
        while True:
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
                if not response.content or not expect_json:
                    return None
                try:
                    return orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    raise CRMTransient(operation, f"{status} with a body that is not JSON",
                                       status, cause="bad_response") from None
            if status == 429:
                wait = retry_after_s(response.headers.get("Retry-After"))
                if wait is None:
                    wait = default_wait
                    default_wait = min(default_wait * 2, self.settings.rate_limit_max_wait_s)
                wait = min(wait, self.settings.rate_limit_max_wait_s)
                if waited + wait > self.settings.rate_limit_budget_s:
                    raise CRMRateLimited(
                        operation, f"still 429 after waiting {waited:.1f}s "
                        f"(budget {self.settings.rate_limit_budget_s:g}s)", 429)
                RETRIES.labels("rate_limited").inc()
                log.info("crm rate limited; waiting", extra={
                    "operation": operation, "wait_s": round(wait, 3)})
                waited += wait
                await self._sleep(wait)
                continue
            if status >= 500:
                raise CRMTransient(operation, f"{status}: {_excerpt(response, 200)}", status,
                                   cause="server_error")
            if status in (401, 403):
                log.error("crm refused the credentials", extra={
                    "operation": operation, "status": status})
                raise CRMTransient(operation, f"{status}: {_excerpt(response, 200)}", status,
                                   cause="unauthorized")
            raise CRMRejected(operation, f"{status}: {_excerpt(response)}", status)

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
