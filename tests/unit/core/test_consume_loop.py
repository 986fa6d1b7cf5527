"""ConsumeLoop's ordering, retry and drain rules, over an in-memory consumer.

The broker-backed behaviour (restarts, outages, rebalances) is covered by the
integration tests; these pin the loop's own logic, which the integration tests
can only reach by timing: batch N+1 is fetched and prepared while batch N is
being handled, but its handler starts only after N committed, and a failure or
a revocation sends the fetched batch back to be read again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from hookstream.core.consumer import ConsumeLoop
from hookstream.core.errors import NotDue, Retryable

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


@dataclasses.dataclass
class Rec:
    tp: TopicPartition
    offset: int


class FakeConsumer:
    """Per-partition logs, fetch positions, commits; getmany takes up to ``max_records``."""

    def __init__(self, logs: dict[TopicPartition, int]) -> None:
        self.logs = {tp: [Rec(tp, o) for o in range(n)] for tp, n in logs.items()}
        self.positions = {tp: 0 for tp in logs}
        self.committed: list[dict[TopicPartition, int]] = []
        self.fetches = 0
        self.on_fetch: Any = None

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        await asyncio.sleep(0)
        self.fetches += 1
        if self.on_fetch:
            await self.on_fetch(self.fetches)
        out: dict[TopicPartition, list[Rec]] = {}
        for tp, log in self.logs.items():
            take = log[self.positions[tp]:self.positions[tp] + max_records - sum(
                len(v) for v in out.values())]
            if take:
                out[tp] = take
                self.positions[tp] += len(take)
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        self.committed.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


def offsets(records: Sequence[Rec]) -> list[tuple[int, int]]:
    return [(r.tp.partition, r.offset) for r in records]


async def run_until(loop: ConsumeLoop, stop: asyncio.Event, done: Any) -> None:
    task = asyncio.create_task(loop.run(stop))
    for _ in range(2000):
        if done():
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_next_batch_is_prepared_during_the_handler_but_handled_after_the_commit() -> None:
    consumer = FakeConsumer({TP0: 6})
    events: list[str] = []

    async def prepare(records: Sequence[Rec]) -> Sequence[Rec]:
        events.append(f"prepare {records[0].offset}")
        return records

    async def handler(records: Sequence[Rec]) -> None:
        events.append(f"start {records[0].offset}")
        await asyncio.sleep(0.02)  # awaiting acks: the next batch is prepared meanwhile
        events.append(f"end {records[0].offset}")

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        events.append(f"commit {offsets[TP0]}")

    consumer.commit = commit  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=2, poll_timeout_ms=1,
                       prepare=prepare)
    await run_until(loop, stop, lambda: "commit 6" in events)
    assert events == [
        "prepare 0", "start 0", "prepare 2", "end 0", "commit 2",
        "start 2", "prepare 4", "end 2", "commit 4",
        "start 4", "end 4", "commit 6",
    ]


async def test_a_failed_batch_and_the_batch_fetched_behind_it_are_both_read_again() -> None:
    consumer = FakeConsumer({TP0: 4, TP1: 2})
    handled: list[list[tuple[int, int]]] = []
    fail = {"left": 1}

    async def handler(records: Sequence[Rec]) -> None:
        if fail["left"] and records[0].offset == 0 and records[0].tp == TP0:
            fail["left"] -= 1
            raise Retryable("broker down")
        handled.append(offsets(records))

    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=3, poll_timeout_ms=1,
                       backoff_max_s=0.01)
    await run_until(loop, stop, lambda: sum(len(h) for h in handled) >= 6)
    # The first batch failed once and was committed only after it succeeded; the
    # batch fetched behind it was dropped and read again: each record handled once.
    assert handled == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (1, 0), (1, 1)]]
    assert consumer.committed == [{TP0: 3}, {TP0: 4, TP1: 2}]
    assert loop.healthy


async def test_a_batch_fetched_before_a_revocation_is_never_started() -> None:
    consumer = FakeConsumer({TP0: 4})
    handled: list[list[tuple[int, int]]] = []
    loop_ref: list[ConsumeLoop] = []

    async def on_fetch(n: int) -> None:
        if n == 2:  # a rebalance completes while batch 2 is in hand, before it starts
            await loop_ref[0]._listener.on_partitions_revoked([TP0])

    async def handler(records: Sequence[Rec]) -> None:
        handled.append(offsets(records))

    consumer.on_fetch = on_fetch
    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=2, poll_timeout_ms=1)
    loop_ref.append(loop)
    await run_until(loop, stop, lambda: sum(len(h) for h in handled) >= 4)
    # Batch 2 (offsets 2-3) was fetched, dropped at the revocation, read again.
    assert handled == [[(0, 0), (0, 1)], [(0, 2), (0, 3)]]
    assert consumer.fetches >= 3


async def test_stop_drains_the_batch_in_progress_and_commits_it() -> None:
    consumer = FakeConsumer({TP0: 2})
    release = asyncio.Event()
    stop = asyncio.Event()

    async def handler(records: Sequence[Rec]) -> None:
        stop.set()  # SIGTERM arrives mid-batch
        await release.wait()

    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=2, poll_timeout_ms=1)
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the batch in progress
    release.set()
    await asyncio.wait_for(task, 5)
    assert consumer.committed == [{TP0: 2}]


async def test_a_handler_bug_without_a_dead_letter_hook_is_fatal() -> None:
    consumer = FakeConsumer({TP0: 2})

    async def handler(records: Sequence[Rec]) -> None:
        raise ZeroDivisionError

    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=2, poll_timeout_ms=1)
    with pytest.raises(ZeroDivisionError):
        await asyncio.wait_for(loop.run(asyncio.Event()), 5)
    assert consumer.committed == []


class Poison(Exception):
    pass


async def test_one_raising_record_is_dead_lettered_and_the_partition_moves_on() -> None:
    """The poison pill of issue 11: a record whose handling raises (orjson's recursion
    limit, a bug) must not stop the consumer; it is dead-lettered with the exception,
    every other record of its batch is handled, and the offsets move past it."""
    consumer = FakeConsumer({TP0: 5, TP1: 2})
    handled: list[tuple[int, int]] = []
    dead: list[tuple[tuple[int, int], str]] = []

    async def handler(records: Sequence[Rec]) -> None:
        if any(r.tp == TP0 and r.offset == 2 for r in records):
            raise Poison("recursion limit reached")
        handled.extend(offsets(records))

    async def dead_letter(record: Rec, exc: BaseException) -> None:
        dead.append(((record.tp.partition, record.offset), repr(exc)))

    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=4, poll_timeout_ms=1,
                       dead_letter=dead_letter)
    await run_until(loop, stop, lambda: len(handled) >= 6)
    assert dead == [((0, 2), "Poison('recursion limit reached')")]
    assert sorted(handled) == [(0, 0), (0, 1), (0, 3), (0, 4), (1, 0), (1, 1)]
    final: dict[TopicPartition, int] = {}
    for commit in consumer.committed:
        final.update(commit)
    assert final == {TP0: 5, TP1: 2}


async def test_a_prepare_that_raises_isolates_the_record_too() -> None:
    consumer = FakeConsumer({TP0: 3})
    handled: list[int] = []
    dead: list[int] = []

    async def prepare(records: Sequence[Rec]) -> Sequence[Rec]:
        if any(r.offset == 1 for r in records):
            raise RecursionError("maximum recursion depth exceeded")
        return records

    async def handler(records: Sequence[Rec]) -> None:
        handled.extend(r.offset for r in records)

    async def dead_letter(record: Rec, exc: BaseException) -> None:
        assert isinstance(exc, RecursionError)
        dead.append(record.offset)

    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=3, poll_timeout_ms=1,
                       prepare=prepare, dead_letter=dead_letter)
    await run_until(loop, stop, lambda: len(handled) >= 2 and consumer.committed)
    assert (handled, dead) == ([0, 2], [1])
    assert consumer.committed[-1] == {TP0: 3}


async def test_a_dead_letter_that_cannot_be_stored_retries_the_batch() -> None:
    """Retryable from the dead-letter hook (the broker is down): nothing is committed,
    the batch is read again, and the record is dead-lettered once it can be."""
    consumer = FakeConsumer({TP0: 2})
    attempts: list[int] = []
    dead: list[int] = []

    async def handler(records: Sequence[Rec]) -> None:
        if any(r.offset == 0 for r in records):
            raise Poison

    async def dead_letter(record: Rec, exc: BaseException) -> None:
        attempts.append(record.offset)
        if len(attempts) == 1:
            raise Retryable("broker down")
        dead.append(record.offset)

    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=2, poll_timeout_ms=1,
                       backoff_max_s=0.01, dead_letter=dead_letter)
    await run_until(loop, stop, lambda: bool(consumer.committed))
    assert dead == [0]
    assert consumer.committed == [{TP0: 2}]


async def test_a_failing_dead_letter_hook_is_fatal_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    consumer = FakeConsumer({TP0: 1})

    async def handler(records: Sequence[Rec]) -> None:
        raise Poison

    async def dead_letter(record: Rec, exc: BaseException) -> None:
        raise ValueError("producer closed")

    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=1, poll_timeout_ms=1,
                       dead_letter=dead_letter)
    with pytest.raises(ValueError):
        await asyncio.wait_for(loop.run(asyncio.Event()), 5)
    assert consumer.committed == []
    assert any(r.levelname == "CRITICAL" and "fatal" in r.getMessage() for r in caplog.records)


async def test_not_due_commits_what_the_handler_finished_and_reads_on_from_there() -> None:
    """A parked record not due yet (``NotDue``): what the handler finished before it is
    committed and not handled again; the rest is read again at once, no backoff, and
    the loop stays healthy."""
    consumer = FakeConsumer({TP0: 5})
    handled: list[list[tuple[int, int]]] = []
    waits = {"left": 1}

    async def handler(records: Sequence[Rec]) -> None:
        handled.append(offsets(records))
        if waits["left"]:
            waits["left"] -= 1
            raise NotDue("offset 2 is not due", resume_at={TP0: 2})

    stop = asyncio.Event()
    loop = ConsumeLoop(consumer, "t", "g", handler, max_batch=5, poll_timeout_ms=1,
                       backoff_max_s=30)  # a backoff would outlast the test
    await run_until(loop, stop, lambda: bool(consumer.committed)
                    and consumer.committed[-1] == {TP0: 5})
    assert handled == [[(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)], [(0, 2), (0, 3), (0, 4)]]
    assert consumer.committed == [{TP0: 2}, {TP0: 5}]
    assert loop.healthy
