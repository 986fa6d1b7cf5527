"""Ingest with its spool off and on, the broker healthy, measured in alternation.

``bench.ingest`` measures each server once per round; on this noisy 2-core VM two
measurements a minute apart differ by up to 20 %, more than the cost looked for.
Here the two ingest processes run side by side (each pinned to CPU 0, wrk on CPU 1)
and are measured in pairs, back to back, the order flipped every pair:

  (c) hookstream-ingest, spool off;
  (d) hookstream-ingest with HOOKSTREAM_INGEST_SPOOL_DIR set (ADR 7).

It prints each run, the medians, and (d)/(c) of each pair. With the broker healthy
the spool is never written (the count of spooled deliveries is printed), so (d)/(c)
should be 1 within noise.

    python3 -m bench.spool_ab [--pairs 6] [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import uuid

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, load

from .ingest import REPO, SOURCES, deliveries, local_env, run_wrk, server, spooled_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.spool_ab",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    raw_topic = f"bench.spool-ab.{uuid.uuid4().hex[:8]}"
    kafka = load(KafkaSettings)
    asyncio.run(topics.ensure(kafka, [topics.TopicSpec(raw_topic, 6, topics.DAY_MS, "bench")]))
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING", "HOOKSTREAM_RAW_TOPIC": raw_topic}
    (REPO / ".cache").mkdir(exist_ok=True)
    spool_dir = tempfile.mkdtemp(prefix="bench-spool-", dir=REPO / ".cache")
    servers = {
        "(c) spool off": (8283, {**env, "HOOKSTREAM_INGEST_ADMIN_PORT": "8284"}),
        "(d) spool on": (8285, {**env, "HOOKSTREAM_INGEST_ADMIN_PORT": "8286",
                                "HOOKSTREAM_INGEST_SPOOL_DIR": spool_dir}),
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    with contextlib.ExitStack() as running:
        running.callback(shutil.rmtree, spool_dir, True)
        for port, server_env in servers.values():
            admin = server_env["HOOKSTREAM_INGEST_ADMIN_PORT"]
            running.enter_context(server(["hookstream-ingest", "--port", str(port)], port,
                                         server_env, f"http://127.0.0.1:{admin}/readyz"))
        for port, _ in servers.values():  # warm-up
            run_wrk(f"http://127.0.0.1:{port}/v1/webhooks/saaya-main", deliveries(200), 2,
                    args.connections)
        names = list(servers)
        for pair in range(args.pairs):
            for name in (names if pair % 2 == 0 else names[::-1]):
                port = servers[name][0]
                rate, p99, errors = run_wrk(f"http://127.0.0.1:{port}/v1/webhooks/saaya-main",
                                            deliveries(5000), args.seconds, args.connections)
                rates[name].append(rate)
                print(f"pair {pair + 1}: {name}: {rate:,.0f} req/s, p99 {p99:.1f} ms, "
                      f"non-202 {errors}", flush=True)
        spooled = spooled_count("http://127.0.0.1:8286/metrics")
    for name, measured in rates.items():
        print(f"{name}: median {statistics.median(measured):,.0f} req/s "
              f"(range {min(measured):,.0f}-{max(measured):,.0f})")
    ratios = [d / c for c, d in zip(*rates.values(), strict=True)]
    print(f"(d)/(c) per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median "
          f"{statistics.median(ratios):.2f}")
    print(f"(d) spooled {spooled} deliveries (the broker acknowledged the rest in time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
