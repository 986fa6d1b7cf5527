"""The ingest spool on a real filesystem (a temporary directory): group commit, recovery of
a torn tail and of corruption, bounds, disk errors, the directory lock, and the drain."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from hookstream.ingest import spool as spool_module
from hookstream.ingest.spool import (
    CHECKPOINT_FILE,
    FRAME,
    Spool,
    SpooledRecord,
    SpoolLocked,
    SpoolRefused,
    decode,
    encode,
)

MiB = 1024 * 1024
NOW_MS = time.time_ns() // 1_000_000  # the records' received_at: recent, inside max_age


def record(i: int, size: int = 100, topic: str = "raw") -> SpooledRecord:
    return SpooledRecord(topic, f"key-{i}".encode(), (b"%08d" % i) * (size // 8),
                         [("hs-request-id", f"r{i}".encode()), ("hs-source", b"sarj")],
                         NOW_MS + i)


def make(directory: Path, **overrides: int | float) -> Spool:
    options: dict[str, int | float] = {"max_bytes": 64 * MiB, "max_age_s": 3600.0,
                                       "min_free_bytes": 0, "segment_bytes": 16 * MiB}
    options.update(overrides)
    return Spool(directory, **options)  # type: ignore[arg-type]


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = make(tmp_path)
    await spool.open()
    yield spool
    await spool.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def drain_all(spool: Spool, *, batch: int = 500, fail_first: int = 0
                    ) -> list[SpooledRecord]:
    """Run the drainer until the spool is empty; the first ``fail_first`` sends raise."""
    sent: list[SpooledRecord] = []
    failures = [fail_first]

    async def send(records: list[SpooledRecord]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("broker away")
        sent.extend(records)

    task = asyncio.create_task(spool.drain_forever(send, lambda: True, batch=batch,
                                                   rate=1_000_000))
    try:
        async with asyncio.timeout(20):
            while spool.records:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    return sent


@given(topic=st.text(max_size=40), key=st.one_of(st.none(), st.binary(max_size=64)),
       value=st.binary(max_size=2048),
       headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=64)), max_size=8),
       received=st.integers(min_value=0, max_value=2**63))
def test_encode_decode_round_trip(topic: str, key: bytes | None, value: bytes,
                                  headers: list[tuple[str, bytes]], received: int) -> None:
    original = SpooledRecord(topic, key, value, headers, received)
    assert decode(encode(original)) == original


def test_a_truncated_payload_is_a_value_error() -> None:
    payload = encode(record(1))
    with pytest.raises(ValueError):
        decode(payload[:12])


async def test_appended_records_survive_a_reopen_and_drain_in_order(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.open()
    # Concurrent appends are group-committed: fewer syncs than records.
    syncs_before = metric("hookstream_ingest_spool_sync_seconds_count")
    await asyncio.gather(*(spool.append([record(i)], "ack_budget") for i in range(200)))
    assert spool.records == 200
    assert metric("hookstream_ingest_spool_sync_seconds_count") - syncs_before < 200
    assert metric("hookstream_ingest_spool_records") == 200
    await spool.close()

    again = make(tmp_path)
    await again.open()
    assert again.records == 200
    assert again.oldest_age_s() > 0
    sent = await drain_all(again, batch=64)
    assert sent == [record(i) for i in range(200)]
    assert again.records == 0 and again.bytes == 0 and again.oldest_age_s() == 0
    assert segments(tmp_path) == []  # every acknowledged segment removed
    await again.close()


async def test_acknowledged_records_are_not_sent_again_after_a_restart(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.open()
    await spool.append([record(i) for i in range(30)], "not_connected")
    sent: list[SpooledRecord] = []

    async def send(records: list[SpooledRecord]) -> None:
        sent.extend(records)

    task = asyncio.create_task(spool.drain_forever(send, lambda: True, batch=10, rate=20))
    while len(sent) < 10:  # rate 20/s: one batch of 10, then a half-second pause
        await asyncio.sleep(0.01)
    task.cancel()  # the process stops between batches (the checkpoint of batch 1 written)
    await spool.close()

    again = make(tmp_path)
    await again.open()
    assert again.records == 20
    rest = await drain_all(again)
    assert rest == [record(i) for i in range(10, 30)]
    await again.close()


async def test_segments_roll_and_are_removed_as_they_drain(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=4096)
    await spool.open()
    for i in range(40):
        await spool.append([record(i, size=400)], "ack_budget")
    assert len(segments(tmp_path)) >= 4
    assert spool.bytes == sum(p.stat().st_size for p in segments(tmp_path))
    sent = await drain_all(spool, batch=7)
    assert sent == [record(i, size=400) for i in range(40)]
    assert spool.bytes == 0
    async with asyncio.timeout(5):  # the last unlink may still be running in its thread
        while segments(tmp_path):
            await asyncio.sleep(0.01)
    await spool.append([record(99)], "ack_budget")  # writes go on in a new segment
    assert len(segments(tmp_path)) == 1 and spool.records == 1
    await spool.close()


async def test_a_torn_tail_is_cut_off_at_start_up(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.open()
    await spool.append([record(i) for i in range(5)], "ack_budget")
    await spool.close()
    newest = segments(tmp_path)[-1]
    good_size = newest.stat().st_size
    whole = spool_module.frame(6, encode(record(5)))
    with newest.open("ab") as file:  # a write the kill interrupted: half a frame
        file.write(whole[: len(whole) // 2])

    again = make(tmp_path)
    await again.open()
    assert again.records == 5
    assert newest.stat().st_size == good_size
    assert await drain_all(again) == [record(i) for i in range(5)]
    assert not (tmp_path / "corrupt").exists()  # a torn tail is not corruption
    await again.close()


async def test_corruption_before_the_newest_segment_keeps_the_rest(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=2048)
    await spool.open()
    for i in range(12):
        await spool.append([record(i, size=400)], "ack_budget")
    await spool.close()
    first = segments(tmp_path)[0]
    frame_size = FRAME.size + len(encode(record(0, size=400)))
    in_first = first.stat().st_size // frame_size
    data = bytearray(first.read_bytes())
    data[frame_size + 40] ^= 0xFF  # the second frame's payload: its CRC no longer matches
    first.write_bytes(bytes(data))
    corrupt_before = metric("hookstream_ingest_spool_errors_total", op="corrupt")

    again = make(tmp_path, segment_bytes=2048)
    await again.open()
    assert (tmp_path / "corrupt" / first.name).read_bytes() == bytes(data)  # kept to salvage
    assert metric("hookstream_ingest_spool_errors_total", op="corrupt") == corrupt_before + 1
    sent = await drain_all(again)
    # The frame before the bad one drains, and every later segment.
    assert sent == [record(0, size=400)] + [record(i, size=400) for i in range(in_first, 12)]
    await again.close()


async def test_an_unreadable_checkpoint_drains_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = make(tmp_path)
    await spool.open()
    await spool.append([record(i) for i in range(10)], "ack_budget")
    await drain_all(spool, batch=4)
    await spool.append([record(i) for i in range(10, 14)], "ack_budget")
    await spool.close()
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00" * 20)  # CRC does not match

    again = make(tmp_path)
    await again.open()
    # Duplicates at worst, never a loss: everything still on disk drains again.
    assert [r.received_at_ms for r in await drain_all(again)][-4:] == [
        record(i).received_at_ms for i in range(10, 14)]
    await again.close()


async def test_the_byte_bound_refuses_with_spool_full(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=2000)
    await spool.open()
    await spool.append([record(1, size=800)], "ack_budget")
    with pytest.raises(SpoolRefused) as refused:
        await spool.append([record(2, size=1600)], "ack_budget")
    assert refused.value.reason == "spool_full"
    assert spool.records == 1
    assert spool.accepting  # a small record still fits
    await spool.close()


async def test_the_age_bound_stops_intake_but_keeps_the_records(tmp_path: Path) -> None:
    spool = make(tmp_path, max_age_s=60)
    await spool.open()
    old = SpooledRecord("raw", None, b"x", [], 1_000)  # received in 1970
    await spool.append([old], "ack_budget")
    assert not spool.accepting
    with pytest.raises(SpoolRefused) as refused:
        await spool.append([record(2)], "ack_budget")
    assert refused.value.reason == "spool_full"
    assert await drain_all(spool) == [old]  # nothing expired: it still drains
    assert spool.accepting
    await spool.close()


async def test_too_little_free_space_refuses(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path)
    spool = make(tmp_path, min_free_bytes=free.f_bavail * free.f_frsize * 2)
    await spool.open()
    with pytest.raises(SpoolRefused) as refused:
        await spool.append([record(1)], "ack_budget")
    assert refused.value.reason == "spool_full"
    assert spool.records == 0
    await spool.close()


@pytest.mark.parametrize(("failing", "op"), [("write", "write"), ("fdatasync", "sync")])
async def test_a_disk_error_refuses_the_batch_and_the_next_one_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, op: str) -> None:
    spool = make(tmp_path)
    await spool.open()
    await spool.append([record(1)], "ack_budget")
    real = getattr(os, failing)

    def broken(*args: object) -> object:
        raise OSError(errno.ENOSPC if failing == "write" else errno.EIO, "injected")

    errors_before = metric("hookstream_ingest_spool_errors_total", op=op)
    monkeypatch.setattr(spool_module.os, failing, broken)
    with pytest.raises(SpoolRefused) as refused:
        await spool.append([record(2), record(3)], "ack_budget")
    assert refused.value.reason == "spool_error"
    assert not spool.healthy and not spool.accepting
    assert metric("hookstream_ingest_spool_errors_total", op=op) == errors_before + 1
    monkeypatch.setattr(spool_module.os, failing, real)

    await spool.append([record(4)], "ack_budget")  # a new segment; healthy again
    assert spool.healthy and spool.records == 2
    assert await drain_all(spool) == [record(1), record(4)]  # the refused batch is not there
    await spool.close()


async def test_two_processes_cannot_share_a_spool(tmp_path: Path, opened: Spool) -> None:
    del opened
    with pytest.raises(SpoolLocked):
        await make(tmp_path).open()


async def test_a_failed_send_keeps_the_batch_and_retries_it(tmp_path: Path,
                                                           opened: Spool) -> None:
    await opened.append([record(i) for i in range(5)], "kafka_error")
    drained_before = metric("hookstream_ingest_spool_drained_total")
    sent = await drain_all(opened, fail_first=2)
    assert sent == [record(i) for i in range(5)]  # once each, in order, after the failures
    assert metric("hookstream_ingest_spool_drained_total") == drained_before + 5
    assert metric("hookstream_ingest_spool_appended_total", reason="kafka_error") >= 5


async def test_nothing_drains_while_kafka_cannot_take_it(opened: Spool) -> None:
    await opened.append([record(1)], "not_connected")
    sent: list[SpooledRecord] = []

    async def send(records: list[SpooledRecord]) -> None:
        sent.extend(records)

    task = asyncio.create_task(opened.drain_forever(send, lambda: False, batch=10, rate=100))
    await asyncio.sleep(0.3)
    task.cancel()
    assert sent == [] and opened.records == 1


async def test_a_surprise_in_the_writer_refuses_the_batch_and_the_writer_lives_on(
        opened: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = spool_module.frame

    def broken(seq: int, payload: bytes) -> bytes:
        raise ValueError("a bug")

    monkeypatch.setattr(spool_module, "frame", broken)
    with pytest.raises(SpoolRefused) as refused:
        await opened.append([record(1)], "ack_budget")
    assert refused.value.reason == "spool_error" and not opened.healthy
    monkeypatch.setattr(spool_module, "frame", real)
    await opened.append([record(2)], "ack_budget")
    assert opened.healthy and opened.records == 1
