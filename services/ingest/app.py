"""The ingest ASGI app: authenticate, publish the raw bytes, answer 202.

Per request it does the least it can: look up the source, check the content
type and size, read the body under a deadline, authenticate over the raw bytes,
and publish. It never parses JSON beyond the cheap natural-key lookup; a
malformed body from an authenticated source is accepted and left for the
normalizer to dead-letter.

The webhook path is served by a pure ASGI handler (no Request object, no
middleware stack: per-request framework overhead is most of the cost at these
sizes, see docs/perf/); everything else (``/healthz``, the lifespan, 404s) is a
regular Starlette app. Readiness and metrics are not on this (public) app at all:
``IngestApp.admin`` serves ``/healthz``, ``/readyz`` and ``/metrics`` on the admin
listener (``HOOKSTREAM_INGEST_ADMIN_HOST``/``_PORT``, loopback by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..core import health
from ..core.config import KafkaSettings
from ..core.record import (
    TEST_REQUEST_HEADER,
    RawDelivery,
    marks_test,
    new_request_id,
    now_ms,
)
from ..core.sources import Source
from . import metrics
from .edge import HEAD_AT, LagShedder
from .publisher import NOT_STORED_REASONS, NotStored, Publisher
from .settings import IngestSettings
from .spool import Spool

log = logging.getLogger(__name__)

# 503s for requests the process could not serve in time, beside the publisher's reasons:
# shed_queued (waited for the loop past HOOKSTREAM_INGEST_SHED_QUEUED_S), deadline (not
# stored within HOOKSTREAM_INGEST_ANSWER_WITHIN_S of the head).
SHED_REASONS = ("shed_queued", "deadline")

PREFIX = "/v1/webhooks/"
MAX_HEADER_VALUE_CHARS = 256  # every request header copied onto the record (truncated)
MAX_CONTENT_LENGTH_DIGITS = 18  # more digits is more than any body limit: 413 unparsed
JSON_HEADERS = [(b"content-type", b"application/json")]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def _error(status: int, error: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    """Read at most ``limit`` bytes; stop reading (not buffer) as soon as it is exceeded."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _copied(value: str | None) -> str | None:
    """A request header's value as copied onto the record: ASCII, truncated, or None."""
    if value is None or not value.isascii():
        return None
    return value[:MAX_HEADER_VALUE_CHARS]


def _copied_header(headers: Headers, name: str | None) -> str | None:
    return None if name is None else _copied(headers.get(name))


def _query_value(query: bytes, name: str) -> str | None:
    """The first value of query parameter ``name`` (percent-decoded), or None.

    Only the one name is looked for: no dict of every parameter is built per request.
    """
    wanted = name.encode()
    for pair in query.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if sep and urllib.parse.unquote_to_bytes(key.replace(b"+", b" ")) == wanted:
            return urllib.parse.unquote_plus(value.decode("latin-1"), errors="replace")
    return None


def _routing_key(source: Source, headers: Headers, scope: Scope,
                 path_key: str | None) -> str | None:
    """The delivery's routing key from where this source's sender puts it (never from
    the body), under the same limits as every copied header: ASCII, truncated."""
    place = source.routing_key_from
    if place == "header":
        return _copied_header(headers, source.routing_key_header)
    if place == "fixed":
        return source.routing_key_value  # checked against those limits at start-up
    given = path_key if place == "path" else _query_value(
        scope.get("query_string", b""), source.routing_key_param or "")
    # An empty segment or parameter is no key: the normalizer infers the event.
    return _copied(given) or None


async def _respond(send: Send, status: int, body: bytes,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WebhookHandler:
    """``POST /v1/webhooks/{source}[/{path_secret}]`` as a pure ASGI app."""

    def __init__(self, sources: Mapping[str, Source], settings: IngestSettings,
                 topic: str, publisher: Publisher) -> None:
        self._sources = sources
        self._topic = topic
        self._publisher = publisher
        self._body_timeout_s = settings.body_timeout_s
        self._answer_within_s = settings.answer_within_s
        self._shed_queued_s = settings.shed_queued_s
        self._retry_after = [(b"retry-after", str(settings.retry_after_s).encode())]
        # Label children looked up once per (source, status), not per request.
        self._requests = functools.cache(
            lambda source, status: metrics.REQUESTS.labels(source, str(status)))
        self._ack_latency = functools.cache(lambda s: metrics.ACK_LATENCY.labels(s))
        self._bytes = functools.cache(lambda s: metrics.RECEIVED_BYTES.labels(s))
        self._failures = functools.cache(
            lambda s, reason: metrics.PRODUCE_FAILURES.labels(s, reason))
        # Every series a dashboard or alert rule divides by exists from the start (at 0),
        # so "no 503s yet" reads as 0, not as "no data".
        for name in sources:
            for status in (202, 401, 503):
                self._requests(name, status)
            for reason in (*NOT_STORED_REASONS, *SHED_REASONS):
                self._failures(name, reason)
            self._ack_latency(name)
            self._bytes(name)

    async def _shed(self, send: Send, source: str, reason: str) -> None:
        """503 + Retry-After for a request the process could not serve in time."""
        self._failures(source, reason).inc()
        await self._answer(send, source, 503, "overloaded, retry later", self._retry_after)

    async def _answer(self, send: Send, source: str, status: int, error: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self._requests(source, status).inc()
        await _respond(send, status, orjson.dumps({"error": error}), extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        # The request's deadline, from when its head was parsed (edge.py; now, when
        # served by another protocol): answered within answer_within_s whatever happens.
        now = asyncio.get_running_loop().time()
        head_at: float = scope.get(HEAD_AT, now)
        deadline = head_at + self._answer_within_s
        parts = scope["path"][len(PREFIX):].split("/")
        name = parts[0]
        source = self._sources.get(name)
        # (path secret, routing key) by position; None: a URL this source does not have.
        segments = source.split_path(parts[1:]) if source is not None else None
        if source is None or segments is None:
            return await self._answer(send, "unknown", 404, "unknown source")
        if scope["method"] != "POST":
            return await self._answer(send, name, 405, "method not allowed",
                                      [(b"allow", b"POST")])
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        if not source.content_type_ok(content_type):
            return await self._answer(send, name, 415, "unsupported content type")
        declared = headers.get("content-length")
        if declared is not None:
            # ASCII digits only ("\xb2".isdigit(), and int() refuses it), and few enough
            # for int() (it refuses over 4300 digits): never a 500.
            if not (declared.isascii() and declared.isdigit()):
                return await self._answer(send, name, 400, "invalid content-length")
            if (len(declared) > MAX_CONTENT_LENGTH_DIGITS
                    or int(declared) > source.max_body_bytes):
                return await self._answer(send, name, 413, "body too large")

        # Cheap checks first: a wrong path secret or address never gets its body read.
        # Proxies may add their own X-Forwarded-For line: every line counts, in order.
        client = scope.get("client")
        peer = client[0] if client else None
        path_secret, path_key = segments
        forwarded = ", ".join(headers.getlist("x-forwarded-for")) or None
        if not (source.path_secret_ok(path_secret) & source.network_ok(peer, forwarded)):
            return await self._answer(send, name, 401, "unauthorized")
        if now - head_at > self._shed_queued_s:
            # The process is behind: this request waited for the loop longer than it may.
            # Shed it now, before the body is read or verified (the cheapest answer), so
            # that the ones behind it are answered in time.
            return await self._shed(send, name, "shed_queued")

        body_deadline = min(now + self._body_timeout_s, deadline)
        try:
            async with asyncio.timeout_at(body_deadline):
                body = await _read_body(receive, source.max_body_bytes)
        except BodyTooLarge:
            return await self._answer(send, name, 413, "body too large")
        except TimeoutError:
            if body_deadline == deadline:
                return await self._shed(send, name, "deadline")
            return await self._answer(send, name, 408, "body not received in time")
        except ClientGone:
            return await self._answer(send, name, 400, "client disconnected")

        if not source.verifier.verify(headers, body, time.time()):
            return await self._answer(send, name, 401, "unauthorized")

        delivery = RawDelivery(
            source=name,
            provider=source.provider.name,
            received_at_ms=now_ms(),
            request_id=new_request_id(),
            body=body,
            content_type=_copied(content_type),
            routing_key=_routing_key(source, headers, scope, path_key),
            event_id=_copied_header(headers, source.event_id_header),
            # Our own smoke tests mark themselves; the body is not read for it.
            test=marks_test(headers.get(TEST_REQUEST_HEADER)),
        )
        try:
            async with asyncio.timeout_at(deadline):
                await self._publisher.publish(
                    self._topic, body, source.provider.natural_key(body), delivery.headers())
        except NotStored as exc:
            self._failures(name, exc.reason).inc()
            log.warning("delivery not stored; answered 503",
                        extra={"source": name, "reason": exc.reason})
            return await self._answer(send, name, 503, "not stored, retry later",
                                      self._retry_after)
        except TimeoutError:  # past the request's deadline; a late ack is a duplicate
            return await self._shed(send, name, "deadline")

        self._ack_latency(name).observe(time.perf_counter() - started)
        self._bytes(name).inc(len(body))
        self._requests(name, 202).inc()
        await _respond(send, 202, b'{"status":"accepted","receipt":"%s"}'
                       % delivery.request_id.encode())


class IngestApp:
    """The webhook path straight to :class:`WebhookHandler`; the rest to Starlette."""

    def __init__(self, webhooks: WebhookHandler, rest: Starlette, admin: Starlette,
                 shedder: LagShedder | None = None) -> None:
        self._webhooks = webhooks
        self._rest = rest
        self.state = rest.state
        self.router = rest.router  # its lifespan, for tests and embedding
        self.admin = admin  # /healthz, /readyz, /metrics: the admin listener's app
        self.shedder = shedder  # overload shedding: the public listener's (main.server_config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self._webhooks(scope, receive, send)
        else:
            await self._rest(scope, receive, send)


def build_app(
    sources: Mapping[str, Source],
    settings: IngestSettings,
    kafka: KafkaSettings,
    publisher: Publisher | None = None,
) -> Any:
    spool = None
    if settings.spool_dir and publisher is None:
        spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes,
                      max_age_s=settings.spool_max_age_s,
                      min_free_bytes=settings.spool_min_free_bytes,
                      segment_bytes=settings.spool_segment_bytes)
    # Overload shedding at the request head (edge.py); the publisher also reads it, so
    # that a late ack while this process runs behind is not taken for a broker fault.
    shedder = LagShedder(settings.shed_lag_s) if settings.shed_lag_s > 0 else None
    publisher = publisher or Publisher(
        kafka,
        ack_timeout_s=settings.ack_timeout_s,
        max_in_flight=settings.max_in_flight,
        max_in_flight_bytes=settings.max_in_flight_bytes,
        probe_interval_s=settings.probe_interval_s,
        reset_after_s=settings.producer_reset_after_s,
        spool=spool,
        spool_budget_s=settings.spool_budget_s,
        drain_batch=settings.spool_drain_batch,
        drain_rate=settings.spool_drain_rate,
        behind=shedder.behind if shedder is not None else None,
    )
    checks = health.Health()
    # Ready while a delivery arriving now would be stored: acknowledged by Kafka, or
    # (with the spool on) fsync'd to the spool.
    checks.add_check("kafka_or_spool" if spool is not None else "kafka_producer",
                     lambda: publisher.ready)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        # Everything built so far (sources, app, clients) lives for the whole run:
        # out of the cyclic collector's full passes, which otherwise stall every
        # request in flight for ~20 ms now and then (measured at 3,000 req/s).
        gc.freeze()
        log.info("ingest started", extra={"sources": sorted(sources), "topic": kafka.raw_topic,
                                          "spool": settings.spool_dir or None})
        if not settings.spool_dir:
            log.warning("spool disabled (HOOKSTREAM_INGEST_SPOOL_DIR is empty): a delivery "
                        "Kafka does not acknowledge in time is answered 503")
        try:
            yield
        finally:
            # uvicorn has stopped accepting and drained in-flight requests by now.
            await publisher.stop(settings.shutdown_timeout_s)
            log.info("ingest stopped")

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unmatched paths (404) and wrong methods (405) answer JSON like everything else.
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail).lower(), exc.headers)

    # The public port answers /healthz (a load balancer in front checks the listener its
    # traffic goes to; it says only "ok"); readiness and metrics are on the admin app.
    public_routes = [r for r in health.routes(checks) if r.path == "/healthz"]
    rest = Starlette(
        exception_handlers={HTTPException: http_error},
        routes=public_routes,
        lifespan=lifespan,
    )
    rest.state.publisher = publisher
    admin = Starlette(exception_handlers={HTTPException: http_error},
                      routes=health.routes(checks))
    return IngestApp(WebhookHandler(sources, settings, kafka.raw_topic, publisher), rest, admin,
                     shedder)
