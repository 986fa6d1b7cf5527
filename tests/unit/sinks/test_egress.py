"""Server-side request forgery: what a hostile ``recording_url`` can make the recordings
sink fetch. An empty allow-list refuses every host; a host that is allowed is still
refused when it resolves to a loopback, private, link-local, metadata or otherwise
non-public address, checked after DNS resolution on every redirect hop, and the
connection goes to the address that was checked.

No test needs the network: refused addresses are refused before any connection, and
the "public" host of the redirect tests is a loopback server behind a fake resolver."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import httpcore
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from hookstream.sinks.recordings import fetch
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.recordings.store import LocalDirStore
from tests.support import free_port, serve

from .recordings.test_sink import MemoryIndex, Source, ended

GCS = "storage.googleapis.com"
PUBLIC_IP = "142.250.74.91"  # stands for the bucket's address (a global unicast address)


class Server:
    """A loopback HTTP server that counts what reaches it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[str] = []
        self.hosts: list[str] = []
        self.redirect_to: str | None = None

    async def get(self, request: Request) -> Response:
        self.hits.append(request.url.path)
        self.hosts.append(request.headers.get("host", ""))
        if self.redirect_to is not None and request.url.path.endswith(".wav"):
            return RedirectResponse(self.redirect_to, 302)
        return Response(b"RIFF-secret-bytes", media_type="audio/wav")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.get)])


async def get(url: str, spool: Path, allowed: tuple[str, ...], *,
              transport: httpx.AsyncBaseTransport | None = None,
              allow_private: bool = False) -> fetch.Spooled:
    async with fetch.make_client(allowed, 3.0, 4, transport=transport,
                                 allow_private=allow_private) as client:
        return await fetch.download(client, url, spool, max_bytes=1000, timeout_s=3.0)


async def refused(url: str, spool: Path, allowed: tuple[str, ...], **kw: object) -> str:
    started = time.monotonic()
    with pytest.raises(fetch.FetchFailed) as caught:
        await get(url, spool, allowed, **kw)  # type: ignore[arg-type]
    assert caught.value.reason == fetch.RECORDING_URL_REJECTED, caught.value
    assert time.monotonic() - started < 2, "refused before any connection attempt"
    assert os.listdir(spool) == []
    return caught.value.detail


# ------------------------------------------------------------------ the allow-list
async def test_an_empty_allow_list_refuses_every_host(tmp_path: Path) -> None:
    with pytest.raises(fetch.FetchFailed) as caught:
        fetch.check_url(f"https://{GCS}/b/c.wav", ())
    assert "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS" in caught.value.detail
    assert not fetch.host_allowed(GCS, ())
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"x")

    await refused(f"https://{GCS}/b/c.wav", tmp_path, (),
                  transport=httpx.MockTransport(handler))
    assert seen == []


async def test_the_default_settings_dead_letter_every_recording(tmp_path: Path) -> None:
    """The shipped default is "refuse": a sink started without an allow-list fetches
    nothing and dead-letters each recording with recording_url_rejected."""
    assert RecordingsSettings().allowed_hosts == ()
    assert RecordingsSettings().allow_private_addresses is False
    source = Source()
    sink = RecordingsSink(RecordingsSettings(dir=str(tmp_path)), store=LocalDirStore(tmp_path),
                          index=MemoryIndex(), transport=httpx.MockTransport(source.handler))
    await sink.start()
    try:
        item = ended("call_1", source.add("call_1", b"audio"))
        outcome = await sink.write([item])
    finally:
        await sink.stop()
    assert [(i, r) for i, r, _ in outcome.failed] == [(item, fetch.RECORDING_URL_REJECTED)]
    assert source.hits == {}


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
    "127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::", "0.1.2.3",
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "fc00::1", "fe80::1",
    "169.254.1.1", "224.0.0.1", "239.255.255.250", "ff02::1", "240.0.0.1",
    "255.255.255.255", "192.0.2.1", "198.18.0.1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::7f00:1",
    "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "2002:7f00:1::1", "not-an-address"])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert fetch.address_refused(address, allow_private=False) is not None


@pytest.mark.parametrize("address", ["142.250.74.91", "8.8.8.8", "2607:f8b0:4004:c07::5f",
                                     "34.120.0.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert fetch.address_refused(address, allow_private=False) is None


def test_allowing_private_addresses_never_allows_metadata_or_multicast() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "::1", "192.168.0.10"):
        assert fetch.address_refused(address, allow_private=True) is None
    for address in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "0.0.0.0",
                    "224.0.0.1", "::ffff:169.254.169.254", "255.255.255.255"):
        assert fetch.address_refused(address, allow_private=True) is not None, address


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://127.0.0.1:9093/api/v2/alerts",
    "http://[::1]:9092/",
    "http://10.0.0.1/x.wav",
    "http://2130706433/x.wav",  # 127.0.0.1 as one number
])
async def test_address_literals_are_refused_even_when_allow_listed(
        url: str, tmp_path: Path) -> None:
    host = httpx.URL(url).host
    detail = await refused(url, tmp_path, (host,))
    assert "meta-data" not in detail or "169.254" in detail


async def test_a_name_resolving_to_loopback_is_refused(tmp_path: Path) -> None:
    """``localhost`` resolves to 127.0.0.1 (and ::1): allow-listed by name, refused by
    address; the loopback server never sees a request."""
    server = Server()
    async with serve(server.app(), server.port):
        detail = await refused(f"http://localhost:{server.port}/b/c.wav", tmp_path,
                               ("localhost",))
        assert "loopback" in detail
        assert server.hits == []
        # The same server is reachable when private addresses are allowed (tests only).
        spooled = await get(f"http://localhost:{server.port}/b/c.wav", tmp_path,
                            ("localhost",), allow_private=True)
        assert spooled.path.read_bytes() == b"RIFF-secret-bytes"
        assert server.hits == ["/b/c.wav"]


class FakeNetwork(httpcore.AsyncNetworkBackend):
    """Resolves through a table and connects every "public" address to the loopback
    server; records every address a connection was made to."""

    def __init__(self, names: dict[str, list[str]], server_port: int) -> None:
        self.names = names
        self.server_port = server_port
        self.lookups: list[str] = []
        self.connected: list[tuple[str, int]] = []
        self._real = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host in self.names:
            return self.names[host]
        return [host]  # an address literal

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        return await self._real.connect_tcp("127.0.0.1", self.server_port, timeout=timeout)

    async def connect_unix_socket(
            self, path: str, timeout: float | None = None,  # noqa: ASYNC109
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


def pinned(network: FakeNetwork, allow_private: bool = False) -> httpx.AsyncBaseTransport:
    return fetch.guarded_transport(4, allow_private=allow_private, resolve=network.resolve,
                                   backend=network)


@pytest.mark.parametrize(("name", "addresses"), [
    ("kafka", ["10.96.0.12"]),
    ("internal.example", ["192.168.7.7"]),
    ("rebind.example", ["142.250.74.91", "127.0.0.1"]),  # one bad answer is enough
    ("v6.example", ["fd12:3456::1"]),
    ("metadata.google.internal", ["169.254.169.254"]),
])
async def test_a_name_resolving_to_a_private_address_is_refused(
        name: str, addresses: list[str], tmp_path: Path) -> None:
    network = FakeNetwork({name: addresses}, server_port=1)
    detail = await refused(f"http://{name}:9092/x.wav", tmp_path, (name,),
                           transport=pinned(network))
    assert name in detail
    assert network.lookups == [name] and network.connected == []


async def test_the_connection_goes_to_the_checked_address(tmp_path: Path) -> None:
    """Resolved once, checked, and that address connected to (no second lookup that a
    rebinding DNS server could answer differently); the Host header keeps the name."""
    server = Server()
    network = FakeNetwork({GCS: [PUBLIC_IP]}, server.port)
    async with serve(server.app(), server.port):
        spooled = await get(f"http://{GCS}/sarj-recordings-prod/c.wav?X-Goog-Signature=a",
                            tmp_path, (GCS,), transport=pinned(network))
    assert spooled.size == len(b"RIFF-secret-bytes")
    assert network.lookups == [GCS]
    assert network.connected == [(PUBLIC_IP, 80)]
    assert server.hosts == [GCS]


@pytest.mark.parametrize(("target", "allowed", "names"), [
    # The shipped allow-list: the metadata address is not an allowed host.
    ("http://169.254.169.254/latest/meta-data/", (GCS,), {}),
    # Even when an operator allow-lists it (or a suffix covers it), the address is refused.
    ("http://169.254.169.254/latest/meta-data/", (GCS, "169.254.169.254"), {}),
    ("http://[fd00:ec2::254]/latest/meta-data/", (GCS, "fd00:ec2::254"), {}),
    ("http://meta.googleapis.com/computeMetadata/v1/", (".googleapis.com", GCS),
     {"meta.googleapis.com": ["169.254.169.254"]}),
    ("http://loop.googleapis.com:9093/api/v2/alerts", (".googleapis.com", GCS),
     {"loop.googleapis.com": ["127.0.0.1"]}),
    ("file:///etc/passwd", (GCS,), {}),
])
async def test_a_redirect_to_the_metadata_address_is_refused(
        target: str, allowed: tuple[str, ...], names: dict[str, list[str]],
        tmp_path: Path) -> None:
    server = Server()
    server.redirect_to = target
    network = FakeNetwork({GCS: [PUBLIC_IP], **names}, server.port)
    async with serve(server.app(), server.port):
        await refused(f"http://{GCS}/sarj-recordings-prod/c.wav", tmp_path, allowed,
                      transport=pinned(network))
    assert server.hits == ["/sarj-recordings-prod/c.wav"]  # the first hop only
    assert network.connected == [(PUBLIC_IP, 80)]  # nothing else was connected to


async def test_redirects_between_allowed_public_hosts_are_followed(tmp_path: Path) -> None:
    server = Server()
    server.redirect_to = "http://cdn.googleapis.com/final.bin"
    network = FakeNetwork({GCS: [PUBLIC_IP], "cdn.googleapis.com": ["142.250.74.92"]},
                          server.port)
    async with serve(server.app(), server.port):
        spooled = await get(f"http://{GCS}/b/c.wav", tmp_path, (GCS, "cdn.googleapis.com"),
                            transport=pinned(network))
    assert spooled.size > 0
    assert network.connected == [(PUBLIC_IP, 80), ("142.250.74.92", 80)]


async def test_the_sink_refuses_a_loopback_recording_url(tmp_path: Path) -> None:
    """End to end through the sink's own client (no transport injected): an allowed
    name that resolves to loopback is dead-lettered, never fetched."""
    server = Server()
    settings = RecordingsSettings(dir=str(tmp_path), allowed_hosts=("localhost",),
                                  download_timeout_s=3.0)
    sink = RecordingsSink(settings, store=LocalDirStore(tmp_path), index=MemoryIndex())
    async with serve(server.app(), server.port):
        await sink.start()
        try:
            item = ended("call_2", f"http://localhost:{server.port}/org/call_2.wav")
            outcome = await sink.write([item])
        finally:
            await sink.stop()
    assert [(i, r) for i, r, _ in outcome.failed] == [(item, fetch.RECORDING_URL_REJECTED)]
    assert server.hits == []


def test_the_allow_list_holds_host_names_only() -> None:
    from hookstream.core.config import ConfigError, load

    settings = load(RecordingsSettings, {
        "HOOKSTREAM_RECORDINGS_ALLOWED_HOSTS": "storage.googleapis.com, .example.com",
        "HOOKSTREAM_RECORDINGS_ALLOW_PRIVATE_ADDRESSES": "false"})
    assert settings.allowed_hosts == ("storage.googleapis.com", ".example.com")
    settings.validate()
    for bad in ("https://storage.googleapis.com", "*.googleapis.com", "host/path", "."):
        with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):
            RecordingsSettings(allowed_hosts=(bad,)).validate()
