"""A small open-loop HTTP/1.1 load generator for pre-built requests.

The requests (bytes: request line, headers, body) are built before the clock
starts, so the generator spends its time on sockets, not on JSON or HMACs. Each
of ``connections`` keep-alive connections sends its share of requests on a fixed
schedule (``rate`` per second in total) and records each response's status and
latency from the scheduled send time (so queueing delay counts, as it should).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class BlastResult:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # response bodies, in send order
    elapsed_s: float = 0.0


def build_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes
                  ) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


async def blast(host: str, port: int, requests: list[bytes], rate: float,
                connections: int = 64, keep_bodies: bool = False) -> BlastResult:
    result = BlastResult()
    start = time.monotonic() + 0.2
    interval = 1.0 / rate

    async def worker(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in range(index, len(requests), connections):
                due = start + n * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(requests[n])
                status, body = await _read_response(reader)
                result.latencies_ms.append((time.monotonic() - due) * 1000)
                result.statuses[status] += 1
                if keep_bodies:
                    result.bodies.append(body)
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    result.elapsed_s = time.monotonic() - start
    return result
