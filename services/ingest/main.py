"""``hookstream-ingest``: run the ingest service under uvicorn (uvloop + httptools).

Two listeners in one event loop: the public one (webhooks, and ``/healthz`` for a load
balancer) with hookstream's head limits (``edge.py``), and the admin one
(``/healthz``, ``/readyz``, ``/metrics``; loopback unless configured otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from typing import Any

import uvicorn
import uvloop

from ..core import logs
from ..core.config import ConfigError, KafkaSettings, LogSettings, help_epilog, load
from ..core.sources import load_sources
from .app import build_app
from .edge import edge_protocol
from .settings import IngestSettings

log = logging.getLogger("hookstream.ingest")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hookstream-ingest",
        description="Receive provider webhooks, authenticate them and publish the raw "
        "bytes to Kafka; answers 202 only after the broker acknowledged (acks=all) or, "
        "with HOOKSTREAM_INGEST_SPOOL_DIR set, after the delivery was fsync'd to the local "
        "spool (drained to Kafka once the broker is back).",
        epilog=help_epilog(IngestSettings, KafkaSettings, LogSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="listen address (overrides HOOKSTREAM_INGEST_HOST)")
    parser.add_argument("--port", type=int, help="listen port (overrides HOOKSTREAM_INGEST_PORT)")
    parser.add_argument("--sources", help="sources file (overrides HOOKSTREAM_SOURCES_FILE)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the sources file and environment, then exit")
    return parser.parse_args(argv)


def server_config(app: Any, settings: IngestSettings) -> uvicorn.Config:
    """uvicorn's configuration of the public webhook listener."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with a cap on head bytes and header lines and a head deadline.
        http=edge_protocol(settings.max_header_bytes, settings.max_headers,
                           settings.header_timeout_s, settings.retry_after_s,
                           getattr(app, "shedder", None)),
        lifespan="on",
        access_log=False,
        log_config=None,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        timeout_keep_alive=settings.keepalive_timeout_s,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        server_header=False,
        # X-Forwarded-For is judged per source against its trusted proxies
        # (core/sources.py); uvicorn must not rewrite the peer address first.
        proxy_headers=False,
    )


def admin_config(app: Any, settings: IngestSettings) -> uvicorn.Config:
    """uvicorn's configuration of the admin listener (``app.admin``: health, metrics)."""
    return uvicorn.Config(
        app.admin,
        host=settings.admin_host,
        port=settings.admin_port,
        http=edge_protocol(settings.max_header_bytes, settings.max_headers,
                           settings.header_timeout_s),
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )


async def _watch_accept_queue(server: uvicorn.Server, config: uvicorn.Config) -> None:
    """Once listening, hand the listening sockets to the shedder, which reports their
    accept queues (``hookstream_ingest_accept_queue``)."""
    shedder = getattr(config.http, "shedder", None)
    if shedder is None:
        return
    while not server.started:
        await asyncio.sleep(0.05)
    shedder.listeners = [sock for listener in server.servers for sock in listener.sockets]


def listening_sockets(settings: IngestSettings) -> list[socket.socket]:
    """``settings.listeners`` sockets bound to the webhook port with SO_REUSEPORT.

    libuv (under uvloop) accepts one connection per listening socket per loop pass
    (libuv/libuv#3696). Under overload a pass takes a while, and new connections wait
    in the kernel's accept queue past the provider's timeout. With several sockets
    the kernel spreads new connections over them and a pass accepts up to one each:
    more than one, and still bounded (accepting everything at once, as the standard
    library's loop does, stalled the loop for seconds: ADR 8)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    count = max(1, settings.listeners)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((settings.host, settings.port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(app: Any, settings: IngestSettings) -> None:
    """Run the admin listener, then the public one until it stops (SIGTERM: drained)."""
    admin = uvicorn.Server(admin_config(app, settings))
    # The public server owns SIGTERM and SIGINT; the admin one stops when it does.
    admin.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    admin_task = asyncio.create_task(admin.serve(), name="ingest-admin")
    while not admin.started:
        if admin_task.done():  # could not listen: uvicorn logged why
            admin_task.result()
            raise RuntimeError("the admin listener stopped during start-up")
        await asyncio.sleep(0.01)
    try:
        config = server_config(app, settings)
        server = uvicorn.Server(config)
        watching = asyncio.create_task(_watch_accept_queue(server, config))
        try:
            await server.serve(sockets=listening_sockets(settings))
        finally:
            watching.cancel()
    finally:
        admin.should_exit = True
        await admin_task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in
                 (("host", args.host), ("port", args.port), ("sources_file", args.sources))
                 if v is not None}
    try:
        settings = load(IngestSettings, **overrides)
        kafka = load(KafkaSettings)
        log_settings = load(LogSettings)
        logs.configure("ingest", log_settings)
        sources = load_sources(settings.sources_file)
    except ConfigError as exc:
        print(f"hookstream-ingest: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        for name, source in sorted(sources.items()):
            path = f"/v1/webhooks/{name}" + ("/<path secret>" if source.path_secrets else "")
            # Where the routing key goes, so the URL given to the provider is complete.
            if source.routing_key_from == "path":
                path += "/<routing key>"
            elif source.routing_key_from == "query":
                path += f"?{source.routing_key_param}=<routing key>"
            elif source.routing_key_from == "fixed":
                path += f"  (routing key {source.routing_key_value})"
            elif source.routing_key_header:
                path += f"  (routing key in {source.routing_key_header})"
            print(f"{name}: provider={source.provider.name} POST {path}")
        return 0

    app = build_app(sources, settings, kafka)
    log.info("listening", extra={"host": settings.host, "port": settings.port,
                                 "admin_host": settings.admin_host,
                                 "admin_port": settings.admin_port})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
