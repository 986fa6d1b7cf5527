"""What a request shed at ingest's head costs, against one served, in CPU per request.

Under overload every shed try comes back (Sarj.ai retries 3 times, 2 s apart), so at
twice the capacity a shed must cost well under 1/8 of a served request for every try
to be answerable (docs/reliability.md, overload). Two ingest processes are measured
in turn, each pinned to CPU 0 with wrk on CPU 1 over kept-alive connections:

  served: hookstream-ingest as configured by default (the broker healthy: 202);
  shed:   the same with its shedder held at 1 % admitted (``--serve-shedding``: this
          module runs hookstream-ingest's main with LagShedder replaced).

The CPU each process used (/proc/PID/stat) is divided by its requests (counted by
ingest's own metrics). In the shed run the requests let through are charged at the
served run's cost, and the rest of the CPU is divided by the requests shed.

    python3 -m bench.shed [--seconds 5] [--connections 32] [--rounds 2] [--close]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import urllib.request
import uuid

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, load

from .ingest import SOURCES, deliveries, local_env, run_wrk, server

PORT, ADMIN_PORT = 8193, 8194


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answered(admin_url: str) -> tuple[float, float]:
    """(requests served 202, requests shed at the head) so far, from ingest's metrics."""
    served = shed = 0.0
    for line in urllib.request.urlopen(f"{admin_url}/metrics", timeout=5).read().decode(
            ).splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("hookstream_ingest_requests_total{") and 'status="202"' in name:
            served += float(value)
        elif name == 'hookstream_ingest_refused_heads_total{reason="overload"}':
            shed += float(value)
    return served, shed


def serve_shedding() -> int:
    """hookstream-ingest, its shedder holding the admitted share at 1 % from the start."""
    from hookstream.ingest import edge
    from hookstream.ingest import main as ingest_main

    class Held(edge.LagShedder):  # type: ignore[misc]
        def start(self, loop: asyncio.AbstractEventLoop) -> None:
            self.admit = 0.01  # no timer: the share stays put

    ingest_main.LagShedder = Held
    return int(ingest_main.main(["--port", str(PORT)]))


def measure(env: dict[str, str], seconds: int, connections: int, close: bool = False,
            shedding: bool = False) -> tuple[float, int, int]:
    """(CPU seconds used, requests served 202, requests shed) over one wrk run, counted
    by ingest itself; with ``close``, a connection per request (``Connection: close``)."""
    cmd = ([sys.executable, "-m", "bench.shed", "--serve-shedding"] if shedding
           else ["hookstream-ingest", "--port", str(PORT)])
    admin = f"http://127.0.0.1:{ADMIN_PORT}"
    with server(cmd, PORT, env, f"{admin}/readyz"):
        pattern = "bench.shed --serve-shedding" if shedding else f"hookstream-ingest --port {PORT}"
        pid = int(subprocess.check_output(["pgrep", "-f", pattern]).split()[0])
        url = f"http://127.0.0.1:{PORT}/v1/webhooks/saaya-main"
        extra = {"Connection": "close"} if close else {}
        run_wrk(url, [(b, {**h, **extra}) for b, h in deliveries(200)], 2, connections)
        before, counted = cpu_seconds(pid), answered(admin)  # the shedder has settled
        run_wrk(url, [(b, {**h, **extra}) for b, h in deliveries(3000)], seconds, connections)
        used, now = cpu_seconds(pid) - before, answered(admin)
        return used, round(now[0] - counted[0]), round(now[1] - counted[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.shed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--rounds", type=int, default=2, help="served/shed pairs")
    parser.add_argument("--close", action="store_true",
                        help="a new connection per request (Connection: close), as senders "
                             "that do not keep connections alive")
    parser.add_argument("--serve-shedding", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_shedding:
        return serve_shedding()

    raw_topic = f"bench.shed.{uuid.uuid4().hex[:8]}"
    asyncio.run(topics.ensure(load(KafkaSettings),
                              [topics.TopicSpec(raw_topic, 6, topics.DAY_MS, "bench")]))
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING", "HOOKSTREAM_RAW_TOPIC": raw_topic,
           "HOOKSTREAM_INGEST_ADMIN_PORT": str(ADMIN_PORT)}
    served_us, shed_us = [], []
    for n in range(args.rounds):
        cpu, requests, _ = measure(env, args.seconds, args.connections, args.close)
        served = cpu / max(requests, 1)
        cpu_s, served_s, shed = measure(env, args.seconds, args.connections, args.close,
                                        shedding=True)
        per_shed = (cpu_s - served_s * served) / max(shed, 1)
        served_us.append(served * 1e6)
        shed_us.append(per_shed * 1e6)
        print(f"round {n + 1}: {requests} served, {served * 1e6:.0f} µs CPU each; shed run: "
              f"{shed} shed and {served_s} let through, {per_shed * 1e6:.0f} µs CPU per shed",
              file=sys.stderr)
    served_m, shed_m = statistics.median(served_us), statistics.median(shed_us)
    print(f"served: {served_m:.0f} µs CPU per request; shed at the head: {shed_m:.0f} µs "
          f"(shed/served {shed_m / served_m:.2f}; under 0.125 leaves room at twice the "
          "capacity with 3 retries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
