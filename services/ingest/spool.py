"""The local spool: deliveries Kafka did not acknowledge in time, on this replica's disk
(docs/adr/0007-ingest-spool.md).

A delivery is appended here only when the broker has not acknowledged it within the spool
budget, or no producer is connected; the healthy path never touches the disk. An append
returns once its record is fdatasync'd: one writer task group-commits every record
waiting (one ``write`` of the joined frames and one ``fdatasync`` per batch, in a worker
thread), so 202 can mean "on disk" at thousands of deliveries per second.

On disk: ``<dir>/<20-digit id>.seg`` append-only segment files of frames
``magic u32 | length u32 | crc32 u32 | seq u64 | payload`` (little-endian; the CRC covers
``seq || payload``), and ``<dir>/ack.ckpt``: the position (segment id, offset) of the first
frame Kafka has not acknowledged, with its CRC. A new segment is started at start-up, past
``segment_bytes``, and after a write error; a segment is unlinked once every frame in it
was acknowledged and it is not the one being written.

The drainer (:meth:`Spool.drain_forever`) reads frames oldest first from the checkpoint,
hands a batch to the publisher, and moves the checkpoint (fdatasync'd) only after every
record of the batch was acknowledged: a crash re-sends at most one batch, and the
normalizer's dedupe absorbs the copies.

Start-up (:meth:`Spool.open`, before readiness) takes an exclusive ``flock`` on
``<dir>/spool.lock`` (two processes on one spool would corrupt it), reads the checkpoint,
and scans every frame after it. A bad frame in the newest segment is a torn tail: bytes
never fdatasync'd, so never answered 202; it is cut off. A bad frame anywhere else is
corruption: the segment is copied to ``corrupt/``, counted, and cut at the bad frame, so
that the frames before it still drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import metrics

log = logging.getLogger(__name__)

MAGIC = 0x48535031  # "HSP1": tells a frame from zeros, and lets a salvage tool resync
FRAME = struct.Struct("<IIIQ")  # magic, payload length, crc32(seq || payload), seq
SEQ = struct.Struct("<Q")
CHECKPOINT = struct.Struct("<QQI")  # segment id, offset, crc32 of both
PAYLOAD_HEAD = struct.Struct("<BQH")  # version, received_at_ms, topic length
KEY_LEN = struct.Struct("<i")  # -1: no key
HEADER_COUNT = struct.Struct("<H")
HEADER_LENS = struct.Struct("<HI")  # name length, value length
VERSION = 1
MAX_PAYLOAD = 256 * 1024 * 1024  # a length past this is a bad frame, not a 4 GiB read
SUFFIX = ".seg"
CHECKPOINT_FILE = "ack.ckpt"
LOCK_FILE = "spool.lock"
CORRUPT_DIR = "corrupt"
READ_BUFFER = 1024 * 1024
DRAIN_READ_BYTES = 8 * 1024 * 1024  # a drain batch stops early past this many bytes

Headers = list[tuple[str, bytes]]
Position = tuple[int, int]  # segment id, byte offset


class SpoolRefused(Exception):
    """Not spooled; ``reason`` is the 503's metric label: spool_full or spool_error."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class SpoolLocked(RuntimeError):
    """Another process holds the spool directory."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    received_at_ms: int


def encode(record: SpooledRecord) -> bytes:
    topic = record.topic.encode()
    parts = [PAYLOAD_HEAD.pack(VERSION, record.received_at_ms, len(topic)), topic]
    if record.key is None:
        parts.append(KEY_LEN.pack(-1))
    else:
        parts += [KEY_LEN.pack(len(record.key)), record.key]
    parts.append(HEADER_COUNT.pack(len(record.headers)))
    for name, value in record.headers:
        raw_name = name.encode()
        parts += [HEADER_LENS.pack(len(raw_name), len(value)), raw_name, value]
    parts.append(record.value)
    return b"".join(parts)


def decode(payload: bytes) -> SpooledRecord:
    """The record of a frame whose CRC matched; a malformed payload raises ValueError."""
    view = memoryview(payload)
    try:
        version, received_at_ms, topic_len = PAYLOAD_HEAD.unpack_from(view, 0)
        if version != VERSION:
            raise ValueError(f"unknown spool record version {version}")
        pos = PAYLOAD_HEAD.size
        topic = bytes(view[pos:pos + topic_len]).decode()
        pos += topic_len
        (key_len,) = KEY_LEN.unpack_from(view, pos)
        pos += KEY_LEN.size
        key = None
        if key_len >= 0:
            key = bytes(view[pos:pos + key_len])
            pos += key_len
        (count,) = HEADER_COUNT.unpack_from(view, pos)
        pos += HEADER_COUNT.size
        headers: Headers = []
        for _ in range(count):
            name_len, value_len = HEADER_LENS.unpack_from(view, pos)
            pos += HEADER_LENS.size
            name = bytes(view[pos:pos + name_len]).decode()
            pos += name_len
            headers.append((name, bytes(view[pos:pos + value_len])))
            pos += value_len
        if pos > len(view):
            raise ValueError("spool record shorter than its fields")
        return SpooledRecord(topic, key, bytes(view[pos:]), headers, received_at_ms)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed spool record: {exc}") from None


def frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(SEQ.pack(seq)))
    return FRAME.pack(MAGIC, len(payload), crc, seq) + payload


@dataclass(slots=True)
class _Scan:
    """Where reading frames stopped: ``end`` is the offset after the last good frame;
    ``bad`` says a bad or incomplete frame starts there (rather than the data ending)."""

    end: int
    bad: bool = False


def read_frames(file: BinaryIO, start: int, end: int, scan: _Scan
                ) -> Iterator[tuple[int, int, bytes]]:
    """Good frames of ``file`` from ``start`` up to ``end``: (offset after it, seq, payload).
    Stops at the first bad frame, recording where in ``scan``."""
    file.seek(start)
    pos = scan.end = start
    while pos < end:
        head = file.read(FRAME.size)
        if len(head) < FRAME.size:
            scan.bad = True
            return
        magic, length, crc, seq = FRAME.unpack(head)
        if magic != MAGIC or length > MAX_PAYLOAD or pos + FRAME.size + length > end:
            scan.bad = True
            return
        payload = file.read(length)
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(SEQ.pack(seq))) != crc:
            scan.bad = True
            return
        pos = scan.end = pos + FRAME.size + length
        yield pos, seq, payload


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass(slots=True)
class _Pending:
    payload: bytes
    received_at_ms: int
    waiter: asyncio.Future[None]


class Spool:
    """One replica's spool directory. Open it with :meth:`open`; all methods run on the
    event loop, file I/O in worker threads."""

    def __init__(self, directory: str | Path, *, max_bytes: int, max_age_s: float,
                 min_free_bytes: int, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.min_free_bytes = min_free_bytes
        self.segment_bytes = segment_bytes
        self.records = 0  # appended and not yet acknowledged by Kafka
        self.bytes = 0  # segment files on disk
        self.healthy = True  # False from a failed write or sync until a later batch syncs
        self._segments: dict[int, int] = {}  # id -> bytes committed (fdatasync'd), oldest first
        self._active: int | None = None  # the segment being written; None: open one first
        self._fd: int | None = None
        self._next_id = 0
        self._seq = 0
        self._ack: Position = (0, 0)  # first unacknowledged frame
        self._oldest_ms: int | None = None  # received_at of the frame at _ack
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._appended = asyncio.Event()  # wakes the drainer
        self._io = asyncio.Lock()  # the writer's batch vs the drainer's segment roll
        self._writer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._free_checked = 0.0
        self._free_bytes = 0

    # -- start-up -----------------------------------------------------------------------

    async def open(self) -> None:
        """Lock the directory, recover what is there (truncating a torn tail), and start
        the writer. Raises :class:`SpoolLocked` if another process holds it."""
        await asyncio.to_thread(self._recover)
        self._writer = asyncio.create_task(self._write_forever(), name="spool-writer")
        metrics.SPOOL_MAX_BYTES.set(self.max_bytes)
        metrics.SPOOL_OLDEST_AGE.set_function(self.oldest_age_s)
        self._publish_gauges()
        log.info("spool opened", extra={"dir": str(self.directory), "records": self.records,
                                        "bytes": self.bytes})

    def _recover(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolLocked(f"{self.directory} is in use by another process") from None
        ids = sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())
        start = self._read_checkpoint()
        if start is None or start[0] not in ids:
            # No usable checkpoint: from the oldest segment there is (duplicates at worst),
            # or past the checkpoint's segment if that one was already removed.
            later = [i for i in ids if start is None or i > start[0]]
            start = (later[0], 0) if later else (ids[-1] + 1 if ids else 0, 0)
        for old in [i for i in ids if i < start[0]]:  # acknowledged, unlink was interrupted
            self._path(old).unlink()
        ids = [i for i in ids if i >= start[0]]
        self._ack = start
        for segment_id in ids:
            offset = start[1] if segment_id == start[0] else 0
            self._segments[segment_id] = self._scan_segment(segment_id, offset,
                                                            newest=segment_id == ids[-1])
        self._next_id = (ids[-1] + 1) if ids else start[0]
        self.bytes = sum(self._segments.values())
        _fsync_dir(self.directory)

    def _scan_segment(self, segment_id: int, offset: int, *, newest: bool) -> int:
        """Count the frames from ``offset``; cut the segment at a bad frame. Its new size."""
        path = self._path(segment_id)
        size = path.stat().st_size
        if offset > size:  # a checkpoint past the data: start the segment over
            offset = 0
            self._ack = (segment_id, 0)
        with path.open("rb", buffering=READ_BUFFER) as file:
            scan = _Scan(offset)
            if offset and next(read_frames(file, offset, size, scan), None) is None and scan.bad:
                # The checkpoint is not at a frame: trust the segment, not the checkpoint,
                # and drain it whole (duplicates at worst).
                log.warning("spool: checkpoint not at a frame; draining its segment whole",
                            extra={"segment": path.name, "offset": offset})
                offset = 0
                self._ack = (segment_id, 0)
            scan = _Scan(offset)
            for _, seq, payload in read_frames(file, offset, size, scan):
                self.records += 1
                self._seq = max(self._seq, seq)
                if self._oldest_ms is None:
                    self._oldest_ms = PAYLOAD_HEAD.unpack_from(payload)[1]
        if scan.bad:
            if newest:
                log.warning("spool: torn tail cut off (never synced, never answered 202)",
                            extra={"segment": path.name, "at": scan.end,
                                   "bytes": size - scan.end})
            else:
                corrupt = self.directory / CORRUPT_DIR
                corrupt.mkdir(exist_ok=True)
                shutil.copy2(path, corrupt / path.name)
                metrics.SPOOL_ERRORS.labels("corrupt").inc()
                log.error("spool: corrupt segment copied to corrupt/; the frames before the "
                          "bad one drain", extra={"segment": path.name, "at": scan.end,
                                                  "bytes_after": size - scan.end})
            with path.open("r+b") as file:
                file.truncate(scan.end)
                os.fdatasync(file.fileno())
            return scan.end
        return size

    def _read_checkpoint(self) -> Position | None:
        try:
            data = (self.directory / CHECKPOINT_FILE).read_bytes()[:CHECKPOINT.size]
        except FileNotFoundError:
            return None
        if len(data) < CHECKPOINT.size:
            return None
        segment_id, offset, crc = CHECKPOINT.unpack(data)
        if zlib.crc32(data[:16]) != crc:
            log.warning("spool: checkpoint unreadable; draining from the oldest segment")
            return None
        return segment_id, offset

    def _path(self, segment_id: int) -> Path:
        return self.directory / f"{segment_id:020d}{SUFFIX}"

    # -- append ---------------------------------------------------------------------------

    def oldest_age_s(self) -> float:
        oldest = self._oldest_ms
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)

    def refusal(self, size: int = 0) -> str | None:
        """Why a record of ``size`` bytes would not be spooled now, or None."""
        if self.bytes + self._queued_bytes + size > self.max_bytes or self.bytes >= self.max_bytes:
            return "full: HOOKSTREAM_INGEST_SPOOL_MAX_BYTES reached"
        if self.oldest_age_s() > self.max_age_s:
            return "full: oldest record past HOOKSTREAM_INGEST_SPOOL_MAX_AGE_S"
        now = time.monotonic()
        if now - self._free_checked > 1.0:  # one statvfs a second at most
            self._free_checked = now
            try:
                stat = os.statvfs(self.directory)
                self._free_bytes = stat.f_bavail * stat.f_frsize
            except OSError:
                self._free_bytes = 0
        if self._free_bytes - self._queued_bytes - size < self.min_free_bytes:
            return "full: less than HOOKSTREAM_INGEST_SPOOL_MIN_FREE_BYTES free"
        return None

    @property
    def accepting(self) -> bool:
        return self._writer is not None and self.healthy and self.refusal() is None

    async def append(self, records: list[SpooledRecord], reason: str) -> None:
        """Return once every record is fdatasync'd; else raise :class:`SpoolRefused`."""
        if self._writer is None:
            raise SpoolRefused("spool_error", "spool not open")
        size = sum(len(r.value) for r in records)
        refused = self.refusal(size)
        if refused is not None:
            raise SpoolRefused("spool_full", refused)
        loop = asyncio.get_running_loop()
        waiters = []
        for record in records:
            payload = encode(record)
            waiter: asyncio.Future[None] = loop.create_future()
            self._queue.append(_Pending(payload, record.received_at_ms, waiter))
            self._queued_bytes += len(payload) + FRAME.size
            waiters.append(waiter)
        self._wake.set()
        try:
            await asyncio.gather(*waiters)
        except OSError as exc:
            raise SpoolRefused("spool_error", repr(exc)) from None
        metrics.SPOOL_APPENDED.labels(reason).inc(len(records))

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            batch, self._queue, self._queued_bytes = self._queue, [], 0
            try:
                async with self._io:
                    await self._commit(batch)
            except Exception as exc:  # the writer must outlive any surprise: 503, not a hang
                log.exception("spool writer: batch failed")
                self.healthy = False
                failure = OSError(f"spool writer failed: {exc!r}")
                for pending in batch:
                    if not pending.waiter.done():
                        pending.waiter.set_exception(failure)

    async def _commit(self, batch: list[_Pending]) -> None:
        first_seq = self._seq + 1
        data = b"".join(frame(first_seq + i, p.payload) for i, p in enumerate(batch))
        started = time.perf_counter()
        try:
            if self._fd is None or self._segments[self._active or 0] >= self.segment_bytes:
                old_fd, self._fd = self._fd, None
                segment_id = self._next_id
                self._fd = await asyncio.to_thread(self._open_segment, old_fd, segment_id)
                self._next_id += 1
                self._segments[segment_id] = 0
                self._active = segment_id
            assert self._fd is not None and self._active is not None
            fd, before = self._fd, self._segments[self._active]
            await asyncio.to_thread(self._write_synced, fd, before, data)
        except OSError as exc:
            self._write_failed(exc)
            for pending in batch:
                if not pending.waiter.done():
                    pending.waiter.set_exception(exc)
            return
        metrics.SPOOL_SYNC_SECONDS.observe(time.perf_counter() - started)
        self._seq += len(batch)
        self._segments[self._active] += len(data)
        self.bytes += len(data)
        if self.records == 0:
            self._oldest_ms = batch[0].received_at_ms
        self.records += len(batch)
        self.healthy = True
        self._publish_gauges()
        self._appended.set()
        for pending in batch:
            if not pending.waiter.done():
                pending.waiter.set_result(None)

    def _open_segment(self, old_fd: int | None, segment_id: int) -> int:
        """Close the segment being written (if any) and create the next: a worker thread's
        I/O only; the caller updates the state on the loop."""
        if old_fd is not None:
            with contextlib.suppress(OSError):
                os.close(old_fd)
        fd = os.open(self._path(segment_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _fsync_dir(self.directory)  # the name is durable before any record in it
        except OSError:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _write_synced(fd: int, before: int, data: bytes) -> None:
        try:
            _write_all(fd, data)
        except OSError as exc:
            exc.spool_op = "write"  # type: ignore[attr-defined]
            raise
        try:
            os.fdatasync(fd)
        except OSError as exc:
            exc.spool_op = "sync"  # type: ignore[attr-defined]
            raise

    def _write_failed(self, exc: OSError) -> None:
        """Nothing of the batch is trusted: cut it off (best effort), and write the next
        batch to a new segment (after a failed fdatasync the file's state is unknown)."""
        op = getattr(exc, "spool_op", "write")
        metrics.SPOOL_ERRORS.labels(op).inc()
        self.healthy = False
        log.error("spool %s failed; its deliveries answered 503", op,
                  extra={"error": repr(exc), "errno": errno.errorcode.get(exc.errno or 0)})
        if self._fd is not None and self._active is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._segments[self._active])
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None  # the next batch rolls to a new segment

    def _publish_gauges(self) -> None:
        metrics.SPOOL_RECORDS.set(self.records)
        metrics.SPOOL_BYTES.set(self.bytes)

    # -- drain ------------------------------------------------------------------------------

    def _read_batch(self, segments: dict[int, int], start: Position, limit: int
                    ) -> tuple[list[tuple[Position, SpooledRecord]], Position | None]:
        """Up to ``limit`` records from ``start``, each with the position after it, and
        the position to skip to if a bad frame was met (the segment goes to corrupt/).
        ``segments`` is a snapshot ({id: committed bytes}) taken on the loop."""
        out: list[tuple[Position, SpooledRecord]] = []
        segment_id, offset = start
        read = 0
        for sid in [s for s in sorted(segments) if s >= segment_id]:
            end = segments[sid]
            begin = offset if sid == segment_id else 0
            if begin >= end:
                continue
            scan = _Scan(begin)
            with self._path(sid).open("rb", buffering=READ_BUFFER) as file:
                for after, _, payload in read_frames(file, begin, end, scan):
                    try:
                        record = decode(payload)
                    except ValueError:
                        scan.bad = True
                        break
                    out.append(((sid, after), record))
                    read += len(payload)
                    if len(out) >= limit or read >= DRAIN_READ_BYTES:
                        return out, None
            if scan.bad:
                if out:  # drain what is good first; the bad frame is met again next time
                    return out, None
                return out, (sid, end)
        return out, None

    async def drain_forever(self, send: Callable[[list[SpooledRecord]], Awaitable[None]],
                            can_send: Callable[[], bool], *, batch: int, rate: float) -> None:
        """Forward spooled records to Kafka oldest first, ``batch`` at a time and at most
        ``rate`` a second, whenever ``can_send()``; move the checkpoint after each ack."""
        backoff = 0.5
        while True:
            if self.records == 0:
                self._appended.clear()
                await self._appended.wait()
                continue
            if not can_send():
                await asyncio.sleep(0.5)
                continue
            started = time.monotonic()
            try:
                found, skip = await asyncio.to_thread(self._read_batch, dict(self._segments),
                                                      self._ack, batch)
            except OSError as exc:
                metrics.SPOOL_ERRORS.labels("read").inc()
                log.error("spool read failed", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            if skip is not None:
                await self._skip_corrupt(skip)
                continue
            if not found:  # counted but not readable yet: cannot happen; do not spin
                await asyncio.sleep(0.5)
                continue
            self._oldest_ms = found[0][1].received_at_ms
            try:
                await send([record for _, record in found])
            except Exception as exc:  # the broker is away again: retry the same batch later
                log.warning("spool drain: batch not acknowledged; retrying",
                            extra={"error": repr(exc), "records": len(found)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            backoff = 0.5
            await self._acknowledge(found[-1][0], len(found))
            pause = len(found) / rate - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    async def _acknowledge(self, position: Position, count: int) -> None:
        try:
            await asyncio.to_thread(self._write_checkpoint, position)
        except OSError as exc:  # the records stay; they are re-sent (duplicates) later
            metrics.SPOOL_ERRORS.labels("checkpoint").inc()
            log.error("spool checkpoint failed", extra={"error": repr(exc)})
        self._ack = position
        async with self._io:  # not while a batch is being written
            self.records -= count
            # Counted with the records it takes away, so the two never disagree (not
            # after the segment removal below, which a shutdown may cancel).
            metrics.SPOOL_DRAINED.inc(count)
            if self.records == 0:
                # Everything acknowledged: close the segment being written so that it is
                # removed too (the next append starts a new one); bytes return to 0.
                self._oldest_ms = None
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd, self._active = None, None
            await self._remove_acknowledged()
            self._publish_gauges()

    def _write_checkpoint(self, position: Position) -> None:
        head = struct.pack("<QQ", *position)
        data = head + struct.pack("<I", zlib.crc32(head))
        fd = os.open(self.directory / CHECKPOINT_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    async def _remove_acknowledged(self) -> None:
        """Unlink every segment before the checkpoint's, and the checkpoint's own once it
        is fully acknowledged and not being written."""
        ack_id, ack_offset = self._ack
        done = [sid for sid in self._segments if sid < ack_id and sid != self._active]
        if (ack_id in self._segments and ack_id != self._active
                and ack_offset >= self._segments[ack_id]):
            done.append(ack_id)
        if not done:
            return
        sizes = sum(self._segments.pop(sid) for sid in done)
        self.bytes -= sizes
        try:
            await asyncio.to_thread(self._unlink, done)
        except OSError as exc:
            log.error("spool: removing drained segments failed", extra={"error": repr(exc)})
        if self._ack[0] in done:
            later = [sid for sid in self._segments if sid > self._ack[0]]
            self._ack = (later[0], 0) if later else (self._next_id, 0)

    def _unlink(self, segment_ids: list[int]) -> None:
        for sid in segment_ids:
            with contextlib.suppress(FileNotFoundError):
                self._path(sid).unlink()
        _fsync_dir(self.directory)

    async def _skip_corrupt(self, position: Position) -> None:
        sid = position[0]
        with contextlib.suppress(OSError):
            corrupt = self.directory / CORRUPT_DIR
            corrupt.mkdir(exist_ok=True)
            await asyncio.to_thread(shutil.copy2, self._path(sid), corrupt / self._path(sid).name)
        metrics.SPOOL_ERRORS.labels("corrupt").inc()
        log.error("spool: bad frame while draining; segment copied to corrupt/ and skipped",
                  extra={"segment": sid})
        remaining = await asyncio.to_thread(self._count_after, dict(self._segments), position)
        await self._acknowledge(position, self.records - remaining)

    def _count_after(self, segments: dict[int, int], position: Position) -> int:
        """Frames in the segments after ``position``'s: how many records remain once a
        corrupt segment is skipped (how many it held is unknown)."""
        remaining = 0
        for sid in sorted(segments):
            if sid <= position[0]:
                continue
            scan = _Scan(0)
            with self._path(sid).open("rb", buffering=READ_BUFFER) as file:
                remaining += sum(1 for _ in read_frames(file, 0, segments[sid], scan))
        return remaining

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the batch being written (its requests are waiting), then release."""
        if self._writer is not None:
            while self._queue:
                self._wake.set()
                await asyncio.sleep(0.01)
            async with self._io:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
            self._writer = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
