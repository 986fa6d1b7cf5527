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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

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


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


class EdgeHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with head limits; build configured ones with :func:`edge_protocol`."""

    max_head_bytes: ClassVar[int] = 16384
    max_headers: ClassVar[int] = 100
    head_timeout_s: ClassVar[float] = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_pending = True  # the next bytes fed belong to a request head
        self._head_bytes = 0
        self._header_count = 0
        self._began = False  # a request's first byte arrived and its message is not complete
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused: str | None = None

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # lingering after a refusal: read and dropped
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
        super().on_message_begin()
        self._began = True
        self._header_count = 0
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refuse("header_count")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_bytes = 0
        self._cancel_head_timer()
        # When the head was parsed (loop time): the app measures from it how long the
        # request waited for the loop, and answers within its deadline (app.HEAD_AT).
        self.scope[HEAD_AT] = self.loop.time()  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._began = False
        self._head_pending = True  # what follows is the next request's head

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
                  retry_after_s: int = 2) -> type[EdgeHttpToolsProtocol]:
    """An :class:`EdgeHttpToolsProtocol` class with these limits, for ``uvicorn.Config(http=)``.

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
    })


for _reason in (*REFUSALS, "concurrency"):  # every series exists from the start, at 0
    metrics.REFUSED_HEADS.labels(_reason)
