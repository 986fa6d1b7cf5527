"""The ingest spool's storage candidates, measured side by side in one run (issue 12, item 2;
docs/adr/0007-ingest-spool.md).

N concurrent producers (asyncio tasks, closed loop) each append 2 KiB records for a fixed time,
and every append waits until its record is durable (fsync'd):

  (a) segment files, each record framed as length + CRC32 + sequence number, group-committed:
      one flusher task takes every record waiting, one thread call writes the batch and
      fdatasyncs once, and the records arriving meanwhile form the next batch;
  (b) SQLite in WAL mode, synchronous=FULL, group-committed the same way: one transaction
      (executemany + COMMIT) per batch;
  (c) the baseline: the same segment files, one write + one fdatasync per record (no grouping).

Latency is from the call to append until the producer resumes with its record durable.
Ratios are against (c) at the same producer count, measured in the same run.

Then the drain side, per store: fill it with --drain-records records (untimed), read them
oldest first, verify each record (CRC for segments), treat each batch as acknowledged at once (no
broker) and remove it: segments persist an ack checkpoint (segment id, offset, CRC; one fdatasync
per batch, or per record for (c)) and unlink a segment when it is fully acknowledged; SQLite
deletes the batch's ids in one transaction. Last, the start-up recovery of a segment spool with a
torn tail (a half-written frame appended after the last good one) is timed and checked.

The temporary directory is made under --dir (default: the repository's .cache/, which is
ignored by git and on the repository's filesystem) and removed afterwards.
Nothing here imports hookstream: it measures the storage, not the service.

    python3 -m bench.spool [--producers 1,64,512] [--seconds 4] [--drain-records 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RECORD_BYTES = 2048
# Frame header: payload length, CRC32 of (sequence number || payload), sequence number.
HEADER = struct.Struct("<IIQ")
SEQ = struct.Struct("<Q")
# Ack checkpoint: segment id, offset of the first unacknowledged frame, CRC32 of both.
CHECKPOINT = struct.Struct("<QQI")
SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"

Commit = Callable[[list[bytes]], None]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(SEQ.pack(seq)))
    return HEADER.pack(len(payload), crc, seq) + payload


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class SegmentLog:
    """Append-only segment files ``<id>.seg``; a new one past ``segment_bytes``."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.seq = 0
        self.segment_id = 0
        self.size = 0
        self.syncs = 0
        self.fd = self._open(self.segment_id)

    def _open(self, segment_id: int) -> int:
        path = self.directory / f"{segment_id:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.directory)  # the new file's name is durable before any record in it
        return fd

    def write_batch(self, payloads: list[bytes]) -> None:
        """Write the batch as one contiguous write, then one fdatasync: all durable or raise."""
        if self.size >= self.segment_bytes:
            os.close(self.fd)
            self.segment_id += 1
            self.size = 0
            self.fd = self._open(self.segment_id)
        parts = []
        for payload in payloads:
            self.seq += 1
            parts.append(frame(self.seq, payload))
        data = b"".join(parts)
        write_all(self.fd, data)
        os.fdatasync(self.fd)
        self.syncs += 1
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


class SqliteLog:
    """One table, rowid order = arrival order; WAL, synchronous=FULL, one transaction per batch."""

    def __init__(self, path: Path) -> None:
        # Used by one thread at a time (the single flusher), never concurrently.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, "
                        "received_at_ms INTEGER NOT NULL, record BLOB NOT NULL)")
        self.syncs = 0

    def write_batch(self, payloads: list[bytes]) -> None:
        now = time.time_ns() // 1_000_000
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO spool (received_at_ms, record) VALUES (?, ?)",
                                [(now, p) for p in payloads])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.syncs += 1

    def close(self) -> None:
        self.db.close()


class GroupCommitter:
    """The flusher: every record waiting goes into the next batch, one thread call per batch
    (the same shape as the raw-topic publisher's per-partition flusher)."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._records: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="spool-flusher")
        self.batches = 0

    async def append(self, payload: bytes) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records.append(payload)
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._records:
                continue
            records, waiters = self._records, self._waiters
            self._records, self._waiters = [], []
            try:
                await asyncio.to_thread(self._commit, records)
            except Exception as exc:  # a disk error: every request of the batch is told
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            self.batches += 1

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class OneByOne:
    """The baseline: each append writes and syncs its own record, one at a time."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._lock = asyncio.Lock()
        self.batches = 0

    async def append(self, payload: bytes) -> None:
        async with self._lock:
            await asyncio.to_thread(self._commit, [payload])
            self.batches += 1

    async def close(self) -> None:
        return None


@dataclass
class AppendResult:
    appends: int
    seconds: float
    p50_ms: float
    p99_ms: float
    batches: int

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    @property
    def per_sync(self) -> float:
        return self.appends / max(1, self.batches)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_appends(kind: str, directory: Path, producers: int, seconds: float) -> AppendResult:
    log: SegmentLog | SqliteLog
    log = SqliteLog(directory / "spool.db") if kind == "b" else SegmentLog(directory)
    spool: GroupCommitter | OneByOne
    spool = OneByOne(log.write_batch) if kind == "c" else GroupCommitter(log.write_batch)
    latencies: list[float] = []
    payload = os.urandom(RECORD_BYTES)
    deadline = time.perf_counter() + seconds

    async def producer(n: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            record = n.to_bytes(4, "little") + i.to_bytes(4, "little") + payload[8:]
            started = time.perf_counter()
            await spool.append(record)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(producer(n) for n in range(producers)))
    elapsed = time.perf_counter() - started
    await spool.close()
    log.close()
    latencies.sort()
    return AppendResult(len(latencies), elapsed, percentile(latencies, 0.50) * 1000,
                        percentile(latencies, 0.99) * 1000, spool.batches)


# --- drain side -------------------------------------------------------------------------------

def write_checkpoint(fd: int, segment_id: int, offset: int) -> None:
    body = SEQ.pack(segment_id) + SEQ.pack(offset)
    os.pwrite(fd, CHECKPOINT.pack(segment_id, offset, zlib.crc32(body)), 0)
    os.fdatasync(fd)


def scan(data: bytes, start: int) -> tuple[list[tuple[int, int, int]], int]:
    """Every valid frame from ``start``: (seq, payload start, payload end); and the offset just
    past the last valid one. Stops at a short header, a short payload or a CRC mismatch."""
    frames = []
    off = start
    while off + HEADER.size <= len(data):
        length, crc, seq = HEADER.unpack_from(data, off)
        end = off + HEADER.size + length
        if end > len(data):
            break
        payload = memoryview(data)[off + HEADER.size:end]
        if zlib.crc32(payload, zlib.crc32(SEQ.pack(seq))) != crc:
            break
        frames.append((seq, off + HEADER.size, end))
        off = end
    return frames, off


def drain_segments(directory: Path, batch: int) -> int:
    """Oldest first; after each acknowledged batch an fdatasync'd checkpoint; a fully
    acknowledged segment is unlinked. Returns the records drained."""
    fd = os.open(directory / "ack.ckpt", os.O_RDWR | os.O_CREAT, 0o600)
    drained = 0
    try:
        for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
            segment_id = int(path.stem)
            data = path.read_bytes()
            frames, _ = scan(data, 0)
            for i in range(0, len(frames), batch):
                chunk = frames[i:i + batch]
                sink = [data[s:e] for _, s, e in chunk]  # "sent"; acknowledged at once here
                drained += len(sink)
                write_checkpoint(fd, segment_id, chunk[-1][2])
            path.unlink()
            fsync_dir(directory)
    finally:
        os.close(fd)
    return drained


def drain_sqlite(path: Path, batch: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    drained = 0
    try:
        while True:
            rows = db.execute("SELECT id, record FROM spool ORDER BY id LIMIT ?",
                              (batch,)).fetchall()
            if not rows:
                break
            drained += len(rows)  # "sent"; acknowledged at once here
            db.execute("DELETE FROM spool WHERE id <= ?", (rows[-1][0],))
    finally:
        db.close()
    return drained


def fill(kind: str, directory: Path, records: int) -> int:
    payload = os.urandom(RECORD_BYTES)
    log: SegmentLog | SqliteLog
    log = SqliteLog(directory / "spool.db") if kind == "b" else SegmentLog(directory)
    try:
        for i in range(0, records, 512):
            log.write_batch([payload] * min(512, records - i))
    finally:
        log.close()
    return records * (RECORD_BYTES + (HEADER.size if kind != "b" else 0))


@dataclass
class DrainResult:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def run_drain(kind: str, directory: Path, records: int, batch: int) -> DrainResult:
    fill(kind, directory, records)
    started = time.perf_counter()
    if kind == "b":
        drained = drain_sqlite(directory / "spool.db", batch)
    else:
        drained = drain_segments(directory, 1 if kind == "c" else batch)
    seconds = time.perf_counter() - started
    if drained != records:
        raise SystemExit(f"drain {kind}: {drained} of {records} records")
    return DrainResult(drained, seconds)


def run_recovery(directory: Path, records: int) -> str:
    """A segment spool whose last frame is torn (half written, as after SIGKILL or power loss
    mid-write): the start-up scan keeps every whole record and truncates the torn tail."""
    nbytes = fill("a", directory, records)
    last = max(directory.glob(f"*{SEGMENT_SUFFIX}"))
    torn = frame(records + 1, os.urandom(RECORD_BYTES))[: HEADER.size + RECORD_BYTES // 2]
    with last.open("ab") as f:
        f.write(torn)
    started = time.perf_counter()
    found = 0
    for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
        data = path.read_bytes()
        frames, end = scan(data, 0)
        found += len(frames)
        if end < len(data):
            os.truncate(path, end)
    ms = (time.perf_counter() - started) * 1000
    if found != records or last.stat().st_size % (HEADER.size + RECORD_BYTES):
        raise SystemExit(f"recovery: found {found} of {records} records")
    return (f"start-up recovery: {nbytes / 2**20:.0f} MiB of segments scanned and CRC-checked in "
            f"{ms:.0f} ms; a torn tail of {len(torn)} bytes truncated; {found} of {records} "
            f"records intact")


# --- output -----------------------------------------------------------------------------------

NAMES = {
    "a": "(a) segments, length+CRC32 frames, group fsync",
    "b": "(b) SQLite WAL synchronous=FULL, group commit",
    "c": "(c) segments, one fdatasync per record",
}


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def filesystem_of(path: Path) -> str:
    best = ("?", "?", "")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, mount, fstype = line.split()[:3]
            target = str(path.resolve())
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and \
                    len(mount) >= len(best[2]):
                best = (device, fstype, mount)
    return f"{best[1]} on {best[0]} (mounted at {best[2]})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.spool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--producers", default="1,64,512",
                        help="comma-separated concurrent producer counts (default 1,64,512)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="append phase per store and producer count (default 4)")
    parser.add_argument("--drain-records", type=int, default=20000,
                        help="records filled, then drained, per store (default 20000 = 40 MiB)")
    parser.add_argument("--drain-batch", type=int, default=500,
                        help="records per acknowledged drain batch for (a) and (b) (default 500)")
    parser.add_argument("--dir", type=Path,
                        default=Path(__file__).resolve().parents[1] / ".cache",
                        help="where the temporary spool directories go (default: the "
                             "repository's .cache/, on the repository's filesystem)")
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.producers.split(",") if p.strip()]
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    print(f"spool storage benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}\n"
          f"directory: {root} ({filesystem_of(root)})\n", flush=True)
    try:
        results: dict[tuple[str, int], AppendResult] = {}
        for n in counts:
            for kind in ("c", "a", "b"):  # the baseline first, then each candidate
                directory = root / f"{kind}-{n}"
                directory.mkdir()
                results[(kind, n)] = asyncio.run(run_appends(kind, directory, n, args.seconds))
                shutil.rmtree(directory)
                print(f"  {NAMES[kind]}, {n} producers: "
                      f"{results[(kind, n)].rate:,.0f} appends/s", file=sys.stderr, flush=True)
        rows = []
        for kind in ("a", "b", "c"):
            for n in counts:
                r, base = results[(kind, n)], results[("c", n)]
                rows.append([NAMES[kind], str(n), f"{r.rate:,.0f}", f"{r.rate / base.rate:.1f}",
                             f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                             f"{r.p99_ms / base.p99_ms:.2f}", f"{r.per_sync:.1f}"])
        print(table(f"append -> durable: {RECORD_BYTES}-byte records, closed-loop asyncio "
                    f"producers, {args.seconds:g} s per row; ratios against (c) at the same "
                    f"producer count, same run",
                    ["store", "producers", "appends/s", "x (c)", "p50 ms", "p99 ms",
                     "p99 x (c)", "records/sync"], rows))
        print(flush=True)
        drains: dict[str, DrainResult] = {}
        for kind in ("c", "a", "b"):
            directory = root / f"drain-{kind}"
            directory.mkdir()
            drains[kind] = run_drain(kind, directory, args.drain_records, args.drain_batch)
            shutil.rmtree(directory)
        rows = []
        for kind in ("a", "b", "c"):
            d = drains[kind]
            ack = "1 per record" if kind == "c" else f"{args.drain_batch} per batch"
            rows.append([NAMES[kind], ack, f"{d.records:,}", f"{d.seconds:.2f}",
                         f"{d.rate:,.0f}", f"{d.rate / drains['c'].rate:.1f}"])
        print(table("drain: read oldest first, verify, acknowledge at once (no broker), remove; "
                    "ratios against (c), same run",
                    ["store", "acks persisted", "records", "seconds", "records/s", "x (c)"],
                    rows))
        print(flush=True)
        directory = root / "recovery"
        directory.mkdir()
        print(run_recovery(directory, args.drain_records))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
