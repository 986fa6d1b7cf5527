"""What a request shed at ingest's head costs, against one served, in CPU per request.

Under overload every shed try comes back (Sarj.ai retries 3 times, 2 s apart), so at
twice the capacity a shed must cost well under 1/8 of a served request for every try
to be answerable (docs/reliability.md, overload). Two ingest processes are measured
in turn, each pinned to CPU 0 with wrk on CPU 1 over kept-alive connections:

  served: hookstream-ingest as configured by default (the broker healthy: 202);
  shed:   the same with HOOKSTREAM_INGEST_SHED_LAG_S=1e-7, so that its loop always
          counts as late and the shedder lets through its floor (1 %) only.

The CPU each process used (/proc/PID/stat) is divided by its requests. In the shed
run the few served requests are charged at the served run's cost, and the rest of
the CPU is divided by the 503s: the shed cost per request.

    python3 -m bench.shed [--seconds 5] [--connections 32] [--rounds 2] [--close]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import uuid

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, load

from .ingest import SOURCES, deliveries, local_env, run_wrk, server

PORT, ADMIN_PORT = 8193, 8194


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(env: dict[str, str], seconds: int, connections: int, close: bool = False
            ) -> tuple[float, int, int]:
    """(CPU seconds used, requests answered, of them not 202) for one wrk run; with
    ``close``, every request on a connection of its own (``Connection: close``)."""
    cmd = ["hookstream-ingest", "--port", str(PORT)]
    with server(cmd, PORT, env, f"http://127.0.0.1:{ADMIN_PORT}/readyz"):
        pid = int(subprocess.check_output(
            ["pgrep", "-f", f"hookstream-ingest --port {PORT}"]).split()[0])
        url = f"http://127.0.0.1:{PORT}/v1/webhooks/saaya-main"
        extra = {"Connection": "close"} if close else {}
        run_wrk(url, [(b, {**h, **extra}) for b, h in deliveries(200)], 2, connections)
        before = cpu_seconds(pid)  # after the warm-up: the shedder has settled
        rate, _p99, not_202 = run_wrk(
            url, [(b, {**h, **extra}) for b, h in deliveries(3000)], seconds, connections)
        return cpu_seconds(pid) - before, round(rate * seconds), not_202


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.shed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--rounds", type=int, default=2, help="served/shed pairs")
    parser.add_argument("--close", action="store_true",
                        help="a new connection per request (Connection: close), as senders "
                             "that do not keep connections alive")
    args = parser.parse_args(argv)

    raw_topic = f"bench.shed.{uuid.uuid4().hex[:8]}"
    asyncio.run(topics.ensure(load(KafkaSettings),
                              [topics.TopicSpec(raw_topic, 6, topics.DAY_MS, "bench")]))
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING", "HOOKSTREAM_RAW_TOPIC": raw_topic,
           "HOOKSTREAM_INGEST_ADMIN_PORT": str(ADMIN_PORT)}
    served_us, shed_us = [], []
    for n in range(args.rounds):
        cpu, requests, not_202 = measure(env, args.seconds, args.connections, args.close)
        served = cpu / requests
        cpu_s, requests_s, shed = measure({**env, "HOOKSTREAM_INGEST_SHED_LAG_S": "1e-7"},
                                          args.seconds, args.connections, args.close)
        per_shed = (cpu_s - (requests_s - shed) * served) / max(shed, 1)
        served_us.append(served * 1e6)
        shed_us.append(per_shed * 1e6)
        print(f"round {n + 1}: served {requests} ({not_202} not 202), "
              f"{served * 1e6:.0f} µs CPU each; shed run {requests_s} requests, {shed} shed, "
              f"{per_shed * 1e6:.0f} µs CPU per shed", file=sys.stderr)
    served_m, shed_m = statistics.median(served_us), statistics.median(shed_us)
    print(f"served: {served_m:.0f} µs CPU per request; shed at the head: {shed_m:.0f} µs "
          f"(shed/served {shed_m / served_m:.2f}; under 0.125 leaves room at twice the "
          "capacity with 3 retries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
