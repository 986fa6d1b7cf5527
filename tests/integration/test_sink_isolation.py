"""Per-record isolation in the sink runner, on the real broker.

A parked record on a sink's retry topic whose ``hs-retry-not-before`` header is not
a number made ``handle_retry`` raise ``ValueError`` out of the consume loop, which
ended the sink worker (issue 11: anything one record raises must dead-letter that
record, never end the process). Here such a record, and an event whose handling
raises in the sink itself, each end on the sink's dead-letter topic with reason
``internal_error`` / ``sink_error`` and the exception, while the other events are
written and the runner keeps running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import orjson

from hookstream.core import dlq, topics
from hookstream.core.config import KafkaSettings
from hookstream.core.headers import H_ATTEMPT, H_NOT_BEFORE
from hookstream.core.kafka import start_producer
from hookstream.sinks.base import SinkEvent, WriteOutcome
from hookstream.sinks.runner import SinkRunner, SinkSettings, sink_topics

from ..support import read_topic


@dataclasses.dataclass
class ListSink:
    """A sink that keeps what it wrote; writing an event of type ``boom`` raises."""

    name: str = "isolation"
    default_http_port: int = 0
    takes_test_events: bool = False
    written: list[str] = dataclasses.field(default_factory=list)

    def wants(self, event_type: str) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        if any(e.type == "boom" for e in events):
            raise RecursionError("maximum recursion depth exceeded")
        self.written.extend(str(e.event["event_id"]) for e in events)
        return WriteOutcome()


def event(kind: str) -> bytes:
    return orjson.dumps({"event_id": str(uuid.uuid4()), "type": kind})


async def test_a_raising_record_on_either_topic_is_dead_lettered_and_the_sink_goes_on(
        stack: KafkaSettings) -> None:
    run_id = uuid.uuid4().hex[:10]
    kafka = dataclasses.replace(stack, events_topic=f"test.events.{run_id}",
                                sink_topic_prefix=f"test.sink.{run_id}")
    await topics.ensure(kafka, [topics.TopicSpec(kafka.events_topic, 2, topics.DAY_MS, "t")])
    retry_topic, dlq_topic = sink_topics(kafka, "isolation")
    sink = ListSink()
    stop = asyncio.Event()
    runner = asyncio.create_task(SinkRunner(
        sink, kafka, SinkSettings(poll_timeout_ms=100, backoff_max_s=1),
        group_id=f"test-isolation-{run_id}").run(stop, False))
    producer = await start_producer(kafka, "test")
    try:
        ordinary = [event("call.ended") for _ in range(20)]
        for value in ordinary[:10]:
            await producer.send_and_wait(kafka.events_topic, value)
        await producer.send_and_wait(kafka.events_topic, event("boom"))
        for value in ordinary[10:]:
            await producer.send_and_wait(kafka.events_topic, value)
        deadline = time.monotonic() + 30
        while not runner.done() and time.monotonic() < deadline:
            try:
                await producer.send_and_wait(retry_topic, event("call.ended"), headers=[
                    (H_ATTEMPT, b"1"), (H_NOT_BEFORE, b"soon")])
                break
            except Exception:  # the runner creates the retry topic when it starts
                await asyncio.sleep(0.5)

        letters = await read_topic(kafka, dlq_topic, 2, timeout_s=60)
        reasons = sorted((dlq.header(r.headers, dlq.H_REASON), dlq.header(r.headers,
                                                                          dlq.H_DETAIL))
                         for r in letters)
        assert reasons == [
            ("internal_error", "ValueError: invalid literal for int() with base 10: 'soon'"),
            ("sink_error", "RecursionError('maximum recursion depth exceeded')"),
        ]
        wanted = {orjson.loads(v)["event_id"] for v in ordinary}
        deadline = time.monotonic() + 30
        while not wanted <= set(sink.written) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert wanted <= set(sink.written)
        assert not runner.done(), runner.exception() if runner.done() else None
    finally:
        stop.set()
        await producer.stop()
        result: Any = await asyncio.wait_for(asyncio.gather(runner, return_exceptions=True), 60)
        assert not isinstance(result[0], BaseException), result
