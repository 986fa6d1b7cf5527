"""End to end: ingest, normalizer and warehouse sink as real processes under a steady
generated load; sustained rate, receive -> warehouse-row latency, and peak memory.

Latency is measured inside PostgreSQL per row: ``written_at`` (the row's insert
time) minus ``received_at`` (ingest's receive time, carried by the event).
Peak RSS is each process's ``VmHWM`` from /proc at the end of the run.

    python -m bench.e2e [--rate 1000] [--seconds 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from hookstream.cli import signed_request
from hookstream.core import logs, topics
from hookstream.core.config import KafkaSettings, LogSettings, PostgresSettings, load
from hookstream.core.sources import load_sources
from hookstream.devtools.loadgen import deliveries

from .blast import blast, build_request
from .common import rounds_note, spread, table
from .ingest import SOURCES, local_env

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited") from None
            time.sleep(0.1)
    raise RuntimeError(f"{name} not ready")


async def bench(rate: float, seconds: float, rounds: int = 3) -> str:
    run_id = uuid.uuid4().hex[:8]
    kafka = load(KafkaSettings)
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING",
           "HOOKSTREAM_RAW_TOPIC": f"bench.e2e.raw.{run_id}",
           "HOOKSTREAM_EVENTS_TOPIC": f"bench.e2e.events.{run_id}",
           "HOOKSTREAM_DLQ_TOPIC": f"bench.e2e.dlq.{run_id}",
           "HOOKSTREAM_SINK_TOPIC_PREFIX": f"bench.e2e.sink.{run_id}",
           "HOOKSTREAM_NORMALIZER_GROUP": f"bench-normalizer-{run_id}",
           "HOOKSTREAM_DEDUPE_TABLE": f"bench_dedupe_{run_id}",
           "HOOKSTREAM_WAREHOUSE_SCHEMA": f"bench_e2e_{run_id}",
           "HOOKSTREAM_INGEST_PORT": "8281", "HOOKSTREAM_INGEST_ADMIN_PORT": "8284",
           "HOOKSTREAM_NORMALIZER_HTTP_PORT": "8282",
           "HOOKSTREAM_SINK_HTTP_PORT": "8283"}
    for key in ("RAW_TOPIC", "EVENTS_TOPIC", "DLQ_TOPIC"):
        os.environ[f"HOOKSTREAM_{key}"] = env[f"HOOKSTREAM_{key}"]
    kafka = load(KafkaSettings)
    await topics.ensure(kafka, topics.plan(kafka, partitions=6))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd, port in (
            ("ingest", ["hookstream-ingest"], 8284),  # its admin port (/readyz)
            ("normalizer", ["hookstream-normalizer"], 8282),
            ("sink-warehouse", ["hookstream-sink-warehouse"], 8283),
        ):
            procs[name] = subprocess.Popen(  # noqa: ASYNC220 (start-up, not the hot path)
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}/readyz",
                                    procs[name], name)
        sources = {s.provider.name: s for s in load_sources(SOURCES, env).values()
                   if s.name in ("saaya-main", "sawt-main", "sarj-main")}
        pool = await asyncpg.create_pool(load(PostgresSettings).dsn, min_size=1, max_size=2)
        schema = env["HOOKSTREAM_WAREHOUSE_SCHEMA"]
        measured: list[dict[str, float]] = []
        memory: list[dict[str, float]] = []  # peak RSS so far, after each round
        try:
            total_rows = 0
            for _ in range(rounds):
                measured.append(await _one_round(pool, schema, sources, rate, seconds,
                                                 total_rows))
                total_rows += int(measured[-1]["rows"])
                memory.append({name: peak_rss_mib(p.pid) for name, p in procs.items()})
        finally:
            await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await pool.execute(f"DROP TABLE IF EXISTS {env['HOOKSTREAM_DEDUPE_TABLE']}")
            await pool.close()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(60)

    def col(key: str, fmt: str = "{:,.0f}") -> str:
        return spread([m[key] for m in measured], fmt)

    e2e = table(
        f"end to end: generated mixed-provider load offered at {rate:g}/s for {seconds:g} s "
        "(ingest -> Kafka -> normalizer -> Kafka -> warehouse sink -> PostgreSQL); "
        f"{rounds_note(rounds, ratios=False)}",
        ["measure", "value"],
        [["offered / achieved request rate", f"{rate:g}/s / {col('achieved')}/s"],
         ["acknowledged (202) / other (all rounds)",
          f"{sum(int(m['accepted']) for m in measured)} / "
          f"{sum(int(m['other']) for m in measured)}"],
         ["warehouse rows (all rounds)", f"{sum(int(m['rows']) for m in measured)} of "
                                         f"{sum(int(m['accepted']) for m in measured)}"],
         ["sustained rate into the warehouse", f"{col('sustained')} rows/s"],
         ["receive -> warehouse row p50 ms", col("p50")],
         ["receive -> warehouse row p99 ms", col("p99")],
         ["receive -> warehouse row max ms", col("max")],
         ["ingest ack latency p50 / p99 ms (from scheduled send)",
          f"{col('ack_p50', '{:.1f}')} / {col('ack_p99', '{:.1f}')}"]])
    # Bounded queues: the peak is reached in the first round and does not grow after.
    mem = table("memory: peak RSS (VmHWM, MiB) of each process so far, after each round",
                ["process", *[f"after round {n + 1}" for n in range(rounds)]],
                [[name, *[f"{m[name]:.0f}" for m in memory]] for name in memory[0]])
    return e2e + "\n\n" + mem


async def _one_round(pool: asyncpg.Pool, schema: str, sources: dict[str, Any], rate: float,
                     seconds: float, rows_before: int) -> dict[str, float]:
    """Offer ``rate`` requests/s for ``seconds``; wait until every acknowledged delivery
    is a warehouse row; latency figures over this round's rows only."""
    # Build every request first (fresh ids, signed), so the generator only does I/O.
    count = int(rate * seconds)
    requests = []
    now = time.time()
    for delivery in itertools.islice(deliveries(0.0, 0.0), count):
        source = sources[delivery.sample.provider]
        path, headers = signed_request(source, delivery.sample, now, f"m{uuid.uuid4().hex}")
        requests.append(build_request("127.0.0.1", 8281, path, headers, delivery.sample.body))
    started = await pool.fetchval("SELECT now()")
    result = await blast("127.0.0.1", 8281, requests, rate, connections=64)
    accepted = result.statuses[202]
    deadline = time.monotonic() + 120
    rows = 0
    while time.monotonic() < deadline:
        try:
            rows = int(await pool.fetchval(f"SELECT count(*) FROM {schema}.events")) - rows_before
        except asyncpg.UndefinedTableError:
            rows = 0
        if rows >= accepted:
            break
        await asyncio.sleep(0.5)
    q = await pool.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99, max(d) AS worst,"
        " extract(epoch FROM max(written_at) - min(received_at)) AS span"
        f" FROM (SELECT written_at, received_at, extract(epoch FROM written_at -"
        f" received_at) * 1000 AS d FROM {schema}.events WHERE received_at >= $1) t", started)
    lat = sorted(result.latencies_ms) or [0.0]
    return {"achieved": len(requests) / result.elapsed_s, "accepted": accepted,
            "other": len(requests) - accepted, "rows": rows,
            "sustained": rows / float(q["span"] or 1), "p50": q["p50"] or 0.0,
            "p99": q["p99"] or 0.0, "max": q["worst"] or 0.0,
            "ack_p50": lat[len(lat) // 2], "ack_p99": lat[int(len(lat) * 0.99)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    print(asyncio.run(bench(args.rate, args.seconds, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
