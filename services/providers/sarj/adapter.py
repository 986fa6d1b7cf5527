"""Sarj.ai: envelope ``{call_id, payload: {type, ...}}``; one webhook per call.

* Event type: ``payload.type`` (``complete`` or one of the five not-connected
  types); Sarj.ai does not version its payloads (version ``None``).
* Dedupe key: ``f"{call_id}:{payload.type}"``. The document says to deduplicate
  on ``call_id`` (a call reaches exactly one terminal state); keeping the type in
  the key means a conflicting second webhook for the same call is not silently
  dropped. The dashboard's "Send test webhook" is a synthetic ``complete`` and
  dedupes like any other ``complete`` (on its own call id).
* Mapping: ``complete`` -> ``call.ended`` with ``call_data``'s status,
  direction, ``phone_number`` (``customer_number``), ``started_at`` /
  ``ended_at`` (``ended_at`` is ``occurred_at``), ``total_duration``
  (``duration_s``), ``recording_url`` and the transcript
  (``enhanced_transcript.transcript.messages``, roles assistant/user ->
  agent/customer, text from ``content``, else from ``text`` when ``content`` is
  absent or null). ``total_duration`` may be any number (47.5 stays 47.5). The
  five not-connected types -> ``call.not_connected`` with ``outcome`` = the
  payload type; they carry nothing else, so ``occurred_at`` is null.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, Invalid
from ...core.events import TranscriptTurn
from ...core.record import RawDelivery
from ..adapter import MappingAdapter, lower_or_none, num_or_none, obj_or_empty, str_or_none

PROVIDER = "sarj"

_str = str_or_none
_lower = lower_or_none
_num = num_or_none
_obj = obj_or_empty

NOT_CONNECTED = ("no_answer", "user_rejected", "user_unavailable", "automation", "failed")
CANONICAL_TYPES: dict[str, str] = {
    "complete": "call.ended",
    **{t: "call.not_connected" for t in NOT_CONNECTED},
}

ROLES = {"assistant": "agent", "agent": "agent", "bot": "agent", "ai": "agent",
         "user": "customer", "customer": "customer", "human": "customer", "caller": "customer"}


def _text(value: Any) -> str:
    """A turn's text: a string, or the text parts of a content list, or JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                       for p in value):
        return "".join(p["text"] for p in value)
    return orjson.dumps(value).decode()


def transcript(call_data: dict[str, Any]) -> list[TranscriptTurn] | None:
    enhanced = _obj(call_data.get("enhanced_transcript"))
    messages = _obj(enhanced.get("transcript")).get("messages")
    if not isinstance(messages, list):
        return None
    turns = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"transcript message is {type(message).__name__}")
        role = _lower(message.get("role")) or "unknown"
        body = message.get("content")
        if body is None:  # absent or null: the turn may carry ``text`` instead
            body = message.get("text")
        turns.append(TranscriptTurn(ROLES.get(role, role), _text(body)))
    return turns


class SarjAdapter(MappingAdapter):
    provider = PROVIDER
    canonical_types = CANONICAL_TYPES

    def identify(self, raw: RawDelivery, payload: dict[str, Any]) -> tuple[str, str | None, bool]:
        inner = payload.get("payload")
        if not isinstance(inner, dict):
            raise Invalid(UNKNOWN_EVENT_TYPE, "sarj: body has no `payload` object")
        event_type = inner.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise Invalid(UNKNOWN_EVENT_TYPE,
                          f"sarj: body has no string `payload.type` ({event_type!r})")
        return event_type, None, False

    def dedupe_key(self, event_type: str, payload: dict[str, Any]) -> str:
        call_id = payload.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise Invalid(MAPPING_FAILED, f"sarj {event_type}: no `call_id` to dedupe on")
        return f"{call_id}:{event_type}"


    def _fields(self, payload: dict[str, Any], event_type: str) -> dict[str, Any]:
        inner = _obj(payload.get("payload"))
        call_data = _obj(inner.get("call_data"))
        started_at = _str(call_data.get("started_at")) or _str(inner.get("call_started"))
        ended_at = _str(call_data.get("ended_at"))
        return dict(
            occurred_at=ended_at if event_type == "complete" else None,
            call_id=_str(payload.get("call_id")),
            status=_lower(call_data.get("status")),
            direction=_lower(call_data.get("direction")),
            customer_number=_str(call_data.get("phone_number")),
            started_at=started_at,
            ended_at=ended_at,
            duration_s=_num(call_data.get("total_duration")),
            outcome=event_type if event_type in NOT_CONNECTED else None,
            transcript=transcript(call_data),
            recording_url=_str(call_data.get("recording_url")),
        )


ADAPTER = SarjAdapter()
