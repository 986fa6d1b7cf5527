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
every hop (the URL and each redirect) must pass, in this order (the guard is in
../egress.py, shared with the transcripts sink):

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

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpcore
import httpx

from ...core.errors import sink_reasons
from .. import egress

# The guard and the failure classes live in ../egress.py, shared with the transcripts
# sink; re-exported here under their old names (fetch.FetchFailed, ...).
from ..egress import AddressRefused as AddressRefused
from ..egress import FetchFailed as FetchFailed
from ..egress import FetchTransient as FetchTransient
from ..egress import GuardedBackend as GuardedBackend
from ..egress import Resolver as Resolver
from ..egress import address_refused as address_refused
from ..egress import describe as describe
from ..egress import host_allowed as host_allowed
from ..egress import resolve_host as resolve_host
from .store import Spooled, StoreError

# The recordings sink's dead-letter reasons (beyond every sink's).
RECORDING_UNAVAILABLE, RECORDING_TOO_LARGE, RECORDING_URL_REJECTED = sink_reasons(
    "recordings", "recording_unavailable", "recording_too_large", "recording_url_rejected")

REASONS = egress.Reasons(url_rejected=RECORDING_URL_REJECTED,
                         unavailable=RECORDING_UNAVAILABLE, too_large=RECORDING_TOO_LARGE,
                         allowed_hosts_setting="HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS",
                         unavailable_hint="a signed URL that expired, or a recording that "
                                          "is gone")


def check_url(url: str, allowed: Sequence[str]) -> None:
    """egress.check_url, refusing with ``recording_url_rejected``."""
    egress.check_url(url, allowed, REASONS)


def guarded_transport(max_connections: int, *, allow_private: bool = False,
                      resolve: Resolver | None = None,
                      backend: httpcore.AsyncNetworkBackend | None = None,
                      ) -> httpx.AsyncHTTPTransport:
    """egress.guarded_transport, refusing with ``recording_url_rejected``."""
    return egress.guarded_transport(max_connections, refused_reason=RECORDING_URL_REJECTED,
                                    allow_private=allow_private, resolve=resolve,
                                    backend=backend)


def make_client(allowed_hosts: Sequence[str], timeout_s: float, max_connections: int,
                transport: httpx.AsyncBaseTransport | None = None, *,
                allow_private: bool = False) -> httpx.AsyncClient:
    """egress.make_client with the recordings sink's reasons and user agent."""
    return egress.make_client(allowed_hosts, REASONS, timeout_s=timeout_s,
                              max_connections=max_connections,
                              user_agent="hookstream-sink-recordings/1", transport=transport,
                              allow_private=allow_private)


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
            def spool(chunk: bytes) -> None:
                nonlocal size
                size += len(chunk)
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise StoreError(f"spool file {path}: {exc!r}") from exc

            content_type = await egress.stream_capped(client, url, REASONS,
                                                      max_bytes=max_bytes,
                                                      timeout_s=timeout_s, take=spool)
    except BaseException as exc:
        # Also on cancellation, where awaiting a thread is not dependable; an unlink is a
        # metadata operation on a local file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if isinstance(exc, OSError):
            # Closing the spool file (its last write) failed: our disk, not the source.
            raise StoreError(f"spool file {path}: {exc!r}") from exc
        raise
    return Spooled(path, size, digest.hexdigest(), content_type)
