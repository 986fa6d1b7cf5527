"""Fetching a URL that came in a webhook payload: the server-side request forgery
guard, and a streamed, size-capped GET into memory.

Shared by the sinks that download what a provider links to rather than sends: the
recordings sink (``recordings/fetch.py``: a signed ``recording_url``, spooled to a
file) and the transcripts sink (``transcripts/``: a ``transcript_url``, read into
memory). Each passes its own dead-letter reasons (:class:`Reasons`), so
the guard and the failure classification are written once.

Every hop (the URL and each redirect) must pass, in this order:

1. :func:`check_url` (the client's request hook, so redirects too): scheme
   http or https, and a host in the allow-list (an empty list allows none);
2. :class:`GuardedBackend`, at connection time: the host is resolved here
   (``getaddrinfo``), *every* answer must be a public address
   (:func:`address_refused`), and the socket is opened to an address that was
   checked, never to the name, so a DNS answer that changes between the check and
   the connection (rebinding) is never used. TLS still verifies the certificate
   for the host name (SNI and the Host header keep the name).

Environment proxies are ignored (``trust_env=False``): through a proxy the
address checked would be the proxy's, not the target's. Logs and dead-letter
details carry the URL's host and path, never its query (a signed URL's query is a
credential).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import httpcore
import httpx

# Statuses that say "later" rather than "never"; 5xx too (see :func:`check_status`).
TRANSIENT_STATUS = frozenset({408, 425, 429})


@dataclasses.dataclass(frozen=True)
class Reasons:
    """The dead-letter reasons one sink gives the three permanent failures, and the
    setting an operator changes to allow a host (named in the detail)."""

    url_rejected: str
    unavailable: str
    too_large: str
    allowed_hosts_setting: str
    # What a permanent 4xx most likely means for this sink's URLs, added to the
    # dead-letter detail (e.g. "a signed URL that expired, or a recording that is gone").
    unavailable_hint: str = ""


class FetchFailed(Exception):
    """Permanent: the event is dead-lettered with ``reason``."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status  # the HTTP status that decided it, when one did

    @property
    def expired(self) -> bool:
        """A 4xx from the storage: a signed URL may have expired (storage services
        answer 400, 401 or 403 for that); a fresh one may still work."""
        return self.status is not None and 400 <= self.status < 500


class FetchTransient(Exception):
    """The source may recover (408, 425, 429, 5xx, timeouts, connection errors): the
    sink parks the event on its retry topic."""


class AddressRefused(FetchFailed):
    """The host resolved to an address the sink must not connect to."""

    def __init__(self, host: str, address: str, why: str, reason: str) -> None:
        super().__init__(reason, f"host {host[:100]} resolves to {address} ({why}): refused")


def describe(url: str | httpx.URL) -> str:
    """``host/path`` of a URL, without its query (the signature)."""
    parts = urlsplit(str(url))
    return f"{parts.hostname or '?'}{parts.path}"[:300]


def host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    """An exact name or a ``.suffix`` of ``allowed``; ``allowed`` empty: no host."""
    host = (host or "").lower().rstrip(".")
    if not host:
        return False
    for entry in allowed:
        entry = entry.lower()
        if host == entry or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


def check_url(url: str, allowed: Sequence[str], reasons: Reasons) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchFailed(reasons.url_rejected, f"not an http(s) URL: {describe(url)}")
    if not allowed:
        raise FetchFailed(reasons.url_rejected,
                          f"{reasons.allowed_hosts_setting} is empty: no host is allowed")
    if not host_allowed(parts.hostname, allowed):
        raise FetchFailed(reasons.url_rejected,
                          f"host {parts.hostname} is not in {reasons.allowed_hosts_setting}")


# ------------------------------------------------------------------ addresses
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata and platform endpoints: refused even when private addresses
# are allowed (AWS IMDS v4/v6 and ECS/EKS task credentials, GCP, Azure IMDS and
# WireServer, Alibaba Cloud). Most lie in ranges refused anyway; 168.63.129.16 does not.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "169.254.169.253",
    "fd00:ec2::254", "fd00:ec2::23", "fd00:ec2::253", "168.63.129.16", "100.100.100.200"))
# "This network": 0.x.x.x reaches the local host on Linux.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _refused(ip: IPAddress, allow_private: bool) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if ip.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return None if allow_private else "a loopback address"
    if ip.is_reserved:
        return "a reserved address"
    if allow_private:
        return None
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.version == 6 and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "not a public address"
    return None


def address_refused(address: str, *, allow_private: bool = False) -> str | None:
    """Why the sink must not connect to ``address`` (an IP literal), or None.

    Refused always: cloud metadata, unspecified (``0.0.0.0/8``, ``::``), multicast,
    broadcast and reserved addresses. Refused unless ``allow_private`` (tests and
    development only): loopback, link-local, private (RFC 1918, ULA), shared
    (100.64/10) and every other address that is not global. An IPv6 address that
    carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is refused when
    either is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    why = _refused(ip, allow_private)
    if why is None and isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            why = _refused(inner, allow_private)
            if why is not None:
                return f"carries {inner}, {why}"
    return why


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``, TCP), without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check at the one place every
    connection is made: resolve the host, refuse it unless every answer is allowed,
    then connect to a checked address (each in turn until one answers). httpcore then
    starts TLS with ``server_hostname`` = the URL's host, so the certificate is
    verified for the name, not the address."""

    def __init__(self, *, refused_reason: str, allow_private: bool = False,
                 resolve: Resolver | None = None,
                 backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._refused_reason = refused_reason  # the dead-letter reason of a refusal
        self._allow_private = allow_private
        self._resolve: Resolver = resolve or resolve_host
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host[:100]} timed out") from exc
        except OSError as exc:  # socket.gaierror: no such name, or DNS failing
            raise httpcore.ConnectError(f"cannot resolve {host[:100]}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host[:100]} resolves to no address")
        for address in addresses:
            why = address_refused(address, allow_private=self._allow_private)
            if why is not None:
                raise AddressRefused(host, address, why, self._refused_reason)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next address, if there is one
        assert failure is not None
        raise failure

    async def connect_unix_socket(
            self, path: str, timeout: float | None = None,  # noqa: ASYNC109
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for fetches")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_transport(max_connections: int, *, refused_reason: str,
                      allow_private: bool = False,
                      resolve: Resolver | None = None,
                      backend: httpcore.AsyncNetworkBackend | None = None,
                      ) -> httpx.AsyncHTTPTransport:
    """httpx's own transport over a connection pool whose connections all go through
    :class:`GuardedBackend`. httpx does not take a network backend itself; httpcore's
    ``AsyncConnectionPool`` does (``network_backend``), so the transport's pool is
    replaced by one built with it (the same settings httpx would use, no proxy)."""
    limits = httpx.Limits(max_connections=max_connections)
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(refused_reason=refused_reason,
                                       allow_private=allow_private, resolve=resolve,
                                       backend=backend))
    return transport


def make_client(allowed_hosts: Sequence[str], reasons: Reasons, *, timeout_s: float,
                max_connections: int, user_agent: str,
                headers: Mapping[str, str] | None = None,
                transport: httpx.AsyncBaseTransport | None = None,
                allow_private: bool = False) -> httpx.AsyncClient:
    """A download client: follows at most 5 redirects; every hop is checked against
    the allowed hosts (the request hook) and connected only to a public address
    (:func:`guarded_transport`; ``transport`` replaces it in tests). ``headers`` go
    with every request; httpx drops ``Authorization`` on a redirect to another
    origin, so a credential never follows a redirect off its host."""
    async def check(request: httpx.Request) -> None:
        check_url(str(request.url), allowed_hosts, reasons)

    return httpx.AsyncClient(
        transport=transport or guarded_transport(max_connections,
                                                 refused_reason=reasons.url_rejected,
                                                 allow_private=allow_private),
        follow_redirects=True, max_redirects=5, trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": user_agent, **(headers or {})},
        event_hooks={"request": [check]})


def check_status(response: httpx.Response, reasons: Reasons) -> None:
    """200 passes; 408/425/429/5xx are transient; any other status is permanent (the
    status kept on the failure: a 4xx may be an expired signed URL, see
    :attr:`FetchFailed.expired`)."""
    code = response.status_code
    where = describe(response.url)
    if code == 200:
        return
    if code in TRANSIENT_STATUS or code >= 500:
        raise FetchTransient(f"GET {where}: HTTP {code}")
    hint = f" ({reasons.unavailable_hint})" if reasons.unavailable_hint else ""
    raise FetchFailed(reasons.unavailable, f"GET {where}: HTTP {code}{hint}", code)


@dataclasses.dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str | None


async def stream_capped(client: httpx.AsyncClient, url: str, reasons: Reasons, *,
                        max_bytes: int, timeout_s: float,
                        take: Callable[[bytes], None]) -> str | None:
    """GET ``url``, each chunk of the body handed to ``take``, at most ``max_bytes`` in
    all: refused from Content-Length before reading, else as soon as the count passes
    the cap (the rest is never read). ``timeout_s`` bounds the whole exchange, first
    byte to last. Returns the response's content type. Raises :class:`FetchFailed`
    (permanent) or :class:`FetchTransient`; what ``take`` raises passes through."""
    size = 0
    try:
        async with asyncio.timeout(timeout_s), client.stream("GET", url) as response:
            check_status(response, reasons)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed(reasons.too_large, f"GET {describe(url)}: "
                                  f"Content-Length {declared} > {max_bytes} bytes")
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchFailed(reasons.too_large, f"GET {describe(url)}: more than "
                                      f"{max_bytes} bytes; download abandoned")
                take(chunk)
            content_type: str | None = response.headers.get("content-type")
            return content_type
    except (FetchFailed, FetchTransient):
        raise
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise FetchTransient(f"GET {describe(url)}: timed out after {size} bytes "
                             f"({timeout_s} s allowed)") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise FetchFailed(reasons.url_rejected, f"GET {describe(url)}: {exc}") from exc
    except httpx.TooManyRedirects as exc:
        raise FetchFailed(reasons.unavailable, f"GET {describe(url)}: too many redirects"
                          ) from exc
    except httpx.HTTPError as exc:
        # Connection refused or reset, a protocol error, an undecodable body: the
        # source may answer properly next time.
        raise FetchTransient(f"GET {describe(url)}: {type(exc).__name__}") from exc


async def read_capped(client: httpx.AsyncClient, url: str, reasons: Reasons, *,
                      max_bytes: int, timeout_s: float) -> Fetched:
    """GET ``url`` into memory (:func:`stream_capped`)."""
    chunks: list[bytes] = []
    content_type = await stream_capped(client, url, reasons, max_bytes=max_bytes,
                                       timeout_s=timeout_s, take=chunks.append)
    return Fetched(b"".join(chunks), content_type)
