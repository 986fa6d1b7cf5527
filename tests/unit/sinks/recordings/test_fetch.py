"""One recording download, against httpx.MockTransport: streaming, the size cap,
status classes, and no partial file left behind."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hookstream.sinks.recordings import fetch

URL = "https://storage.googleapis.com/sarj-recordings/org_1/call_1.wav?X-Goog-Signature=s3cr3t"
CHUNK = 64 * 1024


class Chunks(httpx.AsyncByteStream):
    """A body of ``count`` chunks that counts how many were actually pulled."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.count = count
        self.fail_after = fail_after
        self.yielded = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n in range(self.count):
            if self.fail_after is not None and n == self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            self.yielded += 1
            yield bytes([n % 256]) * CHUNK


def no_files(directory: Path) -> bool:
    """Nothing left in the spool directory: no partial file."""
    return not any(directory.iterdir())


SARJ = ("storage.googleapis.com",)  # Sarj.ai's recordings host (an empty list allows none)


def client(handler: httpx.MockTransport | None = None, allowed: tuple[str, ...] = SARJ
           ) -> httpx.AsyncClient:
    return fetch.make_client(allowed, 10.0, 4, transport=handler)


async def get(transport: httpx.MockTransport, spool: Path, max_bytes: int = 10 * CHUNK,
              url: str = URL, allowed: tuple[str, ...] = SARJ) -> fetch.Spooled:
    async with client(transport, allowed) as c:
        return await fetch.download(c, url, spool, max_bytes=max_bytes, timeout_s=10)


async def test_streams_to_a_spool_file_with_size_and_sha256(tmp_path: Path) -> None:
    body = Chunks(5)
    transport = httpx.MockTransport(lambda r: httpx.Response(
        200, stream=body, headers={"content-type": "audio/wav"}))
    spooled = await get(transport, tmp_path)
    data = b"".join(bytes([n]) * CHUNK for n in range(5))
    assert spooled.path.parent == tmp_path and spooled.path.read_bytes() == data
    assert (spooled.size, spooled.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert spooled.content_type == "audio/wav"


async def test_over_the_cap_aborts_without_reading_the_rest(tmp_path: Path) -> None:
    body = Chunks(1000)  # 62.5 MiB on offer, no Content-Length
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=body))
    with pytest.raises(fetch.FetchFailed) as caught:
        await get(transport, tmp_path, max_bytes=3 * CHUNK + 1)
    assert caught.value.reason == fetch.RECORDING_TOO_LARGE
    assert body.yielded == 4  # the chunk that crossed the cap, and not one more
    assert no_files(tmp_path)  # no partial file


async def test_a_declared_length_over_the_cap_reads_nothing(tmp_path: Path) -> None:
    body = Chunks(1000)
    transport = httpx.MockTransport(lambda r: httpx.Response(
        200, stream=body, headers={"content-length": str(1000 * CHUNK)}))
    with pytest.raises(fetch.FetchFailed) as caught:
        await get(transport, tmp_path, max_bytes=CHUNK)
    assert caught.value.reason == fetch.RECORDING_TOO_LARGE and body.yielded == 0
    assert no_files(tmp_path)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
async def test_a_dead_url_is_unavailable(status: int, tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(status, text="expired"))
    with pytest.raises(fetch.FetchFailed) as caught:
        await get(transport, tmp_path)
    assert caught.value.reason == fetch.RECORDING_UNAVAILABLE
    assert f"HTTP {status}" in caught.value.detail
    assert "s3cr3t" not in str(caught.value)  # the signature never reaches logs or the DLQ
    assert no_files(tmp_path)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_a_failing_source_is_transient(status: int, tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(status))
    with pytest.raises(fetch.FetchTransient, match=f"HTTP {status}"):
        await get(transport, tmp_path)
    assert no_files(tmp_path)


async def test_a_connection_error_is_transient(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(fetch.FetchTransient, match="ConnectError"):
        await get(httpx.MockTransport(refuse), tmp_path)


async def test_a_broken_stream_leaves_no_partial_file(tmp_path: Path) -> None:
    body = Chunks(10, fail_after=3)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=body))
    with pytest.raises(fetch.FetchTransient):
        await get(transport, tmp_path)
    assert body.yielded == 3
    assert no_files(tmp_path)


async def test_the_download_deadline_is_transient(tmp_path: Path) -> None:
    import asyncio

    class Slow(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"x" * 10
            await asyncio.sleep(5)
            yield b"y"

    transport = httpx.MockTransport(lambda r: httpx.Response(200, stream=Slow()))
    async with client(transport) as c:
        with pytest.raises(fetch.FetchTransient, match="timed out after 10 bytes"):
            await fetch.download(c, URL, tmp_path, max_bytes=100, timeout_s=0.2)
    assert no_files(tmp_path)


async def test_hosts_outside_the_allow_list_are_rejected_even_by_redirect(
        tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        if request.url.host == "storage.googleapis.com":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/latest"})
        return httpx.Response(200, content=b"metadata")

    allowed = ("storage.googleapis.com",)
    with pytest.raises(fetch.FetchFailed) as caught:
        await get(httpx.MockTransport(handler), tmp_path, allowed=allowed)
    assert caught.value.reason == fetch.RECORDING_URL_REJECTED
    assert seen == ["storage.googleapis.com"]  # the redirect target was never requested
    with pytest.raises(fetch.FetchFailed):
        fetch.check_url("http://evil.test/x.wav", allowed)
    with pytest.raises(fetch.FetchFailed):
        fetch.check_url("file:///etc/passwd", ())
    assert fetch.host_allowed("a.storage.example", (".storage.example",))
    assert not fetch.host_allowed("storage.example.evil", (".storage.example",))
