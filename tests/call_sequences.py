"""Issue 13, item 2: the deliveries of one call (or Saaya session) as its provider sends
them, redeliveries included; the orders the pipeline may process them in; and the
``calls`` row every such order must fold to.

A delivery is what ingest wrote to the raw topic: the body, and the receive time ingest
stamped on it (``hs-received-at``). Shuffling models the pipeline processing one call's
deliveries out of order (a replay, a redrive, a spool drained late, a rebalance); each
delivery keeps its receive time, as it does on the raw topic. Two kinds of redelivery:

* the same raw record again (``again``): Kafka's at-least-once, a replay, a redrive;
  same bytes, same receive time, anywhere in the order;
* the provider's retry (``retry``): the same bytes received again a few seconds
  later, a new receipt. It is processed after the delivery it retries (one call's
  deliveries share a raw partition, keyed by call id or event id): the copy processed
  first is the one the pipeline keeps, so a retry overtaking its original would stand
  in for it, receive time included (docs/warehouse.md, "Monotonic call state").

Used by ``tests/unit/sinks/warehouse/test_fold.py`` (the fold alone, every order) and
``tests/integration/test_call_order.py`` (the real normalizer, dedupe table, Kafka and
warehouse).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

import orjson

from hookstream.core.events import iso_ms
from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.devtools.samples import samples

BASE_MS = 1_779_000_000_000  # 2026-05-17T06:40:00Z: a month partition of its own
STEP_MS = 20_000  # between two deliveries the provider sends
RETRY_MS = 2_000  # Sarj.ai's retry interval; the others state none
SEEDS = (1, 2, 3, 5, 8, 13)

# The calls columns every test compares, in this order.
ROW = ("status", "last_event_type", "state_rank", "direction", "customer_number", "agent_id",
       "started_at", "ended_at", "duration_s", "cost", "cost_currency", "sentiment",
       "sentiment_label", "summary", "outcome", "transcript", "transcript_url",
       "recording_url", "state_at", "state_event_id", "first_event_at", "last_event_at")


def at_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclasses.dataclass(frozen=True)
class Delivery:
    label: str
    raw: RawDelivery
    retry_of: str | None = None  # the label of the delivery this is a provider retry of

    def record(self) -> LocalRecord:
        return LocalRecord(self.raw.body, self.raw.headers(),
                           key=natural_key(self.raw.provider, self.raw.body))


def natural_key(provider: str, body: bytes) -> bytes | None:
    """The raw record's key, as ingest sets it (``ProviderSpec.natural_key``)."""
    from hookstream.providers import PROVIDERS

    key: bytes | None = PROVIDERS[provider].natural_key(body)
    return key


@dataclasses.dataclass(frozen=True)
class Conversation:
    name: str
    provider: str
    subject: str  # the call or session id
    deliveries: tuple[Delivery, ...]  # as sent: originals, retries, records seen again
    events: int  # distinct events among them (rows in ``events``)
    top: str  # the label of the delivery the call's state must come from
    expected: dict[str, Any]  # ROW's columns but state_event_id (the top's event id)

    @property
    def call_key(self) -> str:
        return f"{self.provider}:{self.subject}"

    def delivery(self, label: str) -> Delivery:
        return next(d for d in self.deliveries if d.label == label)


class _Sender:
    """Builds one conversation's deliveries: receive times one STEP apart."""

    def __init__(self, provider: str, source: str, start_ms: int) -> None:
        self.provider, self.source = provider, source
        self.now_ms = start_ms
        self.out: list[Delivery] = []

    def send(self, label: str, body: dict[str, Any], routing_key: str | None = None,
             after_ms: int = STEP_MS) -> Delivery:
        self.now_ms += after_ms
        delivery = Delivery(label, RawDelivery(
            source=self.source, provider=self.provider, received_at_ms=self.now_ms,
            request_id=f"req-{label}-{self.now_ms}", body=orjson.dumps(body),
            content_type="application/json", routing_key=routing_key))
        self.out.append(delivery)
        return delivery

    def delivery(self, label: str) -> Delivery:
        return next(d for d in self.out if d.label == label)

    def retry(self, label: str, times: int = 1) -> None:
        """The provider sends ``label``'s bytes again, RETRY_MS apart."""
        original = self.delivery(label)
        for n in range(1, times + 1):
            ms = original.raw.received_at_ms + n * RETRY_MS
            self.out.append(Delivery(f"{label} (retry {n})", dataclasses.replace(
                original.raw, received_at_ms=ms, request_id=f"req-{label}-retry-{n}"),
                retry_of=label))

    def again(self, label: str) -> None:
        """The raw record of ``label`` is consumed again (same bytes, same receipt)."""
        self.out.append(dataclasses.replace(self.delivery(label),
                                            label=f"{label} (record again)"))


# --- Sawt --------------------------------------------------------------------------

SAWT_CALL = {"agent_id": "agent_456", "to_number": "966500000000",
             "from_number": "966511111111", "direction": "OUTBOUND"}


def _sawt_start(call_id: str, start_ms: int) -> tuple[_Sender, str]:
    """Initializing, dialling, ringing, answered, on hold, back, on hold again (the
    repeated transition IN_CALL -> ON_HOLD), and a tool failure in between."""
    s = _Sender("sawt", "sawt-main", start_ms)
    call = {"call_id": call_id, **SAWT_CALL}
    started = iso_ms(start_ms + 4 * STEP_MS - 500)

    def update(prev: str, status: str, duration: float, cost: float,
               start: str | None = started) -> dict[str, Any]:
        return {**call, "call_status": status, "previous_call_status": prev,
                "agent_version": "v2", "call_start_timestamp": start,
                "call_end_timestamp": None, "duration_s": duration, "call_cost": cost}

    s.send("initializing", {**call, "call_status": "RECEIVED_REQUEST_TO_AGENT"},
           "call.initializing")
    s.send("dialling", update("RECEIVED_REQUEST_TO_AGENT", "CALLING", 0, 0, None),
           "call.updated")
    s.send("ringing", update("CALLING", "RINGING", 0, 0, None), "call.updated")
    s.send("started", {**call, "call_status": "IN_CALL", "agent_version": "v2"},
           "call.started")
    s.send("answered", update("RINGING", "IN_CALL", 0, 0), "call.updated")
    s.send("on hold", update("IN_CALL", "ON_HOLD", 30, 0.4), "call.updated")
    s.retry("on hold")
    s.send("tool failed", {**call, "tool_name": "send_sms",
                           "error_message": "Internal API timeout",
                           "timestamp": iso_ms(s.now_ms + 1000)}, "tool.function.failed")
    s.send("resumed", update("ON_HOLD", "IN_CALL", 45, 0.6), "call.updated")
    # Sent 300 ms after "resumed", to another ingest replica whose clock is 500 ms
    # behind: stamped 200 ms *before* it. Receive order alone would leave the call
    # IN_CALL; the chain (ON_HOLD entered twice, left once) says ON_HOLD.
    s.send("on hold again", update("IN_CALL", "ON_HOLD", 70, 0.9), "call.updated",
           after_ms=-200)
    s.retry("on hold again")
    s.again("answered")
    return s, started


def sawt_on_hold(call_id: str, start_ms: int = BASE_MS) -> Conversation:
    """A call still in progress: its last transition is the second IN_CALL -> ON_HOLD
    (issue 13: four and more updates whose last is not IN_CALL folded to in_call)."""
    s, started = _sawt_start(call_id, start_ms)
    on_hold_again = s.delivery("on hold again").raw.received_at_ms
    resumed = s.delivery("resumed").raw.received_at_ms
    return Conversation(
        "sawt on hold", "sawt", call_id, tuple(s.out), events=9, top="on hold again",
        expected=dict(
            status="on_hold", last_event_type="call.updated", state_rank=30,
            direction="outbound", customer_number="966500000000", agent_id="agent_456",
            started_at=at(started), ended_at=None, duration_s=70.0, cost=0.9,
            cost_currency=None, sentiment=None, sentiment_label=None, summary=None,
            outcome=None, transcript=None, transcript_url=None, recording_url=None,
            state_at=at_ms(on_hold_again), first_event_at=at_ms(start_ms + STEP_MS),
            last_event_at=at_ms(resumed)))


def sawt_finished(call_id: str, start_ms: int = BASE_MS) -> Conversation:
    """The same call, resumed, ended (with its transcript) and analysed."""
    s, started = _sawt_start(call_id, start_ms)
    call = {"call_id": call_id, **SAWT_CALL}
    s.send("resumed again", {**call, "call_status": "IN_CALL", "previous_call_status":
                             "ON_HOLD", "agent_version": "v2", "call_start_timestamp": started,
                             "call_end_timestamp": None, "duration_s": 80, "call_cost": 1.0},
           "call.updated")
    ended = iso_ms(s.now_ms + STEP_MS - 5000)  # cleanup takes a few seconds
    s.send("ended", {**call, "call_status": "FINISHED", "previous_call_status": "IN_CALL",
                     "agent_version": "v2", "call_start_timestamp": started,
                     "call_end_timestamp": ended, "duration_s": 120, "call_cost": 1.5,
                     "transcript_object": [{"role": "AGENT", "text": "Hello"},
                                           {"role": "CUSTOMER", "text": "Not now"}],
                     "previously_transferred_to_human": False}, "call.ended")
    s.retry("ended")
    s.send("analyzed", {"call_id": call_id, "call_summary": "Customer asked to call later.",
                        "user_sentiment": "NEGATIVE", "call_evaluation": False,
                        "structured_data_result": None}, "call.analyzed")
    s.again("analyzed")
    analyzed = s.now_ms
    return Conversation(
        "sawt finished", "sawt", call_id, tuple(s.out), events=12, top="ended",
        expected=dict(
            status="finished", last_event_type="call.ended", state_rank=40,
            direction="outbound", customer_number="966500000000", agent_id="agent_456",
            started_at=at(started), ended_at=at(ended), duration_s=120.0, cost=1.5,
            cost_currency=None, sentiment=None, sentiment_label="negative",
            summary="Customer asked to call later.", outcome=None,
            transcript=[{"role": "agent", "text": "Hello"},
                        {"role": "customer", "text": "Not now"}],
            transcript_url=None, recording_url=None, state_at=at(ended),
            first_event_at=at_ms(start_ms + STEP_MS), last_event_at=at_ms(analyzed)))


# --- Sarj.ai -------------------------------------------------------------------------


def _sample(provider: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(
        next(s for s in samples(provider) if s.name == name).body)
    return found


def sarj_complete(call_id: str, start_ms: int = BASE_MS) -> Conversation:
    """One ``complete`` webhook, retried three times 2 s apart (the document's retry
    policy), and its raw record consumed twice."""
    s = _Sender("sarj", "sarj-main", start_ms)
    body = _sample("sarj", "complete")
    body["call_id"] = body["payload"]["call_data"]["call_id"] = call_id
    body["payload"]["call_data"]["total_duration"] = 47.5
    data = body["payload"]["call_data"]
    s.send("complete", body)
    s.retry("complete", times=3)
    s.again("complete")
    return Conversation(
        "sarj complete", "sarj", call_id, tuple(s.out), events=1, top="complete",
        expected=dict(
            status="completed", last_event_type="call.ended", state_rank=40,
            direction="outbound", customer_number="+966512345678", agent_id=None,
            started_at=at(data["started_at"]), ended_at=at(data["ended_at"]),
            duration_s=47.5, cost=None, cost_currency=None, sentiment=None,
            sentiment_label=None, summary=None, outcome=None,
            transcript=[{"role": "agent" if m["role"] == "assistant" else "customer",
                         "text": m["content"]}
                        for m in data["enhanced_transcript"]["transcript"]["messages"]],
            transcript_url=None, recording_url=data["recording_url"],
            state_at=at(data["ended_at"]), first_event_at=at(data["ended_at"]),
            last_event_at=at(data["ended_at"])))


def sarj_no_answer(call_id: str, start_ms: int = BASE_MS) -> Conversation:
    s = _Sender("sarj", "sarj-main", start_ms)
    s.send("no_answer", {"call_id": call_id, "payload": {"type": "no_answer"}})
    s.retry("no_answer", times=2)
    s.again("no_answer")
    received = at_ms(start_ms + STEP_MS)  # no time in the body: the receive time
    return Conversation(
        "sarj no_answer", "sarj", call_id, tuple(s.out), events=1, top="no_answer",
        expected=dict(
            status=None, last_event_type="call.not_connected", state_rank=40,
            direction=None, customer_number=None, agent_id=None, started_at=None,
            ended_at=None, duration_s=None, cost=None, cost_currency=None, sentiment=None,
            sentiment_label=None, summary=None, outcome="no_answer", transcript=None,
            transcript_url=None, recording_url=None, state_at=received,
            first_event_at=received, last_event_at=received))


# --- Saaya ---------------------------------------------------------------------------


def _saaya(name: str, session_id: str, event_id: str, created: str,
           **data: Any) -> dict[str, Any]:
    body = _sample("saaya", name)
    body["id"] = event_id
    body["createdAt"] = created
    body["data"] = {**body["data"], "sessionId": session_id, **data}
    return body


SAAYA_AGENT = "agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A"


def _saaya_start(session_id: str, start_ms: int) -> _Sender:
    s = _Sender("saaya", "saaya-main", start_ms)
    s.send("started", _saaya("session.started", session_id, f"evt_start_{session_id}",
                             "2026-04-27T10:11:26Z", agentId=SAAYA_AGENT))
    s.send("tool called", _saaya("tool.called", session_id, f"evt_tool_{session_id}",
                                 "2026-04-27T10:12:03Z", agentId=SAAYA_AGENT))
    s.send("escalated", _saaya("session.escalated", session_id, f"evt_esc_{session_id}",
                               "2026-04-27T10:13:10Z", agentId=SAAYA_AGENT))
    s.retry("escalated")
    s.again("started")
    return s


def saaya_ended(session_id: str, start_ms: int = BASE_MS) -> Conversation:
    s = _saaya_start(session_id, start_ms)
    s.send("ended", _saaya("session.ended", session_id, f"evt_end_{session_id}",
                           "2026-04-27T10:14:31Z", agentId=SAAYA_AGENT))
    s.retry("ended", times=2)
    data = _sample("saaya", "session.ended")["data"]
    return Conversation(
        "saaya ended", "saaya", session_id, tuple(s.out), events=4, top="ended",
        expected=dict(
            status=None, last_event_type="session.ended", state_rank=40, direction=None,
            customer_number="+966551234567", agent_id=SAAYA_AGENT, started_at=None,
            ended_at=None, duration_s=184.32, cost=0.0184, cost_currency="USD",
            sentiment=0.32, sentiment_label="positive", summary=None, outcome=None,
            transcript=None, transcript_url=data["transcriptUrl"], recording_url=None,
            state_at=at("2026-04-27T10:14:31Z"), first_event_at=at("2026-04-27T10:11:26Z"),
            last_event_at=at("2026-04-27T10:14:31Z")))


def saaya_errored(session_id: str, start_ms: int = BASE_MS) -> Conversation:
    s = _saaya_start(session_id, start_ms)
    s.send("errored", _saaya("session.errored", session_id, f"evt_err_{session_id}",
                             "2026-04-27T10:15:02Z", agentId=SAAYA_AGENT))
    s.again("errored")
    return Conversation(
        "saaya errored", "saaya", session_id, tuple(s.out), events=4, top="errored",
        expected=dict(
            status=None, last_event_type="session.errored", state_rank=40, direction=None,
            customer_number="+966551234567", agent_id=SAAYA_AGENT, started_at=None,
            ended_at=None, duration_s=51.87, cost=None, cost_currency=None, sentiment=None,
            sentiment_label=None, summary=None, outcome=None, transcript=None,
            transcript_url=None, recording_url=None,
            state_at=at("2026-04-27T10:15:02Z"), first_event_at=at("2026-04-27T10:11:26Z"),
            last_event_at=at("2026-04-27T10:15:02Z")))


BUILDERS = {"sawt": (sawt_on_hold, sawt_finished), "sarj": (sarj_complete, sarj_no_answer),
            "saaya": (saaya_ended, saaya_errored)}


def conversations(provider: str, tag: str) -> list[Conversation]:
    """The provider's conversations, their ids ending in ``tag`` (one set per order, so
    that every order is a call of its own in one warehouse)."""
    return [build(f"{provider}_{build.__name__}_{tag}") for build in BUILDERS[provider]]


def orders(deliveries: Sequence[Delivery], seeds: Sequence[int] = SEEDS
           ) -> list[list[Delivery]]:
    """The order sent, reversed, and one shuffle per seed (reproducible); in each, a
    provider's retry comes after the delivery it retries (module doc)."""
    found = [list(deliveries), list(reversed(deliveries))]
    for seed in seeds:
        shuffled = list(deliveries)
        random.Random(seed).shuffle(shuffled)
        found.append(shuffled)
    return [_retries_after_originals(order) for order in found]


def _retries_after_originals(order: list[Delivery]) -> list[Delivery]:
    out = list(order)
    for delivery in [d for d in order if d.retry_of is not None]:
        mine = out.index(delivery)
        original = next(i for i, d in enumerate(out) if d.label == delivery.retry_of)
        if mine < original:
            out.insert(original, out.pop(mine))  # right after it (the pop shifted it)
    return out
