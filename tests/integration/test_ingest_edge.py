"""The edge of hookstream-ingest on a real socket: header limits and the head deadline.

The ingest app runs under uvicorn exactly as ``hookstream-ingest`` configures it
(``ingest.main.server_config``: uvloop, httptools and hookstream's edge protocol) on a
loopback port, with a recording fake publisher (no broker needed). A raw-socket client
plays the attacker: a megabyte of headers, too many header lines, a request head that
never completes, one byte at a time, or nothing at all; and the legitimate sender,
whose requests (bodies larger than the header limit, keep-alive pauses longer than the
head deadline) must still be served.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from hookstream.core.config import KafkaSettings, load
from hookstream.core.sources import parse_sources
from hookstream.ingest.app import build_app
from hookstream.ingest.edge import LagShedder
from hookstream.ingest.main import server_config
from hookstream.ingest.settings import IngestSettings

from ..support import ENV, SAWT_SECRET, FakePublisher, free_port, serve

MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
HEADER_TIMEOUT_S = 0.6
SOURCES = parse_sources({"sources": {"sawt-main": {"provider": "sawt",
                                                   "secret_env": "SAWT_SECRET"}}}, ENV)
BODY = b'{"call_id":"edge-1","status":"completed"}'
REQUEST_LINE = b"POST /v1/webhooks/sawt-main HTTP/1.1\r\n"


def request(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (REQUEST_LINE + b"Host: ingest\r\nContent-Type: application/json\r\n"
            + b"X-Webhook-Secret: " + SAWT_SECRET.encode() + b"\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("hookstream_ingest_refused_heads_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture
async def edge() -> AsyncIterator[tuple[int, FakePublisher]]:
    """The ingest app on a loopback port, configured as hookstream-ingest runs it."""
    fake = FakePublisher()
    settings = IngestSettings(host="127.0.0.1", port=free_port(), keepalive_timeout_s=10,
                              max_header_bytes=MAX_HEADER_BYTES, max_headers=MAX_HEADERS,
                              header_timeout_s=HEADER_TIMEOUT_S)
    app = build_app(SOURCES, settings, load(KafkaSettings), publisher=fake)  # type: ignore[arg-type]
    async with serve(app, settings.port, server_config(app, settings)):
        yield settings.port, fake


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, timeout_s: float = 5) -> bytes:
    """One response (head + content-length body), or what arrived before the close."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def closed_by_server(sock: socket.socket, timeout_s: float = 5) -> bool:
    sock.settimeout(timeout_s)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def send_until_answered(sock: socket.socket, data: bytes, piece: int = 4096
                        ) -> tuple[int, bytes]:
    """Send ``data`` piece by piece; stop as soon as the server answers. Returns the
    bytes sent by then and the response."""
    sent = 0
    while sent < len(data):
        try:
            sock.sendall(data[sent:sent + piece])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += piece
        readable, _, _ = select.select([sock], [], [], 0.02)
        if readable:
            break
    return sent, read_response(sock)


# --- refused --------------------------------------------------------------------------


async def test_a_megabyte_of_headers_is_refused_431_after_the_limit(edge) -> None:
    port, fake = edge
    before = refusals("header_bytes")
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(1100))
    assert len(pad) > 1024 * 1024

    def attack() -> tuple[int, bytes]:
        with connect(port) as sock:
            sent, response = send_until_answered(sock, REQUEST_LINE + b"Host: x\r\n" + pad)
            return sent, response

    sent, response = await asyncio.to_thread(attack)
    assert status(response) == 431, response[:300]
    assert b"connection: close" in response.lower()
    assert b"header" in response.split(b"\r\n\r\n", 1)[1].lower()
    # Refused right after the limit: nowhere near the megabyte was needed (or read).
    assert sent <= MAX_HEADER_BYTES + 64 * 1024, sent
    assert refusals("header_bytes") == before + 1
    assert fake.calls == []


async def test_one_huge_header_value_is_refused_431(edge) -> None:
    # httptools buffers one header's value until the line ends: the limit must apply
    # to the bytes fed, not to completed headers.
    port, fake = edge

    def attack() -> tuple[int, bytes]:
        with connect(port) as sock:
            return send_until_answered(sock, REQUEST_LINE + b"X-Big: " + b"b" * (1 << 20))

    sent, response = await asyncio.to_thread(attack)
    assert status(response) == 431
    assert sent <= MAX_HEADER_BYTES + 64 * 1024, sent
    assert fake.calls == []


async def test_a_long_request_line_is_refused_431(edge) -> None:
    port, _ = edge

    def attack() -> tuple[int, bytes]:
        with connect(port) as sock:
            return send_until_answered(sock, b"POST /v1/webhooks/" + b"x" * (1 << 20))

    _, response = await asyncio.to_thread(attack)
    assert status(response) == 431


async def test_too_many_header_lines_are_refused_431(edge) -> None:
    port, fake = edge
    before = refusals("header_count")
    extra = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    assert len(request(extra=extra)) < MAX_HEADER_BYTES  # the count, not the size

    def attack() -> bytes:
        with connect(port) as sock:
            sock.sendall(request(extra=extra))
            response = read_response(sock)
            assert closed_by_server(sock)
            return response

    response = await asyncio.to_thread(attack)
    assert status(response) == 431
    assert b"too many" in response.lower()
    assert refusals("header_count") == before + 1
    assert fake.calls == []


async def test_a_head_that_never_completes_is_answered_408_within_the_deadline(edge) -> None:
    port, fake = edge
    before = refusals("head_timeout")

    def attack() -> tuple[float, bytes, bool]:
        with connect(port) as sock:
            started = time.monotonic()
            sock.sendall(REQUEST_LINE + b"Host: x\r\nX-Webhook-Secret: ")
            response = read_response(sock, timeout_s=HEADER_TIMEOUT_S + 5)
            elapsed = time.monotonic() - started
            return elapsed, response, closed_by_server(sock)

    elapsed, response, closed = await asyncio.to_thread(attack)
    assert status(response) == 408, response
    assert closed
    assert HEADER_TIMEOUT_S - 0.1 <= elapsed <= HEADER_TIMEOUT_S + 1.0, elapsed
    assert refusals("head_timeout") == before + 1
    assert fake.calls == []


async def test_a_trickled_head_does_not_extend_the_deadline(edge) -> None:
    # Slowloris: one byte at a time, each well inside any per-read timeout.
    port, _ = edge

    def attack() -> tuple[float, bytes]:
        with connect(port) as sock:
            started = time.monotonic()
            head = REQUEST_LINE + b"Host: x\r\n" + b"X-Slow: " + b"s" * 200
            for i in range(len(head)):
                try:
                    sock.sendall(head[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                if select.select([sock], [], [], 0.05)[0]:
                    break
            return time.monotonic() - started, read_response(sock)

    elapsed, response = await asyncio.to_thread(attack)
    assert status(response) == 408
    assert elapsed <= HEADER_TIMEOUT_S + 1.0, elapsed


async def test_a_connection_that_sends_nothing_is_closed_within_the_deadline(edge) -> None:
    port, _ = edge

    def idle() -> tuple[float, bool]:
        with connect(port) as sock:
            started = time.monotonic()
            closed = closed_by_server(sock, timeout_s=HEADER_TIMEOUT_S + 5)
            return time.monotonic() - started, closed

    elapsed, closed = await asyncio.to_thread(idle)
    assert closed
    assert elapsed <= HEADER_TIMEOUT_S + 1.0, elapsed


# --- still served ---------------------------------------------------------------------


async def test_legitimate_requests_are_still_served(edge) -> None:
    port, fake = edge
    big_body = b'{"call_id":"edge-big","pad":"' + b"p" * (4 * MAX_HEADER_BYTES) + b'"}'
    near_limit = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS - 6))

    def deliver() -> list[int]:
        statuses = []
        with connect(port) as sock:
            # A body several times the header limit: bodies are not head bytes.
            sock.sendall(request(big_body))
            statuses.append(status(read_response(sock)))
            # Keep-alive: a pause longer than the head deadline, then the next request
            # on the same connection (idle time between requests is not head time).
            time.sleep(HEADER_TIMEOUT_S * 1.5)
            sock.sendall(request(extra=near_limit))
            statuses.append(status(read_response(sock)))
            # A head sent in small pieces, completed inside the deadline.
            data = request()
            for i in range(0, len(data), 16):
                sock.sendall(data[i:i + 16])
                time.sleep(0.005)
            statuses.append(status(read_response(sock)))
        return statuses

    assert await asyncio.to_thread(deliver) == [202, 202, 202]
    assert [c.value for c in fake.calls] == [big_body, BODY, BODY]


async def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_is_not(edge) -> None:
    port, fake = edge
    base = request(body=b"")
    head_len = len(base)  # no body: the whole request is head
    pad_line = b"X-Pad: %s\r\n"
    pad = pad_line % (b"a" * (MAX_HEADER_BYTES - head_len - len(pad_line % b"")))
    exact = request(body=b"", extra=pad)
    assert len(exact) == MAX_HEADER_BYTES
    over = request(body=b"", extra=pad.replace(b"X-Pad: ", b"X-Pad: a"))
    assert len(over) == MAX_HEADER_BYTES + 1

    def deliver(data: bytes) -> int:
        with connect(port) as sock:
            sock.sendall(data)
            return status(read_response(sock))

    # The body is empty (not JSON): accepted and stored, as any authenticated body is.
    assert await asyncio.to_thread(deliver, exact) == 202
    assert await asyncio.to_thread(deliver, over) == 431
    assert len(fake.calls) == 1


# --- over limit_concurrency -----------------------------------------------------------

async def test_over_the_concurrency_limit_the_503_carries_retry_after() -> None:
    """uvicorn's own 503 past limit_concurrency had no Retry-After: a provider's retry
    policy was left to guess. Now it is ingest's 503 like every other."""
    fake = FakePublisher()
    settings = IngestSettings(host="127.0.0.1", port=free_port(), limit_concurrency=2,
                              header_timeout_s=5, retry_after_s=7)
    app = build_app(SOURCES, settings, load(KafkaSettings), publisher=fake)  # type: ignore[arg-type]
    before = refusals("concurrency")
    async with serve(app, settings.port, server_config(app, settings)):
        with connect(settings.port) as idle, connect(settings.port) as busy:
            await asyncio.sleep(0.1)  # two connections open: the limit is reached
            busy.sendall(request())
            response = await asyncio.to_thread(read_response, busy)
            assert status(response) == 503, response
            head = response.split(b"\r\n\r\n")[0].lower()
            assert b"\r\nretry-after: 7" in head
            assert response.endswith(b'{"error":"overloaded, retry later"}')
            del idle
        with connect(settings.port) as alone:  # under the limit again: served
            alone.sendall(request())
            assert status(await asyncio.to_thread(read_response, alone)) == 202
    assert refusals("concurrency") == before + 1
    assert len(fake.calls) == 1


# --- overload: shed at the head -------------------------------------------------------

class _Held(LagShedder):
    """A shedder whose admitted share the test sets (no timer moves it)."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


@pytest.fixture
async def shedding() -> AsyncIterator[tuple[int, FakePublisher, _Held]]:
    """The ingest app as hookstream-ingest runs it, with a shedder the test holds."""
    fake = FakePublisher()
    settings = IngestSettings(host="127.0.0.1", port=free_port(), keepalive_timeout_s=10,
                              header_timeout_s=5, retry_after_s=3)
    app = build_app(SOURCES, settings, load(KafkaSettings), publisher=fake)  # type: ignore[arg-type]
    config = server_config(app, settings)
    held = _Held(0.5)
    held.floor = 0.0
    config.http = type("Held", (config.http,), {"shedder": held})  # type: ignore[misc,arg-type]
    async with serve(app, settings.port, config):
        yield settings.port, fake, held


def read_answers(sock: socket.socket, count: int, timeout_s: float = 5) -> list[bytes]:
    """``count`` responses (head + Content-Length body) read off one connection, however
    the reads split them."""
    sock.settimeout(timeout_s)
    data, answers = b"", []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(data) >= end + 4 + length:
                answers.append(data[:end + 4 + length])
                data = data[end + 4 + length:]
                continue
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return answers


def shed_answer(response: bytes) -> bool:
    head = response.split(b"\r\n\r\n")[0].lower()
    return (status(response) == 503 and b"\r\nretry-after: 3" in head
            and response.endswith(b'{"error":"overloaded, retry later"}'))


async def test_overload_is_shed_at_the_head_and_the_connection_kept(shedding) -> None:
    """Admitting nothing: every request is answered 503 + Retry-After without reaching
    the app, whole or split over reads, and the kept-alive connection then serves the
    next request once requests are admitted again."""
    port, fake, held = shedding
    held.admit = 0.0
    before = refusals("overload")
    with connect(port) as sock:
        for _ in range(3):  # one whole request per read: the parser is not used
            sock.sendall(request())
            assert shed_answer(await asyncio.to_thread(read_response, sock))
        whole = request()
        split = whole.index(b"\r\n\r\n") + 4
        sock.sendall(whole[:split])  # the head, then the body: shed through the parser
        await asyncio.sleep(0.05)
        sock.sendall(whole[split:])
        assert shed_answer(await asyncio.to_thread(read_response, sock))
        sock.sendall(request() + request())  # pipelined: two answers, in order
        # Both may come in one read (read_response would drop the second): read both.
        both = await asyncio.to_thread(read_answers, sock, 2)
        assert len(both) == 2 and all(shed_answer(answer) for answer in both), both
        held.admit = 1.0
        sock.sendall(request())  # the same connection, in step with the requests
        assert status(await asyncio.to_thread(read_response, sock)) == 202
    assert refusals("overload") == before + 6
    assert len(fake.calls) == 1


async def test_a_shed_request_asking_to_close_is_answered_then_closed(shedding) -> None:
    port, fake, held = shedding
    held.admit = 0.0
    with connect(port) as sock:
        sock.sendall(request(extra=b"Connection: close\r\n"))
        assert shed_answer(await asyncio.to_thread(read_response, sock))
        assert await asyncio.to_thread(closed_by_server, sock)
    with connect(port) as sock:  # chunked: the parser frames it, and it is shed too
        sock.sendall(REQUEST_LINE + b"Host: ingest\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
        assert shed_answer(await asyncio.to_thread(read_response, sock))
        held.admit = 1.0
        sock.sendall(request())
        assert status(await asyncio.to_thread(read_response, sock)) == 202
    assert len(fake.calls) == 1


async def test_a_shed_request_keeps_the_head_limits(shedding) -> None:
    """Shedding skips the app, not the edge's limits: a head over the cap is 431."""
    port, _fake, held = shedding
    held.admit = 0.0
    with connect(port) as sock:
        _sent, response = await asyncio.to_thread(
            send_until_answered, sock, request(extra=b"X-Pad: " + b"a" * 40000 + b"\r\n"))
        assert status(response) == 431, response[:200]
