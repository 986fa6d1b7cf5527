"""From a canonical finished-call event to what the CRM is told, adapter-neutral.

One *call* in the CRM is identified by its **call key**: ``<provider>:<call id>``, or
``<provider>:<session id>`` for a voice session. Several events may describe one call
(a provider may send ``call.ended`` and, separately, ``call.analyzed``); each contributes
the fields it knows (:attr:`CallActivity.fields`), and :func:`merge` folds them
into one order-independent record, so ended-then-analyzed and analyzed-then-ended
end in the same CRM activity.

A recording's link: never the event's ``recording_url``. It may be signed and
expire (with no stated lifetime), so a CRM user would find it dead. Only
an archived location (``recording_location``, the recordings sink's copy) is
stored, when the event carries one and it is an http(s) URL a CRM user can open
(an ``s3://`` location is left out). Canonical
events carry none today (the recordings sink writes it to the warehouse, which the
CRM sink does not read), so the CRM gets no recording link: docs/sinks-crm.md.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from typing import Any

import orjson
import phonenumbers

from ...core.times import iso_to_ms
from ...providers import title as provider_title
from . import fit

# The canonical types the CRM sink handles: a call (or voice session) is over.
FINISHED_TYPES = frozenset({"call.ended", "call.analyzed", "call.not_connected",
                            "session.ended"})


# Canonical fields copied when the event sets them (not null): text, and numbers.
_TEXT = ("provider", "call_id", "session_id", "agent_id", "campaign_id", "direction",
         "status", "outcome", "customer_number", "started_at", "ended_at", "summary",
         "sentiment_label", "transcript_url", "recording_location")
_NUMBERS = ("duration_s", "sentiment")
# Fields that become links in the CRM: kept only when web_url() accepts them.
_URLS = ("transcript_url", "recording_location")
# Never kept: the expiring signed URL (a record merged before this rule may hold it).
_NEVER = ("recording_url",)
_WEB_URL = re.compile(r"https?://[^\x00-\x20\x7f/?#@]+(?:[/?#][^\x00-\x20\x7f]*)?",
                      re.IGNORECASE)


class Unmappable(ValueError):
    """The event cannot become a CRM call (no event id, no call or session id)."""


@dataclasses.dataclass(frozen=True)
class CallActivity:
    event_id: str
    event_type: str
    provider: str
    call_key: str
    phone: str | None  # normalised, for the contact; None: log without a contact
    raw_phone: str | None  # as the provider sent it
    fields: dict[str, Any]  # what this event knows about the call (no nulls)


def normalize_phone(raw: str | None, default_country_code: str = "") -> str | None:
    """The number in E.164 (``+<country code><number>``) for the contact, or None.

    Read with Google's libphonenumber rules (the ``phonenumbers`` package): a number
    with ``+`` or ``00`` is international; international numbers without ``+``
    (``9665...``, as some providers send them) too; a national number (one leading
    ``0``) is read in the country of ``default_country_code`` (a calling code such as
    ``966``). With no
    default country a national number gives None: a guess would create a contact
    that never matches the same customer's ``+966...`` form. A number that cannot be
    a phone number of its country (too short or too long) gives None as well.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    plus = text.startswith(("+", "\uff0b"))
    # Any decimal digit (Arabic-Indic, fullwidth...) as its ASCII digit.
    digits = "".join(str(int(c)) for c in text if c.isdecimal())
    if digits.startswith("00") and not plus:
        plus, digits = True, digits[2:]
    if len(digits) < 5:
        return None
    region: str | None = None
    if plus or not digits.startswith("0"):
        candidate = "+" + digits
    elif default_country_code:
        region = phonenumbers.region_code_for_country_code(int(default_country_code))
        if region == phonenumbers.UNKNOWN_REGION:
            return None
        candidate = digits
    else:
        return None  # national, and no country to read it in
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def web_url(value: Any) -> str | None:
    """``value`` when it is an absolute http(s) URL with a host and no whitespace or
    control characters, else None. ``format: uri`` also passes ``javascript:``,
    ``data:`` and ``file:`` URLs, which must never become a link in the CRM."""
    if isinstance(value, str) and _WEB_URL.fullmatch(value):
        return value
    return None


def call_key(event: dict[str, Any]) -> str:
    provider = event.get("provider")
    subject = event.get("call_id") or event.get("session_id")
    if not isinstance(provider, str) or not provider:
        raise Unmappable("the event has no provider")
    if not isinstance(subject, str) or not subject:
        raise Unmappable(f"{event.get('type')} has neither call_id nor session_id")
    return f"{provider}:{subject}"


def _transcript(turns: Any, max_chars: int) -> list[dict[str, str]] | None:
    if not isinstance(turns, list):
        return None
    kept: list[dict[str, str]] = []
    used = 0
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        role, text = str(turn.get("role") or ""), str(turn.get("text") or "")
        if used + len(text) > max_chars:
            kept.append({"role": role, "text": text[:max(0, max_chars - used)] + " [...]"})
            break
        kept.append({"role": role, "text": text})
        used += len(text)
    return kept


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, an int past
    float's range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def activity(event: dict[str, Any], *, transcript_max_chars: int = 20000,
             default_country_code: str = "") -> CallActivity:
    """What ``event`` (one of :data:`FINISHED_TYPES`) tells the CRM."""
    event_type = event.get("type")
    if not isinstance(event_type, str) or event_type not in FINISHED_TYPES:
        raise Unmappable(f"{event_type!r} is not a finished-call type")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise Unmappable("the event has no event_id")
    key = call_key(event)
    # The schema already guarantees these types; anything else is dropped, never rendered.
    fields: dict[str, Any] = {k: event[k] for k in _TEXT if isinstance(event.get(k), str)}
    for name in _URLS:
        if name in fields and web_url(fields[name]) is None:
            del fields[name]  # not an http(s) URL: never a link in the CRM
    fields.update({k: number for k in _NUMBERS
                   if (number := _finite(event.get(k))) is not None})
    turns = _transcript(event.get("transcript"), transcript_max_chars)
    if turns is not None:
        fields["transcript"] = turns
    if isinstance(event.get("channel"), str):  # a session's channel (canonical since v1)
        fields["channel"] = event["channel"]
    if isinstance(event.get("received_at"), str):
        fields["first_seen_at"] = event["received_at"]
    fields["types"] = [event_type]
    fields["event_ids"] = [event_id]
    raw_phone = event.get("customer_number")
    raw_phone = raw_phone if isinstance(raw_phone, str) and raw_phone else None
    try:  # everything here is sent as JSON: refuse what cannot be (a lone surrogate)
        orjson.dumps([fields, key, raw_phone])
    except orjson.JSONEncodeError as exc:
        raise Unmappable(f"not encodable as JSON: {exc}") from None
    return CallActivity(
        event_id=event_id, event_type=str(event_type), provider=str(event["provider"]),
        call_key=key, phone=normalize_phone(raw_phone, default_country_code),
        raw_phone=raw_phone, fields=fields)


def merge(existing: dict[str, Any] | None, new: CallActivity) -> dict[str, Any]:
    """The call's record after ``new``: later non-null values win, except that the
    first-seen time is the earliest and the type and event id lists are sorted unions,
    so the result does not depend on the order events arrive in."""
    merged = dict(existing or {})
    for name, value in new.fields.items():
        if name in ("types", "event_ids"):
            merged[name] = sorted(set(merged.get(name) or []) | set(value))
        elif name == "first_seen_at" and merged.get(name):
            merged[name] = min(merged[name], value)
        else:
            merged[name] = value
    for name in _NEVER:
        merged.pop(name, None)
    merged["call_key"] = new.call_key
    if new.phone is not None:
        merged["phone"] = new.phone
    return merged


def applied(existing: dict[str, Any] | None, event_id: str) -> bool:
    """Has the event already been folded into this call record?"""
    return bool(existing) and event_id in (existing or {}).get("event_ids", [])


# --------------------------------------------------------------------- rendering
# HubSpot hs_call_status values.
_NOT_CONNECTED_STATUS = {
    "no_answer": "NO_ANSWER",
    "user_rejected": "BUSY",
    "user_unavailable": "NO_ANSWER",
    "automation": "NO_ANSWER",
    "failed": "FAILED",
}
_ENDED_STATUS = {
    "failed": "FAILED", "error": "FAILED", "busy": "BUSY", "no_answer": "NO_ANSWER",
    "unanswered": "NO_ANSWER", "canceled": "CANCELED", "cancelled": "CANCELED",
}


def call_status(record: dict[str, Any]) -> str | None:
    """HubSpot's ``hs_call_status`` for the merged record (None: not known yet)."""
    types = set(record.get("types") or [])
    if "call.not_connected" in types:
        return _NOT_CONNECTED_STATUS.get(str(record.get("outcome")), "NO_ANSWER")
    if "call.ended" in types:
        return _ENDED_STATUS.get(str(record.get("status") or "").lower(), "COMPLETED")
    if "session.ended" in types:
        return "COMPLETED"
    return None  # only call.analyzed so far


def title(record: dict[str, Any]) -> str:
    provider = provider_title(str(record.get("provider")))
    types = set(record.get("types") or [])
    if "call.not_connected" in types:
        outcome = str(record.get("outcome") or "unknown").replace("_", " ")
        return f"{provider} call not connected: {outcome}"
    if not record.get("call_id") and record.get("session_id"):  # a session, not a call
        return f"{provider} {record.get('channel') or 'voice'} session"
    direction = record.get("direction")
    return f"{provider} {direction} call" if direction else f"{provider} call"


def timestamp(record: dict[str, Any]) -> str | None:
    """When the call happened: its end, else its start, else when hookstream first saw it."""
    for name in ("ended_at", "started_at", "first_seen_at"):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def timestamp_ms(record: dict[str, Any]) -> str | None:
    """:func:`timestamp` as HubSpot's ``hs_timestamp`` wants it: UTC epoch milliseconds
    (a time without a zone is taken as UTC; one that does not parse is skipped)."""
    for name in ("ended_at", "started_at", "first_seen_at"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            continue
        ms = iso_to_ms(value.strip())
        if ms is not None:
            return str(ms)
    return None


def sentiment_text(record: dict[str, Any]) -> str | None:
    label, score = record.get("sentiment_label"), record.get("sentiment")
    if label is None and score is None:
        return None
    if score is None:
        return str(label)
    return f"{label} ({score:+.2f})" if label else f"{score:+.2f}"


def body_html(record: dict[str, Any], max_chars: int = fit.MAX_CHARS) -> str:
    """The activity's notes: summary, sentiment, outcome, links, then the transcript.

    The *rendered* string is capped at ``max_chars`` (HubSpot's limit, counted as
    HubSpot counts): the transcript keeps as many whole turns as fit, the next one
    cut, and says how many turns were left out; past that the summary is cut."""
    esc = html.escape
    head: list[str] = []
    summary = str(record["summary"]) if record.get("summary") else ""
    sentiment = sentiment_text(record)
    if sentiment:
        head.append(f"<p><strong>Sentiment:</strong> {esc(sentiment)}</p>")
    if record.get("outcome"):
        head.append(f"<p><strong>Outcome:</strong> {esc(str(record['outcome']))}</p>")
    if record.get("duration_s") is not None:
        head.append(f"<p><strong>Duration:</strong> {float(record['duration_s']):g} s</p>")
    for name, label in (("transcript_url", "Transcript"), ("recording_location", "Recording")):
        url = web_url(record.get(name))
        if url:
            head.append(f'<p><strong>{label}:</strong> <a href="{esc(str(url))}">'
                        f"{esc(str(url))}</a></p>")
    subject = record.get("call_id") or record.get("session_id")
    tail = (f"<p><em>hookstream: {esc(str(record.get('provider')))} "
            f"{esc(str(subject))}</em></p>")

    def summary_html(text: str) -> str:
        return f"<p><strong>Summary:</strong> {esc(text)}</p>" if text else ""

    fixed = fit.size("".join(head) + tail)
    if fixed + fit.size(summary_html(summary)) > max_chars:
        summary = fit.cut(summary, max(0, max_chars - fixed), summary_html)
    used = fixed + fit.size(summary_html(summary))
    turns = record.get("transcript") or []
    transcript = _transcript_html(turns, max_chars - used) if turns else ""
    return summary_html(summary) + "".join(head) + transcript + tail


def _turn_html(role: str, text: str) -> str:
    return f"<strong>{html.escape(role)}:</strong> {html.escape(text)}"


def _transcript_html(turns: list[dict[str, str]], budget: int) -> str:
    """The transcript block in at most ``budget`` characters ("" when not even its
    heading fits)."""
    opening, closing = "<p><strong>Transcript</strong><br>", "</p>"
    lines = [_turn_html(str(t.get("role", "")), str(t.get("text", ""))) for t in turns]
    whole = opening + "<br>".join(lines) + closing
    if fit.size(whole) <= budget:
        return whole
    # Reserve room for the note that says what was left out (its longest form).
    note = f"<br><em>[transcript cut: {len(turns)} of {len(turns)} turns not shown]</em>"
    room = budget - fit.size(opening + closing + note)
    if room < 0:
        return ""
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        cost = fit.size(line) + (4 if kept else 0)  # "<br>"
        if used + cost > room:
            role = str(turns[index].get("role", ""))
            left = room - used - (4 if kept else 0) - fit.size(_turn_html(role, ""))
            if left > 20:  # a meaningful piece of the turn, cut
                text = fit.cut(str(turns[index].get("text", "")), left - 3,
                               lambda t: html.escape(t))
                kept.append(_turn_html(role, text) + "...")
            break
        kept.append(line)
        used += cost
    shown = len(kept)
    note = f"<br><em>[transcript cut: {len(turns) - shown} of {len(turns)} turns not shown]</em>"
    return opening + "<br>".join(kept) + note + closing
