"""Sawt: a bare call object; the event name (routing key) travels outside the body.

Event name
==========

1. **Routing key.** When the delivery carried one (``RawDelivery.routing_key``,
   copied by ingest from where the source's ``routing_key_from`` says: a header,
   a query parameter, a path segment or a fixed value), it names the event.
   Surrounding whitespace is ignored; an empty value counts as absent. A value
   that is not one of the seven routing keys is ``unknown_event_type`` (it is
   never guessed around).
2. **Inferred from the body's shape** otherwise (``type_inferred`` is then true),
   checking in this order:

   a. ``call_summary``, ``user_sentiment``, ``call_evaluation`` or
      ``structured_data_result`` present -> ``call.analyzed``.
   b. ``tool_name``, ``error_type`` or ``error_message`` present -> a tool
      failure: ``tool.knowledge_base.failed`` when ``tool_name`` is
      ``"knowledge_base"`` (or, with no ``tool_name`` at all, when
      ``error_type`` is present); ``tool.function.failed`` for any other tool.
   c. a status-transition field present (``previous_call_status``,
      ``call_start_timestamp``, ``call_end_timestamp``, ``duration_s``,
      ``call_cost``, ``transcript_object``, ``previously_transferred_to_human``),
      or a terminal ``call_status`` -> ``call.ended`` when ``call_status`` is
      terminal (see ``TERMINAL_STATUSES``), ``call_end_timestamp`` is not null,
      or ``transcript_object`` is present; ``call.updated`` otherwise.
   d. otherwise (the first two events carry only ids, numbers, status and
      direction): ``call.initializing`` when ``call_status`` is
      ``RECEIVED_REQUEST_TO_AGENT``, or when there is no ``agent_version`` and
      the status is not ``IN_CALL``; ``call.started`` otherwise.

   Without a routing key a ``call.updated`` into a terminal status cannot be
   told from ``call.ended``; it is inferred as ``call.ended``. Configure the
   routing key where the subscription allows it (docs/sources.md).

Dedupe key
==========

Sawt sends no event id. The rule (issue 13): identical content is a redelivery,
different content is a different event. The key is ``call_id``, the event name
and the SHA-256 of the payload's canonical JSON (keys sorted, no whitespace),
joined with the ASCII unit separator (``\\x1f``; an absent/null call id is an
empty string). A redelivery (the same bytes, or the same JSON re-serialised)
gets the same key; a second X->Y transition of one call, whose duration or
cost has moved on, is an event of its own. Two transitions that are the same
in every byte cannot be told from a redelivery: they are one event.

Mapping
=======

``call_status`` / ``previous_call_status`` / ``direction`` lower-cased;
``customer_number`` is ``from_number`` on INBOUND and ``to_number`` on OUTBOUND
calls; ``call_cost`` is ``cost`` with an unknown currency (the document does not
state one); ``user_sentiment`` lower-cased is ``sentiment_label``;
``call_summary`` is ``summary``; ``transcript_object`` roles AGENT/CUSTOMER
become ``agent`` / ``customer``; ``error_type`` is ``error_code``.
``occurred_at``: ``call_end_timestamp`` for call.ended, ``call_start_timestamp``
for call.started, ``timestamp`` for tool failures, else null. Not for
call.updated: its ``call_start_timestamp`` is when the *call* started, the same
on every update of the call, not when this transition happened (the document
gives no time for a transition). The warehouse orders a call's updates by the
``previous_call_status`` chain, then by receive time (docs/warehouse.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ...core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, Invalid
from ...core.events import TranscriptTurn
from ...core.record import RawDelivery
from ..adapter import MappingAdapter, lower_or_none, num_or_none, str_or_none

PROVIDER = "sawt"

_str = str_or_none
_lower = lower_or_none
_num = num_or_none
SEP = "\x1f"  # ASCII unit separator: cannot occur in ids, statuses or timestamps

CANONICAL_TYPES: dict[str, str] = {
    "call.initializing": "call.initializing",
    "call.started": "call.started",
    "call.updated": "call.updated",
    "call.ended": "call.ended",
    "call.analyzed": "call.analyzed",
    "tool.knowledge_base.failed": "tool.failed",
    "tool.function.failed": "tool.failed",
}

TOOL_FAILURES = ("tool.knowledge_base.failed", "tool.function.failed")
LIFECYCLE = ("call.initializing", "call.started", "call.updated", "call.ended")

ANALYSIS_FIELDS = ("call_summary", "user_sentiment", "call_evaluation", "structured_data_result")
TOOL_FIELDS = ("tool_name", "error_type", "error_message")
TRANSITION_FIELDS = (
    "previous_call_status", "call_start_timestamp", "call_end_timestamp", "duration_s",
    "call_cost", "transcript_object", "previously_transferred_to_human",
)
# Statuses after which a call is over. The document shows only FINISHED; the
# rest are the usual telephony end states, compared upper-cased.
TERMINAL_STATUSES = frozenset({
    "FINISHED", "COMPLETED", "ENDED", "FAILED", "ERROR", "NO_ANSWER", "BUSY",
    "CANCELED", "CANCELLED", "REJECTED", "DECLINED", "UNANSWERED", "VOICEMAIL",
    "DISCONNECTED", "HANGUP", "HUNG_UP", "TIMEOUT", "NOT_CONNECTED",
})
INITIAL_STATUS = "RECEIVED_REQUEST_TO_AGENT"
ACTIVE_STATUS = "IN_CALL"
KNOWLEDGE_BASE_TOOL = "knowledge_base"

ROLES = {"agent": "agent", "assistant": "agent", "bot": "agent",
         "customer": "customer", "user": "customer", "caller": "customer"}


def _part(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) of the payload's canonical JSON: keys sorted at every level, no
    whitespace. Equal for the same bytes and for the same JSON re-serialised (key
    order, spacing), different as soon as any value differs."""
    try:
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    # Not reached for a body orjson parsed within the decoder's depth cap (64); a
    # payload built otherwise (deeper than orjson writes) dead-letters, never raises.
    except orjson.JSONEncodeError as exc:
        raise Invalid(MAPPING_FAILED, f"sawt: payload not serialisable: {exc}") from None
    return hashlib.sha256(canonical).hexdigest()


def is_terminal(status: Any) -> bool:
    return isinstance(status, str) and status.upper() in TERMINAL_STATUSES


def infer(payload: dict[str, Any]) -> str:
    """The routing key a body of this shape was sent under (rules in the module doc)."""
    if any(k in payload for k in ANALYSIS_FIELDS):
        return "call.analyzed"
    if any(k in payload for k in TOOL_FIELDS):
        tool = payload.get("tool_name")
        if tool is None:
            is_kb = "error_type" in payload
        else:
            is_kb = tool == KNOWLEDGE_BASE_TOOL
        return "tool.knowledge_base.failed" if is_kb else "tool.function.failed"
    status = payload.get("call_status")
    if any(k in payload for k in TRANSITION_FIELDS) or is_terminal(status):
        ended = (
            is_terminal(status)
            or payload.get("call_end_timestamp") is not None
            or "transcript_object" in payload
        )
        return "call.ended" if ended else "call.updated"
    if status == INITIAL_STATUS or ("agent_version" not in payload and status != ACTIVE_STATUS):
        return "call.initializing"
    return "call.started"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class SawtAdapter(MappingAdapter):
    provider = PROVIDER
    canonical_types = CANONICAL_TYPES

    def identify(self, raw: RawDelivery, payload: dict[str, Any]) -> tuple[str, str | None, bool]:
        header = (raw.routing_key or "").strip()
        if header:
            if header not in CANONICAL_TYPES:
                raise Invalid(UNKNOWN_EVENT_TYPE, f"sawt: unknown routing key {header!r}")
            return header, None, False
        return infer(payload), None, True

    def dedupe_key(self, event_type: str, payload: dict[str, Any]) -> str:
        # No event id: the content is the identity (module doc). The call id and the
        # event name stay readable in front of the digest; the name keeps one body sent
        # under two routing keys two events, as before.
        return SEP.join((_part(payload.get("call_id")), event_type, content_digest(payload)))

    def _fields(self, payload: dict[str, Any], event_type: str) -> dict[str, Any]:
        direction = _lower(payload.get("direction"))
        customer_number = None
        if direction == "inbound":
            customer_number = _str(payload.get("from_number"))
        elif direction == "outbound":
            customer_number = _str(payload.get("to_number"))

        started_at = _str(payload.get("call_start_timestamp"))
        ended_at = _str(payload.get("call_end_timestamp"))
        if event_type == "call.ended":
            occurred_at = ended_at
        elif event_type == "call.started":
            occurred_at = started_at
        elif event_type in TOOL_FAILURES:
            occurred_at = _str(payload.get("timestamp"))
        else:
            occurred_at = None

        transcript = None
        turns = payload.get("transcript_object")
        if isinstance(turns, list):
            transcript = []
            for turn in turns:
                if not isinstance(turn, dict):
                    raise TypeError(f"transcript_object item is {type(turn).__name__}")
                role = (_lower(turn.get("role")) or "unknown")
                transcript.append(TranscriptTurn(ROLES.get(role, role), _text(turn.get("text"))))

        cost = _num(payload.get("call_cost"))
        return dict(
            occurred_at=occurred_at,
            call_id=_str(payload.get("call_id")),
            agent_id=_str(payload.get("agent_id")),
            status=_lower(payload.get("call_status")),
            previous_status=_lower(payload.get("previous_call_status")),
            direction=direction,
            customer_number=customer_number,
            started_at=started_at,
            ended_at=ended_at,
            duration_s=_num(payload.get("duration_s")),
            cost=cost,
            cost_currency=None,  # Sawt does not state the currency of call_cost
            sentiment_label=_lower(payload.get("user_sentiment")),
            summary=_str(payload.get("call_summary")),
            transcript=transcript,
            tool_name=_str(payload.get("tool_name")),
            error_code=_str(payload.get("error_type")),
            error_message=_str(payload.get("error_message")),
        )


ADAPTER = SawtAdapter()
