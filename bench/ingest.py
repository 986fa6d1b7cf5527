"""Ingest throughput and latency beside two bare baselines, load from separate processes.

Servers (each pinned to CPU 0 with taskset, the load generator to CPU 1):
  (a) bare Starlette on the same uvicorn settings, 202 without Kafka;
  (b) (a) plus one aiokafka ``send_and_wait`` (acks=all, idempotent) per request;
  (c) hookstream-ingest: source lookup, limits, Standard Webhooks HMAC check over the
      raw body, publish with metadata headers, 202 after the broker's ack;
  (d) (c) with its spool on (HOOKSTREAM_INGEST_SPOOL_DIR, ADR 7) and the broker healthy:
      the spool is only written when Kafka does not ack within the budget, so (d)
      should match (c).
Load: 2 KB signed Saaya-shaped deliveries, each distinct (its own event id, which
is the raw record's key, and its own ``webhook-id``), as real traffic is: ``wrk``
at a fixed concurrency cycling through pre-signed requests (req/s, p99), then an
open-loop generator (bench.blast, its own process on CPU 1) at fixed offered rates,
p99 counted from each request's scheduled send time (1,000 and 3,000 req/s).

    python -m bench.ingest [--seconds 10] [--connections 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, load
from hookstream.core.sources import load_sources
from hookstream.devtools.samples import fresh_copy, samples

from .blast import blast, build_request
from .common import median, rounds_note, spread, table

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "deploy" / "local" / "sources.toml"


def local_env() -> dict[str, str]:
    env = dict(os.environ)
    for line in (REPO / "deploy" / "local" / "sources.env").read_text().splitlines():
        match = re.match(r'^export\s+(\w+)="(.*)"\s*$', line)
        if match:
            env[match.group(1)] = match.group(2)
    return env


def deliveries(count: int, size: int = 2048, tag: str = "") -> list[tuple[bytes, dict[str, str]]]:
    """``count`` distinct Saaya session.ended deliveries padded to ``size`` bytes, each
    with its own event id (the raw record's key, so they spread over partitions as
    real traffic does) and its own ``webhook-id``, signed now for saaya-main."""
    sample = next(s for s in samples("saaya") if s.event == "session.ended")
    source = load_sources(SOURCES, local_env())["saaya-main"]
    tag = tag or uuid.uuid4().hex[:8]
    now = time.time()
    out = []
    for n in range(count):
        body = orjson.loads(fresh_copy(sample, f"{tag}{n:07d}").body)
        body["data"]["metadata"] = {"note": ""}
        raw = orjson.dumps(body)
        body["data"]["metadata"]["note"] = "x" * max(0, size - len(raw))
        payload = orjson.dumps(body)
        headers = {"Content-Type": "application/json",
                   **source.verifier.sign(payload, now, f"msg_{tag}{n:07d}")}
        out.append((payload, headers))
    return out


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str], ready: str) -> Iterator[None]:
    pinned = ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd
    proc = subprocess.Popen(pinned, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                url = ready if ready.startswith("http") else f"http://127.0.0.1:{port}{ready}"
                urllib.request.urlopen(url, timeout=1)
                break
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def _lua_string(text: str) -> str:
    level = "=" * 3
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def run_wrk(url: str, requests: list[tuple[bytes, dict[str, str]]], seconds: int,
            connections: int) -> tuple[float, float, int]:
    """Closed-loop load: ``wrk`` cycling through the pre-signed deliveries."""
    path = "/" + url.split("/", 3)[3]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("local reqs = {}\n")
        for body, headers in requests:
            host = url.split("/")[2]
            lua_headers = ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}"
                                    for k, v in {"Host": host, **headers}.items())
            script.write(f"reqs[#reqs + 1] = wrk.format(\"POST\", {_lua_string(path)}, "
                         f"{{{lua_headers}}}, {_lua_string(body.decode())})\n")
        script.write("""
local i = 0
request = function() i = i % #reqs + 1 return reqs[i] end
local non202 = 0
response = function(status, headers, body) if status ~= 202 then non202 = non202 + 1 end end
done = function(summary, latency, requests) io.write(string.format("non202 %d\\n", non202)) end
""")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name,
           url]
    done = subprocess.run(["taskset", "-c", "1", *cmd] if shutil.which("taskset") else cmd,
                          capture_output=True, text=True, check=True)
    os.unlink(script.name)
    if done.stderr.strip():  # a script error: wrk would go on with bare GETs
        raise RuntimeError(f"wrk: {done.stderr.strip()[:500]}")
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"non202 (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if "Non-2xx" in out:
        errors = max(errors, int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1)))  # type: ignore[union-attr]
    return rate, p99, errors


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    unit = text[len(re.match(r"[\d.]+", text).group(0)):]  # type: ignore[union-attr]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_fixed_rate(port: int, seconds: int, rate: int) -> tuple[float, float, int]:
    """Open-loop load at ``rate``/s from a separate process on CPU 1 (bench.blast over
    distinct pre-signed deliveries); p99 counted from each request's scheduled time."""
    cmd = [sys.executable, "-m", "bench.ingest", "--fixed-rate-worker", str(rate),
           "--port", str(port), "--seconds", str(seconds)]
    out = subprocess.run(["taskset", "-c", "1", *cmd] if shutil.which("taskset") else cmd,
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    result = orjson.loads(out.strip().splitlines()[-1])
    return result["achieved"], result["p99"], result["errors"]


def _fixed_rate_worker(port: int, rate: int, seconds: int) -> None:
    requests = [build_request("127.0.0.1", port, "/v1/webhooks/saaya-main", headers, body)
                for body, headers in deliveries(rate * seconds)]
    result = asyncio.run(blast("127.0.0.1", port, requests, rate, connections=64))
    lat = sorted(result.latencies_ms)
    print(orjson.dumps({"achieved": len(requests) / result.elapsed_s,
                        "p99": lat[int(len(lat) * 0.99)],
                        "errors": len(requests) - result.statuses[202]}).decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rates", default="1000,3000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=2000,
                        help="distinct signed deliveries wrk cycles through")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fixed-rate-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fixed_rate_worker:  # the open-loop generator's own process (run_fixed_rate)
        _fixed_rate_worker(args.port, args.fixed_rate_worker, args.seconds)
        return 0
    if not shutil.which("wrk"):
        print("bench.ingest: `wrk` is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    # A topic of the benchmark's own: its deliveries never reach a running pipeline.
    raw_topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    kafka = load(KafkaSettings)
    asyncio.run(topics.ensure(kafka, [topics.TopicSpec(raw_topic, 6, topics.DAY_MS, "bench")]))
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING", "HOOKSTREAM_RAW_TOPIC": raw_topic,
           "HOOKSTREAM_INGEST_ADMIN_PORT": "8184"}
    py = sys.executable
    servers = [
        ("(a) bare Starlette, 202, no Kafka", [py, "-m", "bench.servers", "bare", "--port",
                                               "8181"], 8181, None),
        ("(b) bare + send_and_wait per request", [py, "-m", "bench.servers", "kafka",
                                                  "--port", "8182"], 8182, None),
        ("(c) hookstream-ingest", ["hookstream-ingest", "--port", "8183"], 8183,
         "http://127.0.0.1:8184/readyz"),  # readiness is on ingest's admin port
        # The same with its spool on (ADR 7), the broker healthy: the spool must cost
        # nothing measurable while Kafka acknowledges within the budget.
        ("(d) hookstream-ingest, spool on", ["hookstream-ingest", "--port", "8185"], 8185,
         "http://127.0.0.1:8186/readyz"),
    ]
    spool_dir = tempfile.mkdtemp(prefix="bench-spool-", dir=REPO / ".cache")
    server_env = {8185: {"HOOKSTREAM_INGEST_ADMIN_PORT": "8186",
                         "HOOKSTREAM_INGEST_SPOOL_DIR": spool_dir}}
    # All three servers up at once (each pinned to CPU 0; an idle one costs nothing),
    # measured in turn within each round, so every round has its own baseline.
    results: dict[str, list[tuple[float, float, list[tuple[float, float, int]], int]]] = {
        label: [] for label, *_ in servers}
    with contextlib.ExitStack() as running:
        for _label, cmd, port, ready in servers:
            running.enter_context(server(cmd, port, {**env, **server_env.get(port, {})},
                                         ready or "/v1/webhooks/x"))
        running.callback(shutil.rmtree, spool_dir, True)
        for n in range(args.rounds):
            # (a) first (each round's baseline), then the others in an order rotated
            # each round, so that none is always measured last on a warming machine.
            others = servers[1:]
            shift = n % len(others)
            for label, _cmd, port, _ready in [servers[0], *others[shift:], *others[:shift]]:
                url = f"http://127.0.0.1:{port}/v1/webhooks/saaya-main"
                # Signed afresh for each run: timestamps stay inside the tolerance.
                if n == 0:
                    run_wrk(url, deliveries(200), 2, args.connections)  # warm-up
                rate, p99, errors = run_wrk(url, deliveries(args.distinct), args.seconds,
                                            args.connections)
                fixed = [run_fixed_rate(port, args.seconds, r) for r in rates]
                results[label].append((rate, p99, fixed, errors))
            print(f"  round {n + 1} of {args.rounds} measured", file=sys.stderr)
        spooled = spooled_count("http://127.0.0.1:8186/metrics")
    base = results[servers[0][0]]
    rows: list[list[str]] = []
    for label, measured in results.items():
        row = [label, spread([m[0] for m in measured]),
               "1.00" if measured is base else spread(
                   [m[0] / b[0] for m, b in zip(measured, base, strict=True)], "{:.2f}"),
               spread([m[1] for m in measured], "{:.1f}")]
        for i in range(len(rates)):
            row.append(f"{spread([m[2][i][1] for m in measured], '{:.1f}')} "
                       f"({median([m[2][i][0] for m in measured]):,.0f}/s)")
        row.append(str(sum(m[3] + sum(e for _, _, e in m[2]) for m in measured)))
        rows.append(row)
    print(table(
        f"ingest: {len(deliveries(1)[0][0])}-byte signed Saaya deliveries, each distinct; "
        f"server pinned to 1 CPU; wrk -c{args.connections} for {args.seconds}s; open-loop "
        "fixed rates (p99 from the scheduled send); "
        f"{rounds_note(args.rounds)}",
        ["server", "req/s", "ratio", "p99 ms", *[f"p99 ms @{r}/s" for r in rates], "non-202"],
        rows))
    print(f"(d) spooled {spooled} deliveries in the run (the broker acknowledged the rest "
          "within HOOKSTREAM_INGEST_SPOOL_BUDGET_S)")
    return 0


def spooled_count(metrics_url: str) -> str:
    """hookstream_ingest_spool_appended_total summed over its reasons, from /metrics."""
    try:
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    except OSError as exc:
        return f"(unknown: {exc})"
    found = re.findall(r"^hookstream_ingest_spool_appended_total\{[^}]*\} (\S+)$", text,
                       re.MULTILINE)
    return f"{sum(float(v) for v in found):,.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
