"""Ingest throughput and latency beside two bare baselines, load from separate processes.

Servers (each pinned to CPU 0 with taskset, the load generator to CPU 1):
  (a) bare Starlette on the same uvicorn settings, 202 without Kafka;
  (b) (a) plus one aiokafka ``send_and_wait`` (acks=all, idempotent) per request;
  (c) hookstream-ingest: source lookup, limits, Standard Webhooks HMAC check over the
      raw body, publish with metadata headers, 202 after the broker's ack.
Load: 2 KB signed Saaya-shaped deliveries. ``wrk`` at a fixed concurrency (req/s,
p99), then ``hey`` at fixed offered rates (p99 at 1,000 and 3,000 req/s).

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
from hookstream.core.samples import samples
from hookstream.core.sources import load_sources

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


def delivery(size: int = 2048) -> tuple[bytes, dict[str, str]]:
    """A Saaya session.ended padded to ``size`` bytes, signed for saaya-main."""
    sample = next(s for s in samples("saaya") if s.event == "session.ended")
    body = orjson.loads(sample.body)
    body["data"]["metadata"] = {"note": ""}
    raw = orjson.dumps(body)
    body["data"]["metadata"]["note"] = "x" * max(0, size - len(raw))
    payload = orjson.dumps(body)
    env = local_env()
    source = load_sources(SOURCES, env)["saaya-main"]
    headers = {"Content-Type": "application/json",
               **source.verifier.sign(payload, time.time(), "msg_bench")}
    return payload, headers


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str], ready: str) -> Iterator[None]:
    pinned = ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd
    proc = subprocess.Popen(pinned, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=1)
                break
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def run_wrk(url: str, body: bytes, headers: dict[str, str], seconds: int,
            connections: int) -> tuple[float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        lua_body = body.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write('wrk.method = "POST"\n')
        script.write(f'wrk.body = "{lua_body}"\n')
        for k, v in headers.items():
            script.write(f'wrk.headers["{k}"] = "{v}"\n')
        script.write("""
local non202 = 0
response = function(status, headers, body) if status ~= 202 then non202 = non202 + 1 end end
done = function(summary, latency, requests) io.write(string.format("non202 %d\\n", non202)) end
""")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name,
           url]
    out = subprocess.run(["taskset", "-c", "1", *cmd] if shutil.which("taskset") else cmd,
                         capture_output=True, text=True, check=True).stdout
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


def run_hey(url: str, body: bytes, headers: dict[str, str], seconds: int, rate: int
            ) -> tuple[float, float, int]:
    workers = 50
    with tempfile.NamedTemporaryFile("wb", delete=False) as handle:
        handle.write(body)
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate / workers),
           "-m", "POST", "-D", handle.name]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    out = subprocess.run(["taskset", "-c", "1", *cmd] if shutil.which("taskset") else cmd,
                         capture_output=True, text=True, check=True).stdout
    achieved = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    errors = sum(int(n) for code, n in codes.items() if code != "202")
    return achieved, p99, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rates", default="1000,3000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            print(f"bench.ingest: `{tool}` is not installed (apt-get install wrk hey)",
                  file=sys.stderr)
            return 2
    rates = [int(r) for r in args.rates.split(",")]
    body, headers = delivery()
    # A topic of the benchmark's own: its deliveries never reach a running pipeline.
    raw_topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    kafka = load(KafkaSettings)
    asyncio.run(topics.ensure(kafka, [topics.TopicSpec(raw_topic, 6, topics.DAY_MS, "bench")]))
    env = {**local_env(), "HOOKSTREAM_SOURCES_FILE": str(SOURCES),
           "HOOKSTREAM_LOG_LEVEL": "WARNING", "HOOKSTREAM_RAW_TOPIC": raw_topic}
    py = sys.executable
    servers = [
        ("(a) bare Starlette, 202, no Kafka", [py, "-m", "bench.servers", "bare", "--port",
                                               "8181"], 8181, None),
        ("(b) bare + send_and_wait per request", [py, "-m", "bench.servers", "kafka",
                                                  "--port", "8182"], 8182, None),
        ("(c) hookstream-ingest", ["hookstream-ingest", "--port", "8183"], 8183, "/readyz"),
    ]
    # All three servers up at once (each pinned to CPU 0; an idle one costs nothing),
    # measured in turn within each round, so every round has its own baseline.
    results: dict[str, list[tuple[float, float, list[tuple[float, float, int]], int]]] = {
        label: [] for label, *_ in servers}
    with contextlib.ExitStack() as running:
        for _label, cmd, port, ready in servers:
            running.enter_context(server(cmd, port, env, ready or "/v1/webhooks/x"))
        for n in range(args.rounds):
            for label, _cmd, port, _ready in servers:
                url = f"http://127.0.0.1:{port}/v1/webhooks/saaya-main"
                if n == 0:
                    run_wrk(url, body, headers, 2, args.connections)  # warm-up
                rate, p99, errors = run_wrk(url, body, headers, args.seconds, args.connections)
                fixed = [run_hey(url, body, headers, args.seconds, r) for r in rates]
                results[label].append((rate, p99, fixed, errors))
            print(f"  round {n + 1} of {args.rounds} measured", file=sys.stderr)
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
        f"ingest: {len(body)}-byte signed Saaya deliveries; server pinned to 1 CPU; "
        f"wrk -c{args.connections} for {args.seconds}s; hey at fixed rates; "
        f"{rounds_note(args.rounds)}",
        ["server", "req/s", "ratio", "p99 ms", *[f"p99 ms @{r}/s" for r in rates], "non-202"],
        rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
