"""uvicorn's httptools protocol with limits on the request head.

uvicorn with httptools reads any number of header bytes (llhttp has no limit, and
httptools buffers a header's value until its line ends) and has no deadline for a
request head, so one unauthenticated connection could make the process read 128 MiB
of headers, and half-sent requests held connection slots until ``limit_concurrency``
answered 503 to everyone. This subclass keeps httptools' speed and adds, per request:

* a cap on the head's bytes (request line + headers), counted on the bytes fed to
  the parser, so one endless header line is caught as well as many lines: 431;
* a cap on the number of header lines: 431;
* a deadline for the head, from the connection's start (for its first request) or
  from the first byte of each later request; idle time between keep-alive requests
  stays governed by ``timeout_keep_alive``: 408, or a silent close when not one byte
  of a request arrived.

A refused connection gets a short JSON reason and ``connection: close``; its write
side is shut and what the client still sends is read and dropped (never buffered)
for at most ``LINGER_S``, so that the client reads the answer instead of a reset.

Past ``limit_concurrency`` (open connections or requests in progress), uvicorn answers
503 itself, before any app code, with neither ``Retry-After`` nor a JSON reason. Its
answer is replaced (:func:`shed`): a 503 with ``Retry-After`` as every other 503 of
ingest, counted as ``refused_heads_total{reason="concurrency"}``.

Overload (more requests than the CPU can serve) is shed here too, by
:class:`LagShedder`: while the event loop runs late, a share of new requests is
answered 503 + Retry-After from the parser's callbacks, before uvicorn builds a scope
or a task and before the body is read or verified, and the connection is kept alive.
That answer costs a small fraction of a served request, so the requests let through
are still answered within the provider's window (docs/reliability.md, overload).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from typing import Any, ClassVar

import httptools
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from . import metrics

HEAD_AT = "hookstream.head_at"  # scope key: loop time the request's head was parsed
LINGER_S = 1.0  # after a refusal: how long to drain (and drop) what the client still sends

# reason label -> (status, JSON body); the labels are a closed set (metrics).
REFUSALS: dict[str, tuple[int, bytes]] = {
    "header_bytes": (431, b'{"error":"request header fields too large"}'),
    "header_count": (431, b'{"error":"too many header fields"}'),
    "head_timeout": (408, b'{"error":"request head not received in time"}'),
    "idle": (0, b""),  # connected, sent nothing within the deadline: closed, no answer
}


class LagShedder:
    """Admission by event-loop lag: what share of new requests the app may take.

    Every ``interval_s`` a timer measures how late the loop ran it. That lateness is
    the wait any newly arrived request has before this process even reads it, and it
    is the only queue a CPU-bound process can see (requests behind it wait in socket
    buffers). Above ``target_s`` (two ticks in a row, or one tick over four times
    it) the admitted share is cut (multiplicatively); below it, the share grows back
    by a small step: AIMD, as TCP does. A request not admitted is answered 503 +
    Retry-After at its head (:class:`EdgeHttpToolsProtocol`). The listeners' accept
    queue is reported once a second, not steered by (ADR 8).
    """

    interval_s = 0.05
    decrease = 0.75  # share kept per late tick
    increase = 0.02  # share added per tick on time (0.4 a second)
    floor = 0.01  # never shut out entirely: the lag must be measured with some load

    def __init__(self, target_s: float) -> None:
        self.target_s = target_s
        self.listeners: list[Any] = []  # listening sockets whose accept queue is read
        self.admit = 1.0
        self.lag_s = 0.0
        self._worst_s = 0.0  # the worst lag since the gauge was last set
        self._gauge_at = 0.0
        metrics.ADMIT_SHARE.set(1.0)  # not 0 before the first connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start measuring on ``loop`` (idempotent: on the first connection)."""
        if self._loop is loop and self._timer is not None:
            return
        self._loop = loop
        self._due = loop.time() + self.interval_s
        self._timer = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(0.0, now - self._due)
        # Two late ticks in a row, or one very late: a lone short stall (a GC pass) is
        # not overload, and shedding for it would refuse for nothing; a stall of
        # seconds (thousands of connections accepted at once) is.
        # The accept queue is measured (a gauge) but does not steer: under overload it
        # stayed full whatever share was admitted, so steering by it pinned the share
        # at the floor and the 202s collapsed (docs/reliability.md, overload).
        late = lag > self.target_s
        was_late = self.lag_s > self.target_s
        if late and (was_late or lag > 4 * self.target_s):
            self.admit = max(self.floor, self.admit * self.decrease)
        elif not late and self.admit < 1.0:
            self.admit = min(1.0, self.admit + self.increase)
        self.lag_s = lag
        # The gauge shows the worst lag of the last second, not the last tick's: a
        # scrape must not land on the quick tick between two long stalls.
        self._worst_s = max(self._worst_s, lag)
        if now - self._gauge_at >= 1.0:
            metrics.LOOP_LAG.set(self._worst_s)
            metrics.ACCEPT_QUEUE.set(self._accept_queue())  # a syscall a listener: not per tick
            self._worst_s, self._gauge_at = 0.0, now
        metrics.ADMIT_SHARE.set(self.admit)
        self._due = now + self.interval_s
        self._timer = loop.call_at(self._due, self._tick)

    def _accept_queue(self) -> int:
        """The most connections waiting in a listener's accept queue: TCP_INFO of a
        listening socket carries its queue length in ``tcpi_unacked`` (Linux)."""
        queued = 0
        for sock in self.listeners:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            except (OSError, AttributeError, ValueError):  # not Linux, or closed (fd -1)
                continue
            queued = max(queued, _LISTEN_QUEUE.unpack_from(info)[0])
        return queued

    def behind(self) -> bool:
        """Whether this process runs behind (late now, or still shedding): then a slow
        answer from the broker may only be waiting for the loop (``Publisher``)."""
        return self.admit < 1.0 or self.lag_s > self.target_s

    def shed(self) -> bool:
        """Whether to turn the request whose head begins now away."""
        return self.admit < 1.0 and random.random() >= self.admit


_SHED_OVERLOAD = metrics.REFUSED_HEADS.labels("overload")
# struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked (u32s);
# for a listening socket, unacked is the accept queue's length.
_LISTEN_QUEUE = struct.Struct("<24xI")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


class EdgeHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with head limits; build configured ones with :func:`edge_protocol`."""

    max_head_bytes: ClassVar[int] = 16384
    max_headers: ClassVar[int] = 100
    head_timeout_s: ClassVar[float] = 5.0
    shedder: ClassVar[LagShedder | None] = None  # the public listener's; None on admin
    retry_after: ClassVar[bytes] = b"2"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shedding = False  # the request being parsed was turned away at its head
        self._shed_next = False  # the next request to begin is turned away
        self._addressed = False  # self.server and self.client looked up (on first use)
        self._head_pending = True  # the next bytes fed belong to a request head
        self._head_bytes = 0
        self._header_count = 0
        self._began = False  # a request's first byte arrived and its message is not complete
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused: str | None = None

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's connection_made (0.54), except that the two addresses are looked up
        # when the connection's first request is let through (_look_up_addresses), not
        # here: uvicorn's helpers build a socket object per connection (getsockname,
        # getsockopt, getpeername), the costliest part of a new connection on a VM
        # (bench.shed --close), and a connection whose requests are all shed never
        # needs them.
        self.connections.add(self)
        if self.shedder is not None:  # the webhook listener's, not the admin one's
            metrics.CONNECTIONS.inc()
        self.transport = transport
        self.flow = FlowControl(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._arm_head_timer()
        if self.shedder is not None:
            self.shedder.start(self.loop)

    def _look_up_addresses(self) -> None:
        self._addressed = True
        self.server = get_local_addr(self.transport)
        self.client = get_remote_addr(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # lingering after a refusal: read and dropped
        if (self.shedder is not None and self.shedder.admit < 1.0 and self._head_pending
                and not self._began and (self.cycle is None or self.cycle.response_complete)
                and self.shedder.shed()):
            if self._shed_whole(data):
                return
            self._shed_next = True  # not one whole request: shed through the parser
        if not self._head_pending:
            # Within a body (the common case for large requests): fed whole. A pipelined
            # request's head starting in the same read is not counted (bounded by one read).
            self._feed(data)
            return
        # A head is pending: feed at most the bytes it may still take, so that the limit
        # holds exactly (an answer at max_head_bytes + 1, not a read later).
        if len(data) < self.max_head_bytes - self._head_bytes:  # the common case: all fits
            self._head_bytes += len(data)
            self._feed(data)
            return
        view = memoryview(data)
        while view:
            if not self._head_pending:
                self._feed(view)
                return
            budget = self.max_head_bytes - self._head_bytes
            if budget <= 0:
                self._refuse("header_bytes")
                return
            piece, view = view[:budget], view[budget:]
            self._head_bytes += len(piece)
            self._feed(piece)
            if self._refused is not None or self.transport.is_closing():
                return
        if self._head_pending and self._head_bytes >= self.max_head_bytes:
            self._refuse("header_bytes")

    def _shed_whole(self, data: bytes) -> bool:
        """Turn away the request in ``data`` without the parser, when ``data`` is exactly
        one whole HTTP/1.1 request framed by Content-Length (a webhook's usual read):
        its bytes are never fed to the parser, which stays between messages. This costs
        a few byte searches instead of a Python call per header, and shedding must cost
        far less than serving: under overload every provider retries what is shed.
        Anything else (chunked, several requests, HTTP/1.0, ``connection: close``, a
        partial read, more than one Content-Length) returns False for the parser."""
        end = data.find(b"\r\n\r\n", 0, self.max_head_bytes)
        if end < 0:
            return False
        head = data[:end + 2].lower()
        line_end = head.find(b"\r\n")
        if not head.endswith(b"\r\n") or not head[:line_end].endswith(b" http/1.1"):
            return False
        at = head.find(b"\r\ncontent-length:")
        if (at < 0 or head.find(b"\r\ncontent-length:", at + 17) >= 0
                or b"\r\ntransfer-encoding:" in head or b"\r\nconnection: close" in head
                or b"\r\nexpect:" in head):
            return False
        value = head[at + 17:head.find(b"\r\n", at + 17)].strip()
        if not value.isdigit() or len(value) > 9 or end + 4 + int(value) != len(data):
            return False
        self._unset_keepalive_if_required()
        self._cancel_head_timer()
        _SHED_OVERLOAD.inc()
        self.transport.write(self._shed_answer())
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)
        return True

    def _feed(self, data: bytes | memoryview) -> None:
        # uvicorn's data_received, except that a refusal raised by a callback below is
        # not reported as a malformed request (400).
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused is not None:
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # --- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._began = True
        self._header_count = 0
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()
        # Overload: turned away before uvicorn builds anything for it. Never while an
        # earlier request on this connection is still answered (pipelining: uvicorn
        # queues it, and answers must keep their order).
        if self._shed_next or (self.shedder is not None and self.shedder.shed()
                               and (self.cycle is None or self.cycle.response_complete)):
            self._shed_next = False
            self._shedding = True
            return
        if not self._addressed:
            self._look_up_addresses()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._shedding:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._shedding:  # nothing kept; the head's byte cap still holds
            return
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refuse("header_count")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self._shedding:  # answered now; the body that follows is read and dropped
            _SHED_OVERLOAD.inc()
            self.transport.write(self._shed_answer())
            return
        # When the head was parsed (loop time): the app measures from it how long the
        # request waited for the loop, and answers within its deadline (app.HEAD_AT).
        self.scope[HEAD_AT] = self.loop.time()  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._shedding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._began = False
        self._head_pending = True  # what follows is the next request's head
        if not self._shedding:
            super().on_message_complete()
            return
        self._shedding = False
        if self.transport.is_closing():
            return
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            self.transport.close()  # after the answer written above is flushed
        else:  # idle until the next request, as after any answer (uvicorn's timer; a
            # pipelined request answered just before armed one already: replaced)
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    _answer_for: list[tuple[bytes, bytes]] | None = None  # default headers it was built with
    _answer: bytes = b""

    def _shed_answer(self) -> bytes:
        """503 + Retry-After, built again only when uvicorn renews its default headers
        (the date, once a second), not per request."""
        defaults = self.server_state.default_headers
        cls = type(self)
        if cls._answer_for is not defaults:
            cls._answer = b"".join([
                STATUS_LINE[503],
                *(name + b": " + value + b"\r\n" for name, value in defaults),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(SHED_BODY),
                b"retry-after: " + self.retry_after + b"\r\n\r\n",
                SHED_BODY,
            ])
            cls._answer_for = defaults
        return cls._answer

    # --- the head deadline and refusals ------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._head_pending or self.transport.is_closing():
            return
        # Bytes of a head arrived (the parser began a message) or not one did.
        self._refuse("head_timeout" if self._began else "idle")

    def _refuse(self, reason: str) -> None:
        if self._refused is not None:
            return
        self._refused = reason
        self._cancel_head_timer()
        metrics.REFUSED_HEADS.labels(reason).inc()
        transport = self.transport
        if transport.is_closing():
            return
        status, body = REFUSALS[reason]
        responding = self.cycle is not None and not self.cycle.response_complete
        if status and not responding:  # never interleaved with a response in progress
            transport.write(b"".join([
                STATUS_LINE[status],
                *(name + b": " + value + b"\r\n"
                  for name, value in self.server_state.default_headers),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]))
        if status and not responding and transport.can_write_eof():
            # Answer, then drain: closing with unread input would send a reset, which
            # can destroy the answer before the client reads it.
            transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


class _DropConcurrencyWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Exceeded concurrency limit."


SHED_BODY = b'{"error":"overloaded, retry later"}'
_shed_retry_after = b"2"  # set by edge_protocol() from HOOKSTREAM_INGEST_RETRY_AFTER_S


async def shed(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past ``limit_concurrency``, in uvicorn's place: 503 + Retry-After."""
    metrics.REFUSED_HEADS.labels("concurrency").inc()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(SHED_BODY)),
        (b"retry-after", _shed_retry_after),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": SHED_BODY, "more_body": False})


def edge_protocol(max_head_bytes: int, max_headers: int, head_timeout_s: float,
                  retry_after_s: int = 2, shedder: LagShedder | None = None,
                  ) -> type[EdgeHttpToolsProtocol]:
    """An :class:`EdgeHttpToolsProtocol` class with these limits, for ``uvicorn.Config(http=)``;
    with ``shedder``, overload is shed at the request head.

    Also puts :func:`shed` in place of uvicorn's answer past ``limit_concurrency``
    (a module-level name uvicorn looks up per request; uvicorn is pinned to 0.54.x)."""
    global _shed_retry_after
    _shed_retry_after = str(retry_after_s).encode()
    # uvicorn also logs a warning per request shed there: thousands a second under
    # overload, costing the CPU that is short. The metric counts them instead.
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropConcurrencyWarning) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_DropConcurrencyWarning())
    httptools_impl.service_unavailable = shed  # type: ignore[assignment,attr-defined]
    return type("EdgeHttpToolsProtocol", (EdgeHttpToolsProtocol,), {
        "max_head_bytes": max_head_bytes,
        "max_headers": max_headers,
        "head_timeout_s": head_timeout_s,
        "shedder": shedder,
        "retry_after": _shed_retry_after,
    })


for _reason in (*REFUSALS, "concurrency", "overload"):  # every series exists from the start, at 0
    metrics.REFUSED_HEADS.labels(_reason)
