"""Saaya: envelope ``{id, type, version, data, createdAt}``; 17 event types.

* Event type: the body's ``type``; version: the body's ``version`` (Saaya versions
  its payloads; the schema registry knows which versions are configured and
  rejects the others with ``unknown_version``).
* Dedupe key: the envelope ``id`` (delivery is at-least-once; a redelivery is the
  same event with the same id).
* Mapping: ``data.sessionId`` / ``agentId`` / ``campaignId`` are the subject ids;
  ``createdAt`` is ``occurred_at``. Typed fields, where the event carries them:
  ``durationMs`` / 1000 -> ``duration_s``; ``cost.totalUsd`` -> ``cost`` in USD;
  ``sentiment.avg`` -> ``sentiment`` and a derived ``sentiment_label``
  (< -0.25 negative, > 0.25 positive, else neutral; only for a score in [-1, 1],
  the scale the thresholds assume: the document states none); ``transcriptUrl``;
  ``metadata.callerNumber`` -> ``customer_number``; ``toolName``; ``error.code`` /
  ``error.message``; ``reason`` (escalation, pause); ``outcome`` (campaign rows);
  ``channel`` (the session's channel, e.g. ``voice``).

See docs/canonical.md for the mapping table.
"""

from __future__ import annotations

from typing import Any

from ...core.errors import MAPPING_FAILED, UNKNOWN_EVENT_TYPE, UNKNOWN_VERSION, Invalid
from ...core.record import RawDelivery
from ..adapter import MappingAdapter, num_or_none, obj_or_empty, str_or_none

PROVIDER = "saaya"

_str = str_or_none
_num = num_or_none
_obj = obj_or_empty

CANONICAL_TYPES: dict[str, str] = {
    "session.started": "session.started",
    "session.ended": "session.ended",
    "session.errored": "session.errored",
    "session.escalated": "session.escalated",
    "tool.called": "tool.called",
    "tool.errored": "tool.failed",
    "agent.created": "agent.created",
    "agent.updated": "agent.updated",
    "agent.published": "agent.published",
    "agent.rolledback": "agent.rolled_back",
    "campaign.created": "campaign.created",
    "campaign.started": "campaign.started",
    "campaign.paused": "campaign.paused",
    "campaign.row.completed": "campaign.row.completed",
    "campaign.completed": "campaign.completed",
    "kb.upload.completed": "kb.upload.completed",
    "kb.upload.failed": "kb.upload.failed",
}

# Sentiment score (-1..1) to label: documented in docs/canonical.md.
NEGATIVE_BELOW = -0.25
POSITIVE_ABOVE = 0.25
# The scale those thresholds assume. Saaya's document prints scores in it but states
# no range; a score outside it is passed on as sent, without a label.
SCORE_RANGE = (-1.0, 1.0)


def sentiment_label(score: float) -> str | None:
    if not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        return None
    if score < NEGATIVE_BELOW:
        return "negative"
    if score > POSITIVE_ABOVE:
        return "positive"
    return "neutral"


class SaayaAdapter(MappingAdapter):
    provider = PROVIDER
    canonical_types = CANONICAL_TYPES

    def identify(self, raw: RawDelivery, payload: dict[str, Any]) -> tuple[str, str | None, bool]:
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise Invalid(UNKNOWN_EVENT_TYPE, f"saaya: body has no string `type` ({event_type!r})")
        version = payload.get("version")
        if not isinstance(version, str) or not version:
            raise Invalid(UNKNOWN_VERSION, f"saaya {event_type}: body has no string `version` "
                                           f"({version!r})")
        # An unknown type is left to the schema registry: it tells an unknown
        # type of a known version (unknown_event_type) from an unconfigured
        # version (unknown_version).
        return event_type, version, False

    def dedupe_key(self, event_type: str, payload: dict[str, Any]) -> str:
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise Invalid(MAPPING_FAILED, f"saaya {event_type}: no envelope `id` to dedupe on")
        return event_id


    def _fields(self, payload: dict[str, Any], event_type: str) -> dict[str, Any]:
        data = _obj(payload.get("data"))
        duration_ms = _num(data.get("durationMs"))
        cost = _num(_obj(data.get("cost")).get("totalUsd"))
        sentiment = _num(_obj(data.get("sentiment")).get("avg"))
        error = _obj(data.get("error"))
        return dict(
            occurred_at=_str(payload.get("createdAt")),
            session_id=_str(data.get("sessionId")),
            agent_id=_str(data.get("agentId")),
            campaign_id=_str(data.get("campaignId")),
            customer_number=_str(_obj(data.get("metadata")).get("callerNumber")),
            duration_s=None if duration_ms is None else duration_ms / 1000,
            cost=cost,
            cost_currency="USD" if cost is not None else None,
            sentiment=sentiment,
            sentiment_label=None if sentiment is None else sentiment_label(sentiment),
            outcome=_str(data.get("outcome")) if event_type == "campaign.row.completed" else None,
            transcript_url=_str(data.get("transcriptUrl")),
            tool_name=_str(data.get("toolName")),
            error_code=_str(error.get("code")),
            error_message=_str(error.get("message")),
            reason=_str(data.get("reason")),
            channel=_str(data.get("channel")),
        )


ADAPTER = SaayaAdapter()
