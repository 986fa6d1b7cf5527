"""A stand-in for the hosts providers serve recordings and transcripts from, in memory.

The fault suite's fetching sinks (recordings, transcripts) download what events link
to; the real hosts are the providers' (signed bucket URLs, API hosts), so the suite's
load points those links here instead (``devtools.samples.media_urls``):

* ``GET /recordings/{id}``: a recording (``audio/wav``) for any id, its bytes a
  function of the id alone (so every fetch of one id gets the same bytes, of a size
  that differs between ids);
* ``GET /transcripts/{id}``: a transcript for any id, a JSON object with ``turns``
  (``[{role, text}]``), the same on every fetch.

Every fetch is counted per path (``fetches``), every 200 with the size it served
(``served``). Faults: ``go_down(statuses, for_s)`` answers every fetch a status
from ``statuses``, in turns, until ``come_back()`` (or for ``for_s`` seconds);
``faulted`` counts the answers forced, per kind (``recordings``, ``transcripts``)
and status. ``slow(delay_s)`` answers every fetch that late (a fetch in flight for
a while) until ``come_back()``.

Run as a process (``python -m tests.fakes.media --port N``, as the fault suite
does), it is driven over HTTP: ``POST /_admin/faults`` (``{"mode": "down",
"statuses": [500, 502, 503], "for_s": 30}``, ``{"mode": "slow", "delay_s": 1}``,
``{"mode": "up"}``) and ``GET
/_admin/state`` (``{"mode", "fetches": {path: n}, "served": {path: bytes},
"faulted": {kind: {status: n}}}``). The admin routes and ``/healthz`` are never faulted
nor counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import Counter
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MIN_RECORDING = 2_048  # bytes; a recording is this plus up to RECORDING_SPREAD more
RECORDING_SPREAD = 30_000


def recording(subject: str) -> bytes:
    """The recording served for ``subject``: a WAV header and deterministic samples."""
    seed = hashlib.sha256(subject.encode()).digest()
    size = MIN_RECORDING + int.from_bytes(seed[:4], "big") % RECORDING_SPREAD
    data_size = size - 44
    header = (b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVEfmt "
              + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
              + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
              + (16000).to_bytes(4, "little") + (2).to_bytes(2, "little")
              + (16).to_bytes(2, "little") + b"data" + data_size.to_bytes(4, "little"))
    block = hashlib.sha256(seed).digest()
    return header + (block * (data_size // len(block) + 1))[:data_size]


def transcript(subject: str) -> bytes:
    """The transcript served for ``subject`` (a shape the transcripts sink reads turns of)."""
    return orjson.dumps({"sessionId": subject, "turns": [
        {"role": "agent", "text": f"Hello, this is the agent of {subject}."},
        {"role": "user", "text": "Hi, I am calling about my bill."},
        {"role": "agent", "text": "It is paid, thank you."}]})


class FakeMedia:
    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()  # path -> fetches
        self.served: dict[str, int] = {}  # path -> bytes of its last 200
        self.faulted: dict[str, Counter[int]] = {}  # kind -> status -> answers forced
        self._down: list[int] = []  # the statuses answered in turns while down
        self._turns = itertools.count()
        self._down_until: float | None = None  # None: until come_back()
        self.delay_s = 0.0  # every answer this late
        self.app = Starlette(routes=[
            Route("/recordings/{subject}", self._recording),
            Route("/transcripts/{subject}", self._transcript),
            Route("/_admin/faults", self._admin_faults, methods=["POST"]),
            Route("/_admin/state", self._admin_state),
            Route("/healthz", self._health),
        ])

    def go_down(self, statuses: list[int], for_s: float | None = None) -> None:
        if not statuses or any(not 100 <= s < 600 for s in statuses):
            raise ValueError(f"statuses {statuses!r}")
        self._down = list(statuses)
        self._down_until = None if for_s is None else time.monotonic() + for_s

    def slow(self, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s {delay_s!r}")
        self.delay_s = delay_s

    def come_back(self) -> None:
        self._down = []
        self._down_until = None
        self.delay_s = 0.0

    def mode(self) -> str:
        if self._down and self._down_until is not None and time.monotonic() >= self._down_until:
            self.come_back()
        return "down" if self._down else "slow" if self.delay_s else "up"

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode(), "fetches": dict(self.fetches), "served": self.served,
                "faulted": {kind: {str(k): n for k, n in sorted(counts.items())}
                            for kind, counts in sorted(self.faulted.items())}}

    async def _forced(self, path: str) -> Response | None:
        self.fetches[path] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode() == "down":
            status = self._down[next(self._turns) % len(self._down)]
            kind = path.strip("/").split("/")[0]
            self.faulted.setdefault(kind, Counter())[status] += 1
            return Response(b"media stand-in: forced failure", status,
                            media_type="text/plain")
        return None

    def _serve(self, path: str, body: bytes, media_type: str) -> Response:
        self.served[path] = len(body)
        return Response(body, media_type=media_type)

    async def _recording(self, request: Request) -> Response:
        path = request.url.path
        forced = await self._forced(path)
        if forced is not None:
            return forced
        return self._serve(path, recording(request.path_params["subject"]), "audio/wav")

    async def _transcript(self, request: Request) -> Response:
        path = request.url.path
        forced = await self._forced(path)
        if forced is not None:
            return forced
        return self._serve(path, transcript(request.path_params["subject"]),
                           "application/json")

    async def _admin_faults(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            mode = body.get("mode")
            if mode == "up":
                self.come_back()
            elif mode == "down":
                for_s = body.get("for_s")
                self.go_down([int(s) for s in body.get("statuses") or [503]],
                             None if for_s is None else float(for_s))
            elif mode == "slow":
                self.slow(float(body.get("delay_s", 1.0)))
            else:
                return _json(400, {"error": f"unknown mode {mode!r}: up, down or slow"})
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            return _json(400, {"error": f"bad request: {exc}"})
        return _json(200, {"mode": self.mode()})

    async def _admin_state(self, _: Request) -> Response:
        return _json(200, self.state())

    async def _health(self, _: Request) -> Response:
        return _json(200, {"mode": self.mode()})


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def main() -> None:
    """Serve the stand-in on loopback for the fault suite (`hookstream faults
    kill-recordings`, ...): the fetching sinks download from it, driven with
    /_admin/faults and /_admin/state."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.media",
                                     description=main.__doc__)
    parser.add_argument("--port", type=int, default=8098)
    args = parser.parse_args()
    uvicorn.run(FakeMedia().app, host="127.0.0.1", port=args.port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main()
