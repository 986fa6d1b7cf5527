"""``hookstream-ingest``: run the ingest service under uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import uvicorn

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
        "bytes to Kafka; answers 202 only after the broker acknowledged (acks=all).",
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
                           settings.header_timeout_s),
        lifespan="on",
        access_log=False,
        log_config=None,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keepalive_timeout_s,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        server_header=False,
        # X-Forwarded-For is judged per source against its trusted proxies
        # (core/sources.py); uvicorn must not rewrite the peer address first.
        proxy_headers=False,
    )


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
            print(f"{name}: provider={source.provider.name} POST {path}")
        return 0

    app = build_app(sources, settings, kafka)
    config = server_config(app, settings)
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
