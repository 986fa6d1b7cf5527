"""The ingest ASGI app: authenticate, publish the raw bytes, answer 202.

Per request it does the least it can: look up the source, check the content
type and size, read the body under a deadline, authenticate over the raw bytes,
and publish. It never parses JSON beyond the cheap natural-key lookup; a
malformed body from an authenticated source is accepted and left for the
normalizer to dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import health
from ..core.config import KafkaSettings
from ..core.record import RawDelivery
from ..core.sources import Source
from . import metrics
from .publisher import NotStored, Publisher
from .settings import IngestSettings

log = logging.getLogger(__name__)

MAX_HEADER_VALUE_CHARS = 256  # routing key / event id headers copied onto the record


class BodyTooLarge(Exception):
    pass


def _error(status: int, error: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; stop reading (not buffer) as soon as it is exceeded."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _copied_header(request: Request, name: str | None) -> str | None:
    if name is None:
        return None
    value = request.headers.get(name)
    if value is None or not value.isascii():
        return None
    return value[:MAX_HEADER_VALUE_CHARS]


def build_app(
    sources: Mapping[str, Source],
    settings: IngestSettings,
    kafka: KafkaSettings,
    publisher: Publisher | None = None,
) -> Starlette:
    publisher = publisher or Publisher(
        kafka,
        ack_timeout_s=settings.ack_timeout_s,
        max_in_flight=settings.max_in_flight,
        max_in_flight_bytes=settings.max_in_flight_bytes,
        linger_ms=settings.linger_ms,
        probe_interval_s=settings.probe_interval_s,
    )
    topic = kafka.raw_topic
    retry_after = {"Retry-After": str(settings.retry_after_s)}
    body_timeout_s = settings.body_timeout_s

    # Label children looked up once per (source, status), not per request.
    requests_total = functools.cache(lambda source, status: metrics.REQUESTS.labels(
        source, str(status)))
    ack_latency = functools.cache(lambda source: metrics.ACK_LATENCY.labels(source))
    received_bytes = functools.cache(lambda source: metrics.RECEIVED_BYTES.labels(source))

    def answer(source: str, status: int, error: str, headers: Mapping[str, str] | None = None
               ) -> Response:
        requests_total(source, status).inc()
        return _error(status, error, headers)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["source"]
        source = sources.get(name)
        if source is None:
            return answer("unknown", 404, "unknown source")
        content_type = request.headers.get("content-type")
        if not source.content_type_ok(content_type):
            return answer(name, 415, "unsupported content type")

        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return answer(name, 400, "invalid content-length")
            if int(declared) > source.max_body_bytes:
                return answer(name, 413, "body too large")

        # Cheap checks first: a wrong path secret or address never gets its body read.
        client = request.client.host if request.client else None
        path_secret = request.path_params.get("path_secret")
        # Proxies may add their own X-Forwarded-For line: every line counts, in order.
        forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
        if not (source.path_secret_ok(path_secret) & source.network_ok(client, forwarded)):
            return answer(name, 401, "unauthorized")

        try:
            async with asyncio.timeout(body_timeout_s):
                body = await _read_body(request, source.max_body_bytes)
        except BodyTooLarge:
            return answer(name, 413, "body too large")
        except TimeoutError:
            return answer(name, 408, "body not received in time")
        except ClientDisconnect:
            return answer(name, 400, "client disconnected")

        if not source.verifier.verify(request.headers, body, time.time()):
            return answer(name, 401, "unauthorized")

        delivery = RawDelivery(
            source=name,
            provider=source.provider.name,
            received_at_ms=time.time_ns() // 1_000_000,
            request_id=uuid.uuid4().hex,
            body=body,
            content_type=content_type,
            routing_key=_copied_header(request, source.routing_key_header),
            event_id=_copied_header(request, source.event_id_header),
        )
        try:
            await publisher.publish(
                topic, body, source.provider.natural_key(body), delivery.headers()
            )
        except NotStored as exc:
            metrics.PRODUCE_FAILURES.labels(name, exc.reason).inc()
            log.warning("delivery not stored; answered 503",
                        extra={"source": name, "reason": exc.reason})
            return answer(name, 503, "not stored, retry later", retry_after)

        ack_latency(name).observe(time.perf_counter() - started)
        received_bytes(name).inc(len(body))
        requests_total(name, 202).inc()
        return Response(
            orjson.dumps({"status": "accepted", "receipt": delivery.request_id}),
            status_code=202,
            media_type="application/json",
        )

    checks = health.Health()
    checks.add_check("kafka_producer", lambda: publisher.ready)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        log.info("ingest started", extra={"sources": sorted(sources), "topic": topic})
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

    app = Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/v1/webhooks/{source}", receive, methods=["POST"]),
            Route("/v1/webhooks/{source}/{path_secret}", receive, methods=["POST"]),
            *health.routes(checks),
        ],
        lifespan=lifespan,
    )
    app.state.publisher = publisher
    return app
