"""A fake of Sarj.ai's call API and of the storage its recording URLs point to, in memory.

Sarj.ai is a third-party service, so this is a stand-in like ``tests/fakes/crm.py``.
It serves:

* ``GET /calls/{call_id}``: the call detail in the shape hookstream assumes (the
  webhook's ``payload``, docs/providers.md), with a *freshly signed* ``recording_url``
  on every answer. The key is checked (``Authorization: Bearer <key>``; 401
  otherwise); an unknown call is 404.
* ``GET /storage/{call_id}.wav?X-Goog-Signature=...``: the recording, for a signature
  this API issued and that has not expired; 403 (as Google Cloud Storage answers an
  expired signed URL) for one that has (:meth:`FakeSarj.expire`), 404 for any other.

Faults: ``fail_next(n, status, retry_after)`` makes the next n API requests answer
``status`` without looking at them. ``requests`` counts API requests per call id,
``downloads`` the recording requests per call id.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import Counter, deque
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

KEY = "fake-sarj-api-key"


@dataclasses.dataclass
class Fault:
    status: int
    retry_after: str | None = None


def complete_detail(call_id: str, phone: str = "+966512345678") -> dict[str, Any]:
    """A finished call's detail: the document's ``complete`` payload for ``call_id``."""
    return {
        "type": "complete",
        "call_started": "2026-04-12T10:30:05Z",
        "call_data": {
            "call_id": call_id, "direction": "outbound", "phone_number": phone,
            "status": "completed", "total_duration": 47,
            "enhanced_transcript": {"transcript": {"messages": [
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Hi"}]}, "errors": []},
            "report": {}, "recording_url": None,
            "created_at": "2026-04-12T10:30:00Z", "started_at": "2026-04-12T10:30:05Z",
            "ended_at": "2026-04-12T10:30:52Z",
        },
    }


class FakeSarj:
    def __init__(self, port: int, key: str = KEY) -> None:
        self.port = port
        self.key = key
        self.details: dict[str, dict[str, Any]] = {}
        self.recordings: dict[str, bytes] = {}
        self.valid: dict[str, set[str]] = {}  # call id -> signatures not expired
        self.expired_at_once: set[str] = set()  # calls whose every URL is born expired
        self.requests: Counter[str] = Counter()
        self.downloads: Counter[str] = Counter()
        self.faults: deque[Fault] = deque()
        self._signatures = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/calls/{call_id}", self._call),
            Route("/storage/{name}", self._storage),
        ])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, call_id: str, detail: dict[str, Any] | None = None,
            recording: bytes | None = None) -> None:
        self.details[call_id] = detail or complete_detail(call_id)
        if recording is not None:
            self.recordings[call_id] = recording

    def sign(self, call_id: str) -> str:
        """A new signed URL of the call's recording (as the webhook would carry)."""
        signature = f"sig{next(self._signatures)}"
        signatures = self.valid.setdefault(call_id, set())
        if call_id not in self.expired_at_once:
            signatures.add(signature)
        return (f"{self.url}/storage/{call_id}.wav?X-Goog-Algorithm=GOOG4-RSA-SHA256"
                f"&X-Goog-Expires=900&X-Goog-Signature={signature}")

    def expire(self, call_id: str) -> None:
        """Every URL signed so far for the call has expired."""
        self.valid[call_id] = set()

    def fail_next(self, n: int, status: int, retry_after: str | None = None) -> None:
        self.faults.extend(Fault(status, retry_after) for _ in range(n))

    async def _call(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        self.requests[call_id] += 1
        if self.faults:
            fault = self.faults.popleft()
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return Response(b'{"error":"fault"}', fault.status, headers=headers,
                            media_type="application/json")
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return Response(b'{"error":"unauthorized"}', 401, media_type="application/json")
        if call_id not in self.details:
            return Response(b'{"error":"call not found"}', 404, media_type="application/json")
        detail = copy.deepcopy(self.details[call_id])
        call_data = detail.get("call_data")
        if isinstance(call_data, dict) and call_id in self.recordings:
            call_data["recording_url"] = self.sign(call_id)
        return Response(orjson.dumps(detail), media_type="application/json")

    async def _storage(self, request: Request) -> Response:
        call_id = request.path_params["name"].removesuffix(".wav")
        self.downloads[call_id] += 1
        signature = request.query_params.get("X-Goog-Signature", "")
        if call_id not in self.recordings:
            return Response(b"<Error><Code>NoSuchKey</Code></Error>", 404)
        if signature not in self.valid.get(call_id, set()):
            return Response(b"<Error><Code>ExpiredToken</Code><Message>Invalid argument."
                            b"</Message></Error>", 403, media_type="application/xml")
        return Response(self.recordings[call_id], media_type="audio/wav")
