"""Call state is a pure function of the set of a call's events (no database)."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import orjson

from hookstream.sinks.warehouse.store import CALL_FIELDS, fold_call

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "canonical" / "v1" / "examples"


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
