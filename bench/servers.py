"""The bare baselines of the ingest benchmark, served by the same uvicorn settings.

    python -m bench.servers bare  --port 8181   # Starlette, 202 without Kafka
    python -m bench.servers kafka --port 8182   # the same + one send_and_wait per request
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hookstream.core.config import KafkaSettings, load
from hookstream.core.kafka import make_producer

ACCEPTED = b'{"status":"accepted"}'


def bare_app(with_kafka: bool) -> Starlette:
    kafka = load(KafkaSettings)
    producers: list[Any] = []

    async def receive(request: Request) -> Response:
        body = await request.body()
        for producer in producers:
            await producer.send_and_wait(kafka.raw_topic, value=body)
        return Response(ACCEPTED, status_code=202, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if with_kafka:  # aiokafka clients must be built inside the running loop
            producers.append(make_producer(kafka, "bench-baseline"))
            await producers[0].start()
        yield
        for producer in producers:
            await producer.stop()

    return Starlette(routes=[Route("/v1/webhooks/{source}", receive, methods=["POST"])],
                     lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["bare", "kafka"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same server settings as hookstream-ingest (ingest/main.py).
    uvicorn.run(bare_app(args.kind == "kafka"), host="127.0.0.1", port=args.port,
                loop="uvloop", http="httptools", access_log=False, log_config=None,
                limit_concurrency=4000, timeout_keep_alive=15, server_header=False)


if __name__ == "__main__":
    main()
