"""Call state is a pure function of the set of a call's events (no database)."""

from __future__ import annotations

import itertools
import random
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from hookstream.core.schemas import SchemaRegistry
from hookstream.normalizer.pipeline import Decoder
from hookstream.sinks.warehouse.store import (
    _CALL_COLUMNS,
    CALL_FIELDS,
    STATE_RANK,
    chain_surplus,
    fold_call,
)
from tests import call_sequences
from tests.call_sequences import Delivery

EXAMPLES = Path(__file__).resolve().parents[4] / "schemas" / "canonical" / "v1" / "examples"
DECODER = Decoder(SchemaRegistry())


def example(name: str, **changes: Any) -> dict[str, Any]:
    event = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    event.update(changes)
    return event


def lifecycle() -> list[dict[str, Any]]:
    ids = [str(uuid.UUID(int=n)) for n in range(1, 6)]
    return [
        example("call.initializing", call_id="c1", event_id=ids[0]),
        example("call.started", call_id="c1", event_id=ids[1]),
        example("call.updated", call_id="c1", event_id=ids[2]),
        example("call.ended.sawt", call_id="c1", event_id=ids[3]),
        example("call.analyzed", call_id="c1", event_id=ids[4]),
    ]


def test_every_order_of_a_lifecycle_folds_to_one_row() -> None:
    rows = {fold_call(list(order)) for order in itertools.permutations(lifecycle())}
    assert len(rows) == 1
    row = dict(zip(("call_key", "provider", "source", *CALL_FIELDS), rows.pop(), strict=False))
    assert row["call_key"] == "sawt:c1" and row["status"] == "finished"
    assert row["summary"]  # from the analysis
    assert row["duration_s"] == 315.0  # call.ended's, not the earlier update's 42


def test_conflicting_fields_resolve_by_precedence_not_arrival() -> None:
    """The highest-precedence event that carries a field decides it, whatever came
    first: an ended event without a duration, an update with one, an analysis with
    another; the update (rank 30) outranks the analysis (rank 0)."""
    ended = example("call.ended.sawt", call_id="c2", duration_s=None,
                    event_id=str(uuid.UUID(int=11)))
    updated = example("call.updated", call_id="c2", duration_s=42,
                      event_id=str(uuid.UUID(int=12)))
    analyzed = example("call.analyzed", call_id="c2", duration_s=99,
                       event_id=str(uuid.UUID(int=13)))
    rows = {fold_call(list(order)) for order in itertools.permutations([ended, updated,
                                                                        analyzed])}
    assert len(rows) == 1
    row = dict(zip(("call_key", "provider", "source", *CALL_FIELDS), rows.pop(), strict=False))
    assert row["duration_s"] == 42.0
    assert row["status"] == "finished"


def test_fractional_duration_and_out_of_range_sentiment_fold_as_sent() -> None:
    """Issue 13: a non-integer duration and a score outside [-1, 1] reach the
    double precision columns unchanged; nulls leave a field to other events."""
    ended = example("call.ended", call_id="c3", duration_s=47.5, recording_url=None,
                    event_id=str(uuid.UUID(int=21)))
    row = dict(zip(("call_key", "provider", "source", *CALL_FIELDS), fold_call([ended]),
                   strict=False))
    assert row["duration_s"] == 47.5 and row["recording_url"] is None
    session = example("session.ended", sentiment=-4.5, sentiment_label=None,
                      event_id=str(uuid.UUID(int=22)))
    row = dict(zip(("call_key", "provider", "source", *CALL_FIELDS), fold_call([session]),
                   strict=False))
    assert row["sentiment"] == -4.5 and row["sentiment_label"] is None


# --- issue 13: Sawt's transition chain, receive times, redeliveries ---------------------

def folded(events: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(zip(_CALL_COLUMNS, fold_call(events), strict=True))
    if row["transcript"] is not None:
        row["transcript"] = orjson.loads(row["transcript"])
    return row


def update(n: int, previous: str | None, status: str, received_s: int,
           **changes: Any) -> dict[str, Any]:
    """A canonical Sawt call.updated as the adapter makes it now: no occurred_at."""
    return example("call.updated", call_id="chain", event_id=str(uuid.UUID(int=100 + n)),
                   previous_status=previous, status=status, occurred_at=None,
                   received_at=f"2026-05-17T06:{received_s // 60:02d}:"
                               f"{received_s % 60:02d}.000Z", **changes)


def test_the_chain_end_wins_over_receive_time_and_event_id() -> None:
    """Issue 13's case: four updates whose last is not IN_CALL. The chain decides, even
    when the receive times say the opposite (received in reverse) and whatever the
    event ids hash to."""
    chain = [("received_request_to_agent", "calling"), ("calling", "ringing"),
             ("ringing", "in_call"), ("in_call", "transferring")]
    for received in ([10, 20, 30, 40], [40, 30, 20, 10], [10, 40, 20, 30]):
        events = [update(n, a, b, received[n]) for n, (a, b) in enumerate(chain)]
        rows = {tuple(folded(list(order)).items()).__repr__()
                for order in itertools.permutations(events)}
        assert len(rows) == 1
        row = folded(events)
        assert row["status"] == "transferring", received
        assert row["state_event_id"] == events[3]["event_id"]


def test_a_repeated_transition_ends_where_the_walk_ends() -> None:
    """IN_CALL -> ON_HOLD -> IN_CALL -> ON_HOLD: ON_HOLD is entered twice and left once.
    Of the two IN_CALL -> ON_HOLD events, the later received is the state (its duration
    and cost, 70 and 0.9, not the first's 30 and 0.4)."""
    events = [update(0, "ringing", "in_call", 10, duration_s=0, cost=0),
              update(1, "in_call", "on_hold", 20, duration_s=30, cost=0.4),
              update(2, "on_hold", "in_call", 30, duration_s=45, cost=0.6),
              update(3, "in_call", "on_hold", 40, duration_s=70, cost=0.9)]
    rows = {repr(folded(list(order))) for order in itertools.permutations(events)}
    assert len(rows) == 1
    row = folded(events)
    assert (row["status"], row["duration_s"], row["cost"]) == ("on_hold", 70.0, 0.9)
    assert row["state_event_id"] == events[3]["event_id"]
    assert chain_surplus(events) == {(30, "ringing"): -1, (30, "in_call"): 0,
                                     (30, "on_hold"): 1}
    # Resumed once more: the walk now ends in IN_CALL.
    events.append(update(4, "on_hold", "in_call", 50, duration_s=80, cost=1.0))
    assert {folded(list(o))["status"] for o in itertools.permutations(events)} == {"in_call"}
    assert folded(events)["duration_s"] == 80.0


def test_without_a_chain_end_the_latest_receipt_decides() -> None:
    """A gap (a lost update) leaves two chain ends; a walk back to its start leaves none.
    The receive time breaks both ties, then the event id."""
    gap = [update(0, "calling", "ringing", 10), update(1, "in_call", "on_hold", 20)]
    assert {folded(list(o))["status"] for o in itertools.permutations(gap)} == {"on_hold"}
    gap[0]["received_at"] = "2026-05-17T06:00:30.000Z"
    assert {folded(list(o))["status"] for o in itertools.permutations(gap)} == {"ringing"}
    loop = [update(0, "in_call", "on_hold", 10), update(1, "on_hold", "in_call", 20)]
    assert folded(loop)["status"] == "in_call" == folded(loop[::-1])["status"]
    same = [update(0, "in_call", "on_hold", 10), update(1, "on_hold", "in_call", 10)]
    assert folded(same)["state_event_id"] == folded(same[::-1])["state_event_id"] == max(
        e["event_id"] for e in same)


def test_the_lifecycle_rank_still_comes_first() -> None:
    """A transition after call.ended (in the chain's terms the end) does not move a
    finished call back: the chain orders events of one rank only."""
    ended = example("call.ended.sawt", call_id="chain", event_id=str(uuid.UUID(int=200)))
    late = update(0, "finished", "in_call", 59)
    assert folded([ended, late])["status"] == folded([late, ended])["status"] == "finished"


def _decode_in_order(order: list[Delivery]) -> list[dict[str, Any]]:
    """What the pipeline stores of deliveries processed in this order: each decoded by
    the normalizer's decoder, the first copy of every event id kept (dedupe)."""
    kept: dict[str, dict[str, Any]] = {}
    for delivery in order:
        event = DECODER.decode(delivery.record()).to_dict()
        kept.setdefault(event["event_id"], event)
    return list(kept.values())


@pytest.mark.parametrize("provider", ["sawt", "sarj", "saaya"])
def test_every_order_of_a_conversation_folds_to_its_row(provider: str) -> None:
    """tests/call_sequences.py's conversations (redeliveries, retries, the repeated
    transition), in their seeded orders and in 300 more random ones."""
    for conversation in call_sequences.conversations(provider, "unit"):
        top = DECODER.decode(conversation.delivery(conversation.top).record()).event_id
        extra = [random.Random(seed).sample(conversation.deliveries,
                                            len(conversation.deliveries))
                 for seed in range(300)]
        for order in call_sequences.orders(conversation.deliveries) + [
                call_sequences._retries_after_originals(o) for o in extra]:
            events = _decode_in_order(order)
            lifecycle = [e for e in events if e["type"] in STATE_RANK]
            row = folded(lifecycle)
            assert len(events) == conversation.events, conversation.name
            assert row["call_key"] == conversation.call_key
            assert {c: row[c] for c in call_sequences.ROW} == {
                **conversation.expected, "state_event_id": top}, (
                conversation.name, [d.label for d in order])


def test_a_retry_that_overtakes_its_original_changes_only_receipt_times() -> None:
    """The documented limit (docs/warehouse.md, "Redeliveries"): when a provider's retry
    is processed before its original (an original whose produce ingest gave up on, that
    reached Kafka late), the retry's copy is kept. The chain still decides the state;
    only the columns that come from that copy's receipt move."""
    conversation = call_sequences.sawt_on_hold("overtaken")
    sent = list(conversation.deliveries)
    retry = conversation.delivery("on hold again (retry 1)")
    overtaken = [retry] + [d for d in sent if d is not retry]
    row = folded([e for e in _decode_in_order(overtaken) if e["type"] in STATE_RANK])
    expected = {**conversation.expected, "state_event_id": DECODER.decode(
        conversation.delivery("on hold again").record()).event_id}
    moved = {"state_at", "last_event_at"}
    assert {c: row[c] for c in call_sequences.ROW if c not in moved} == {
        c: v for c, v in expected.items() if c not in moved}
    retried_at = call_sequences.at_ms(retry.raw.received_at_ms)
    assert row["state_at"] == row["last_event_at"] == retried_at
