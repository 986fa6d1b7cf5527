"""The sink contract: what a sink implements (:class:`Sink`), what it is given
(:class:`SinkEvent`) and what it answers (:class:`WriteOutcome`).

A sink is a separately deployable worker with its own consumer group on the
canonical topic. It implements :class:`Sink` (``wants`` to filter by canonical
type, ``write`` a batch durably); :mod:`hookstream.sinks.runner` does the rest
(batching, commits, retries, parking, dead letters, health, drain). A new sink
imports this module and the runner's ``sink_main``, nothing else of the framework.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from ..core.errors import MALFORMED_EVENT, RETRIES_EXHAUSTED, SINK_ERROR

__all__ = ["MALFORMED_EVENT", "RETRIES_EXHAUSTED", "SINK_ERROR", "ParsedBatch", "Sink",
           "SinkEvent", "WriteOutcome"]


@dataclasses.dataclass
class SinkEvent:
    """One canonical event as a sink sees it."""

    event: dict[str, Any]
    record: Any  # the consumed Kafka record (value, headers, topic/partition/offset)
    attempt: int = 0  # 0: first offer; n: the n-th re-offer from the retry topic

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))


# A parsed batch: (events the sink wants, malformed records, how many were skipped).
ParsedBatch = tuple[list[SinkEvent], list[SinkEvent], int]


@dataclasses.dataclass
class WriteOutcome:
    """What did not get written; everything else in the batch was."""

    deferred: list[tuple[SinkEvent, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[SinkEvent, str, str]] = dataclasses.field(default_factory=list)
    # (event, detail, not-before in ms since the epoch): parked until then, the event's
    # attempt count unchanged (the delay is the destination's, not a failure of ours)
    held: list[tuple[SinkEvent, str, int]] = dataclasses.field(default_factory=list)


class Sink(Protocol):
    name: str  # "warehouse" -> group hookstream-sink-warehouse, its retry and DLQ topics
    default_http_port: int
    # Whether ``write`` is given test deliveries (canonical ``test: true``): only the
    # warehouse, which keeps them in ``events``. Every other sink never sees one.
    takes_test_events: bool

    def wants(self, event_type: str) -> bool: ...

    async def start(self) -> None: ...

    async def write(self, events: list[SinkEvent]) -> WriteOutcome:
        """Write durably, then return. Raise ``Retryable`` if the whole batch should be
        retried later (a dependency is down); a sink must be idempotent per event_id.
        A permanent failure of one event goes in ``WriteOutcome.failed`` with a reason
        the sink registered (``hookstream.core.errors.sink_reasons``)."""
        ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...
