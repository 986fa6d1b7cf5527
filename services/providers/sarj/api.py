"""A small client of Sarj.ai's call API: ``GET /calls/{call_id}`` with the key of the
source (organisation) the call belongs to, a timeout per request, and retries with
backoff for what may pass (429, 5xx, timeouts, connection errors).

Outcomes of :meth:`SarjApi.call`: the call detail (a JSON object); :class:`ApiFailed`
(permanent: no key for the source, 4xx, a body that is not a JSON object); or
:class:`ApiUnavailable` (still failing after the retries). The key never appears in a
log line or an exception; redirects are not followed (a key sent in a custom header
would go along to wherever the redirect points).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..base import ApiFailed as ProviderApiFailed
from ..base import ApiUnavailable as ProviderApiUnavailable
from .adapter import PROVIDER
from .calls import NotACallDetail, recording_url
from .settings import SarjApiSettings

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 425, 429})


class ApiFailed(ProviderApiFailed):
    """A permanent failure: asking again will not help."""


class ApiUnavailable(ProviderApiUnavailable):
    """The API kept failing in a way that may pass (after every retry)."""


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay (seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class SarjApi:
    """The call API; also the recordings sink's way to fresh recording URLs
    (``providers.base.RecordingUrls``)."""

    provider = PROVIDER

    def __init__(self, settings: SarjApiSettings, keys: Mapping[str, str], *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._settings = settings
        self._keys = dict(keys)
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"), transport=transport, follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"accept": "application/json", "user-agent": "hookstream/1"})
        self.requests = 0  # HTTP requests made (tests, metrics)

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url)

    def has_key(self, source: str) -> bool:
        return source in self._keys

    def can_refresh(self, source: str) -> bool:
        return self.enabled and self.has_key(source)

    async def fresh_recording_url(self, source: str, call_id: str) -> str | None:
        """The call's fresh ``recording_url`` (None: it has none), from its detail."""
        detail = await self.call(source, call_id)
        try:
            return recording_url(call_id, detail)
        except NotACallDetail as exc:
            raise ApiFailed(str(exc)) from exc

    def _auth(self, source: str) -> dict[str, str]:
        key = self._keys.get(source)
        if key is None:
            raise ApiFailed(f"source {source!r} has no api_key_env (the sources file): "
                            "Sarj.ai's call API cannot be asked")
        header = self._settings.auth_header
        return {header: f"Bearer {key}" if header.lower() == "authorization" else key}

    async def call(self, source: str, call_id: str) -> dict[str, Any]:
        """The call detail of ``call_id``, asked with ``source``'s key."""
        if not self.enabled:
            raise ApiFailed("HOOKSTREAM_SARJ_API_URL is empty: the call API is not used")
        headers = self._auth(source)
        path = f"/calls/{quote(call_id, safe='')}"  # an id never adds path segments
        delay = self._settings.backoff_s
        for attempt in range(self._settings.retries + 1):
            last = attempt == self._settings.retries
            try:
                self.requests += 1
                response = await self._client.get(path, headers=headers)
            except httpx.TransportError as exc:  # timeouts, refused or reset connections
                problem = f"GET {path}: {type(exc).__name__}"
                wait = delay
            else:
                code = response.status_code
                if code == 200:
                    return _detail(path, response)
                if code not in TRANSIENT_STATUS and code < 500:
                    raise ApiFailed(f"GET {path}: HTTP {code} {_error_text(response)}", code)
                problem = f"GET {path}: HTTP {code}"
                given = retry_after_s(response.headers.get("retry-after"))
                wait = delay if given is None else given
            if last:
                raise ApiUnavailable(f"{problem} (after {attempt + 1} tries)")
            log.info("sarj api: retrying", extra={"problem": problem, "attempt": attempt + 1})
            await self._sleep(min(wait, self._settings.backoff_max_s))
            delay *= 2
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._client.aclose()


def from_environment() -> SarjApi | None:
    """The API as the recordings sink configures it (HOOKSTREAM_SARJ_API_*, the keys of
    the sources file's Sarj.ai sources); None when no URL is set."""
    from ...core.config import load
    from ...core.sources import load_api_keys

    settings = load(SarjApiSettings)
    settings.validate()
    if not settings.url:
        return None
    keys = load_api_keys(settings.sources_file) if settings.sources_file else {}
    return SarjApi(settings, keys)


def _detail(path: str, response: httpx.Response) -> dict[str, Any]:
    try:
        detail = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ApiFailed(f"GET {path}: the answer is not JSON") from None
    if not isinstance(detail, dict):
        raise ApiFailed(f"GET {path}: the answer is a JSON {type(detail).__name__}, "
                        "not an object")
    return detail


def _error_text(response: httpx.Response) -> str:
    """A short, printable excerpt of an error answer (never the request's key)."""
    return "".join(c for c in response.text[:200] if c.isprintable())
