"""One recording download: streamed to a spool file, size-capped, hashed on the way.

Outcomes:

* a :class:`~.store.Spooled` file (HTTP 200, at most ``max_bytes``);
* :class:`FetchFailed` (permanent; the event is dead-lettered with its reason):
  ``recording_unavailable`` for 403/404/410 and other 4xx (a signed URL that
  expired, or a recording that is gone), ``recording_too_large`` past the cap
  (from Content-Length before reading, else as soon as the count passes it: the
  rest is never read), ``recording_url_rejected`` for a URL that is not http(s),
  whose host is not allowed, or whose host resolves to an address that is not
  public (redirects included);
* :class:`FetchTransient` (the source may recover: 408, 429, 5xx, timeouts,
  connection errors): the sink parks the event on its retry topic;
* :class:`~.store.StoreError` when the spool file cannot be written (our disk).

No partial file survives any failure. Logs and dead-letter details carry the
URL's host and path, never its query: a signed URL's query is a credential.

Server-side request forgery: ``recording_url`` comes from a webhook payload, so
every hop (the URL and each redirect) must pass, in this order:

1. :func:`check_url` (the client's request hook, so redirects too): scheme
   http or https, and a host in the allow-list (an empty list allows none);
2. :class:`GuardedBackend`, at connection time: the host is resolved here
   (``getaddrinfo``), *every* answer must be a public address
   (:func:`address_refused`: no loopback, private, link-local, shared,
   multicast, reserved, unspecified or cloud-metadata address, IPv4 or IPv6,
   IPv4 embedded in IPv6 included), and the socket is opened to an address that
   was checked, never to the name, so a DNS answer that changes between the
   check and the connection (rebinding) is never used. TLS still verifies the
   certificate for the host name (SNI and the Host header keep the name).

Environment proxies are ignored (``trust_env=False``): through a proxy the
address checked would be the proxy's, not the target's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx

from .store import Spooled, StoreError

RECORDING_UNAVAILABLE = "recording_unavailable"
RECORDING_TOO_LARGE = "recording_too_large"
RECORDING_URL_REJECTED = "recording_url_rejected"

TRANSIENT_STATUS = frozenset({408, 425, 429})


class FetchFailed(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status  # the HTTP status that decided it, when one did

    @property
    def expired(self) -> bool:
        """A 4xx from the storage: the signed URL may have expired (storage services
        answer 400, 401 or 403 for that); a fresh one may still work."""
        return self.status is not None and 400 <= self.status < 500


class FetchTransient(Exception):
    pass


class AddressRefused(FetchFailed):
    """The host resolved to an address the sink must not connect to."""

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(RECORDING_URL_REJECTED,
                         f"host {host[:100]} resolves to {address} ({why}): refused")


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


def check_url(url: str, allowed: Sequence[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchFailed(RECORDING_URL_REJECTED, f"not an http(s) URL: {describe(url)}")
    if not allowed:
        raise FetchFailed(RECORDING_URL_REJECTED,
                          "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS is empty: no host is allowed")
    if not host_allowed(parts.hostname, allowed):
        raise FetchFailed(RECORDING_URL_REJECTED,
                          f"host {parts.hostname} is not in HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS")


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

    def __init__(self, *, allow_private: bool = False, resolve: Resolver | None = None,
                 backend: httpcore.AsyncNetworkBackend | None = None) -> None:
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
                raise AddressRefused(host, address, why)
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
        raise httpcore.ConnectError("unix sockets are never used for recordings")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_transport(max_connections: int, *, allow_private: bool = False,
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
        network_backend=GuardedBackend(allow_private=allow_private, resolve=resolve,
                                       backend=backend))
    return transport


def make_client(allowed_hosts: Sequence[str], timeout_s: float, max_connections: int,
                transport: httpx.AsyncBaseTransport | None = None, *,
                allow_private: bool = False) -> httpx.AsyncClient:
    """The download client: follows at most 5 redirects; every hop is checked against
    the allowed hosts (the request hook) and connected only to a public address
    (:func:`guarded_transport`; ``transport`` replaces it in tests)."""
    async def check(request: httpx.Request) -> None:
        check_url(str(request.url), allowed_hosts)

    return httpx.AsyncClient(
        transport=transport or guarded_transport(max_connections,
                                                 allow_private=allow_private),
        follow_redirects=True, max_redirects=5, trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": "hookstream-sink-recordings/1"},
        event_hooks={"request": [check]})


def _status(response: httpx.Response) -> None:
    code = response.status_code
    where = describe(response.url)
    if code == 200:
        return
    if code in TRANSIENT_STATUS or code >= 500:
        raise FetchTransient(f"GET {where}: HTTP {code}")
    raise FetchFailed(RECORDING_UNAVAILABLE, f"GET {where}: HTTP {code} (a signed URL that "
                      "expired, or a recording that is gone)", code)


async def download(client: httpx.AsyncClient, url: str, spool_dir: Path, *, max_bytes: int,
                   timeout_s: float) -> Spooled:
    """Stream ``url`` into a new file in ``spool_dir``; see the module docstring."""
    try:
        fd, name = tempfile.mkstemp(dir=spool_dir, suffix=".part")
    except OSError as exc:
        raise StoreError(f"spool file in {spool_dir}: {exc!r}") from exc
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async with asyncio.timeout(timeout_s), client.stream("GET", url) as response:
                _status(response)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchFailed(RECORDING_TOO_LARGE, f"GET {describe(url)}: "
                                      f"Content-Length {declared} > {max_bytes} bytes")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchFailed(RECORDING_TOO_LARGE, f"GET {describe(url)}: more "
                                          f"than {max_bytes} bytes; download abandoned")
                    digest.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise StoreError(f"spool file {path}: {exc!r}") from exc
                content_type = response.headers.get("content-type")
    except BaseException as exc:
        # Also on cancellation, where awaiting a thread is not dependable; an unlink is a
        # metadata operation on a local file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if isinstance(exc, FetchFailed | FetchTransient | StoreError):
            raise
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            raise FetchTransient(f"GET {describe(url)}: timed out after {size} bytes "
                                 f"({timeout_s} s allowed)") from exc
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            raise FetchFailed(RECORDING_URL_REJECTED, f"GET {describe(url)}: {exc}") from exc
        if isinstance(exc, httpx.TooManyRedirects):
            raise FetchFailed(RECORDING_UNAVAILABLE,
                              f"GET {describe(url)}: too many redirects") from exc
        if isinstance(exc, httpx.HTTPError):
            raise FetchTransient(f"GET {describe(url)}: {type(exc).__name__}") from exc
        if isinstance(exc, OSError):
            raise StoreError(f"spool file {path}: {exc!r}") from exc
        raise
    return Spooled(path, size, digest.hexdigest(), content_type)
