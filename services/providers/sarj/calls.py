"""From the call API's answer to the webhook delivery Sarj.ai would have POSTed.

The document prints the webhook but not the API's response. Assumed (and stated in
docs/providers.md): ``GET /calls/{call_id}`` answers the call detail in the shape of
the webhook's ``payload`` (``type``, ``call_started``, ``call_data`` with a fresh
``recording_url``, ``response_body``), since the document says webhooks "push the same
data". An answer that is already the whole webhook envelope (``call_id`` and a
``payload`` object) is taken as it is. :func:`webhook_envelope` is the only place that
knows this: if the API turns out to answer otherwise, only it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class NotACallDetail(ValueError):
    """The answer has no ``type``: a call not in a terminal state yet, or an API that
    answers in another shape than assumed."""


def webhook_envelope(call_id: str, detail: Mapping[str, Any]) -> dict[str, Any]:
    """``{"call_id", "payload"}`` for ``detail`` (the API's answer for ``call_id``)."""
    payload = detail.get("payload")
    if isinstance(payload, dict):  # already the webhook's envelope
        if detail.get("call_id", call_id) != call_id:
            raise NotACallDetail(f"asked for {call_id}, the answer is for "
                                 f"{str(detail.get('call_id'))[:100]}")
        envelope = {**detail, "call_id": call_id}
    else:
        payload, envelope = dict(detail), {"call_id": call_id, "payload": dict(detail)}
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise NotACallDetail(f"call {call_id}: the answer has no payload type (a call not "
                             "finished yet, or an answer not shaped like the webhook's "
                             "payload)")
    return envelope


def webhook_body(call_id: str, detail: Mapping[str, Any]) -> bytes:
    """The delivery's bytes, as ``hookstream backfill`` puts them on the raw topic."""
    return orjson.dumps(webhook_envelope(call_id, detail))


def recording_url(call_id: str, detail: Mapping[str, Any]) -> str | None:
    """The call's (fresh) ``call_data.recording_url``, or None when it has none."""
    payload = webhook_envelope(call_id, detail)["payload"]
    call_data = payload.get("call_data")
    url = call_data.get("recording_url") if isinstance(call_data, dict) else None
    return url if isinstance(url, str) and url else None
