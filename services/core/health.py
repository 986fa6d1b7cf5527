"""Health, readiness and metrics endpoints shared by every long-running process.

``/healthz`` says the process is up; ``/readyz`` runs the named readiness checks
(producer connected, consumer assigned, database reachable...) and answers 503
with the failing ones; ``/metrics`` is the Prometheus exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ReadinessCheck = Callable[[], bool]


class Health:
    """Named readiness checks; a process is ready when every check passes."""

    def __init__(self) -> None:
        self._checks: dict[str, ReadinessCheck] = {}

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        return [name for name, check in self._checks.items() if not check()]


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def routes(health: Health) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(_: Request) -> Response:
        failing = health.failing()
        if failing:
            return _json(503, {"status": "not ready", "failing": failing})
        return _json(200, {"status": "ready"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def serve_in_background(health: Health, host: str, port: int) -> asyncio.Task[None]:
    """Run the three endpoints for a worker (consumers have no HTTP app of their own)."""
    config = uvicorn.Config(
        Starlette(routes=routes(health)), host=host, port=port,
        log_config=None, access_log=False, lifespan="off",
    )
    server = uvicorn.Server(config)
    # The worker owns signal handling; uvicorn must not replace its handlers.
    server.capture_signals = contextlib.nullcontext  # type: ignore[assignment]
    task = asyncio.create_task(server.serve(), name="health-server")
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    return task
