"""CRM adapters: how finished calls are written to a particular CRM.

:class:`CRMAdapter` is the interface the sink uses. Two implementations:

* :class:`HubSpotAdapter`, shaped like HubSpot's CRM API, a chunk of calls at a time
  in batch requests of at most ``batch_size`` inputs: contacts by a consistent batch
  read on the unique ``hookstream_phone_e164`` (``POST /crm/v3/objects/contacts/
  batch/read``), else one search by ``phone`` for hand-entered contacts (adopted),
  else a batch upsert on ``hookstream_phone_e164``; calls by a batch read on the
  unique ``hookstream_call_key``, merged, then one batch upsert on it
  (``POST /crm/v3/objects/calls/batch/upsert``); then the default call-to-contact
  associations (``POST /crm/v4/associations/calls/contacts/batch/associate/
  default``). ``Authorization: Bearer <token>``.
* :class:`WebhookAdapter`: POSTs one JSON document per event to a URL, with
  ``Idempotency-Key: <event_id>``; the receiver merges documents by ``call_key``.

Both are idempotent per event: writing the same event again leaves the CRM as it
was (upserts on unique properties; the applied event ids are kept on the activity).
See docs/sinks-crm.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
from collections import OrderedDict
from typing import Any, Generic, Protocol, TypeVar

import httpx
import orjson

from . import fit
from .http import CRMConflict, CRMHttp, CRMTransient
from .mapping import (
    CallActivity,
    applied,
    body_html,
    call_status,
    merge,
    timestamp,
    timestamp_ms,
    title,
    web_url,
)
from .settings import CRMSettings

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

CALL_KEY_PROPERTY = "hookstream_call_key"
PHONE_PROPERTY = "hookstream_phone_e164"
DETAILS_PROPERTY = "hookstream_details"
CONTACTS = "/crm/v3/objects/contacts"
CALLS = "/crm/v3/objects/calls"


class CRMAdapter(Protocol):
    name: str

    async def log_call(self, activity: CallActivity) -> None:
        """Upsert the contact (when there is a number) and create or update the call
        activity; idempotent per ``activity.event_id``. Raises the errors of
        :mod:`hookstream.sinks.crm.http` (rejected, rate limited, unavailable)."""
        ...

    async def log_calls(self, activities: list[CallActivity]) -> None:
        """:meth:`log_call` for several events at once (at most ``batch_size``); the
        errors are the chunk's as a whole."""
        ...

    async def aclose(self) -> None: ...


class LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


def _id_of(document: Any, operation: str) -> str:
    if isinstance(document, dict) and document.get("id") not in (None, ""):
        return str(document["id"])
    raise CRMTransient(operation, "answer without an object id", cause="bad_response")


def _results(document: Any, operation: str) -> list[dict[str, Any]]:
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        raise CRMTransient(operation, "search answer without results", cause="bad_response")
    return [r for r in results if isinstance(r, dict) and r.get("id") not in (None, "")]


def _oldest(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several matches (a duplicate from an earlier race), always the same one."""
    def order(r: dict[str, Any]) -> tuple[str, int, str]:
        rid = str(r["id"])
        return (str(r.get("createdAt") or ""), int(rid) if rid.isdigit() else 0, rid)
    return min(results, key=order)


def _float(value: Any) -> float:
    """A number of the record as a float; NaN when it is none (absent, not a number, or
    out of float's range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def call_properties(record: dict[str, Any]) -> dict[str, str]:
    """HubSpot call properties for the merged call record (all strings, each within
    HubSpot's 65,536 characters: the details drop transcript turns to fit, the body is
    capped as rendered)."""
    record, details = fit.details(record)
    props: dict[str, str] = {
        "hs_call_title": title(record),
        "hs_call_body": body_html(record),
        CALL_KEY_PROPERTY: str(record["call_key"]),
        DETAILS_PROPERTY: details,
    }
    when = timestamp_ms(record)  # HubSpot: UTC epoch milliseconds
    if when:
        props["hs_timestamp"] = when
    # Any JSON number may arrive (47.5 s is 47500 ms); HubSpot's duration is whole,
    # non-negative milliseconds. 1e306 s is a valid number but no duration in ms.
    duration_ms = _float(record.get("duration_s")) * 1000
    if math.isfinite(duration_ms) and duration_ms >= 0:
        props["hs_call_duration"] = str(round(duration_ms))
    direction = str(record.get("direction") or "").upper()
    if direction in ("INBOUND", "OUTBOUND"):
        props["hs_call_direction"] = direction
    status = call_status(record)
    if status:
        props["hs_call_status"] = status
    # The archived copy only, never the expiring signed URL (mapping.py).
    recording = web_url(record.get("recording_location"))
    if recording:
        props["hs_call_recording_url"] = recording
    phone = record.get("phone")
    if phone and direction == "INBOUND":
        props["hs_call_from_number"] = str(phone)
    elif phone and direction == "OUTBOUND":
        props["hs_call_to_number"] = str(phone)
    return props


class HubSpotAdapter:
    """Writes a chunk of calls in a handful of batch requests (see the module doc)."""

    name = "hubspot"

    def __init__(self, settings: CRMSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 http: CRMHttp | None = None, cache_size: int = 10000) -> None:
        self.settings = settings
        self.http = http or CRMHttp(settings, base_url=settings.url.rstrip("/"),
                                    headers={"Authorization": f"Bearer {settings.token}"},
                                    transport=transport)
        # In-process caches: E.164 -> contact id, call key -> (call id, record), and the
        # associations made. They only save requests: HubSpot's unique properties are
        # the authority (a batch read by them is consistent; search lags).
        self._contacts: LRU[str, str] = LRU(cache_size)
        self._calls: LRU[str, tuple[str, dict[str, Any]]] = LRU(cache_size)
        self._associated: LRU[tuple[str, str], bool] = LRU(cache_size)
        # Two chunks touching one call never interleave (the main and retry loops run
        # at once); a chunk takes the locks of its calls in a fixed order.
        self._locks = [asyncio.Lock() for _ in range(64)]

    async def aclose(self) -> None:
        await self.http.aclose()

    def forget(self) -> None:
        """Drop the caches (tests; a CRM restored from backup)."""
        self._contacts.clear()
        self._calls.clear()
        self._associated.clear()

    async def log_call(self, activity: CallActivity) -> None:
        await self.log_calls([activity])

    async def log_calls(self, activities: list[CallActivity]) -> None:
        """Upsert the contacts and calls of ``activities`` (at most ``batch_size``),
        then associate them; idempotent per event id."""
        slots = sorted({zlib.crc32(a.call_key.encode()) % len(self._locks)
                        for a in activities})
        async with contextlib.AsyncExitStack() as stack:
            for slot in slots:
                await stack.enter_async_context(self._locks[slot])
            await self.http.retrying("log_calls", lambda: self._log_calls(activities))

    async def _log_calls(self, activities: list[CallActivity]) -> None:
        phones = sorted({a.phone for a in activities if a.phone})
        contacts = await self._contact_ids(phones, activities) if phones else {}
        calls = await self._upsert_calls(activities)
        pairs = sorted({(calls[a.call_key], contacts[a.phone]) for a in activities
                        if a.phone and a.phone in contacts and a.call_key in calls})
        await self._associate([p for p in pairs if not self._associated.get(p)])

    # ------------------------------------------------------------ contacts
    async def _contact_ids(self, phones: list[str], activities: list[CallActivity]
                           ) -> dict[str, str]:
        """E.164 -> contact id: the cache; then a consistent batch read on the unique
        ``hookstream_phone_e164``; then a search by ``phone`` for contacts people
        entered by hand (adopted: their E.164 is written to the unique property); then
        an upsert on the unique property, which two racing workers cannot duplicate."""
        found = {p: c for p in phones if (c := self._contacts.get(p)) is not None}
        missing = [p for p in phones if p not in found]
        if missing:
            found.update(await self._read_unique("contacts", PHONE_PROPERTY, missing))
            missing = [p for p in phones if p not in found]
        if missing:
            raw = {p: sorted({a.raw_phone for a in activities
                              if a.phone == p and a.raw_phone} | {p}) for p in missing}
            manual = await self._search_by_phone(raw)
            if manual:
                await self._adopt(manual)
                found.update(manual)
            missing = [p for p in phones if p not in found]
        if missing:
            found.update(await self._upsert("contacts", PHONE_PROPERTY, {
                p: {"phone": p, PHONE_PROPERTY: p} for p in missing}))
        for phone, contact_id in found.items():
            self._contacts.put(phone, contact_id)
        return found

    async def _search_by_phone(self, variants: dict[str, list[str]]) -> dict[str, str]:
        """Hand-entered contacts whose ``phone`` is one of the variants (the E.164 form
        or the number as the provider sent it); the oldest wins. One search request per
        chunk (an ``IN`` filter): searches have their own, lower rate limit."""
        values = sorted({v for vs in variants.values() for v in vs})
        if not values:
            return {}
        document = await self.http.request(
            "contact_search", "POST", f"{CONTACTS}/search", search=True, json={
                "filterGroups": [{"filters": [{"propertyName": "phone", "operator": "IN",
                                               "values": values}]}],
                "properties": ["phone", PHONE_PROPERTY],
                "sorts": [{"propertyName": "createdate", "direction": "ASCENDING"}],
                "limit": 100,
            })
        hits = _results(document, "contact_search")
        result: dict[str, str] = {}
        for phone, forms in variants.items():
            mine = [h for h in hits if (h.get("properties") or {}).get("phone") in forms
                    and not (h.get("properties") or {}).get(PHONE_PROPERTY)]
            if mine:
                result[phone] = str(_oldest(mine)["id"])
        return result

    async def _adopt(self, manual: dict[str, str]) -> None:
        """Write the E.164 onto the hand-entered contacts, so the next lookup is a batch
        read. A 409 means another worker got there first: the read below finds it."""
        try:
            await self.http.request("contact_adopt", "POST", f"{CONTACTS}/batch/update",
                                    json={"inputs": [
                                        {"id": cid, "properties": {PHONE_PROPERTY: phone}}
                                        for phone, cid in sorted(manual.items())]})
        except CRMConflict:
            held = await self._read_unique("contacts", PHONE_PROPERTY, sorted(manual))
            manual.update(held)

    # ------------------------------------------------------------ calls
    async def _upsert_calls(self, activities: list[CallActivity]) -> dict[str, str]:
        """Call key -> call id, after folding every activity into its call's record and
        upserting the records that changed on the unique ``hookstream_call_key``."""
        keys = sorted({a.call_key for a in activities})
        known: dict[str, tuple[str, dict[str, Any]]] = {
            k: c for k in keys if (c := self._calls.get(k)) is not None}
        unread = [k for k in keys if k not in known]
        if unread:
            known.update(await self._read_calls(unread))
        records: dict[str, dict[str, Any]] = {k: known[k][1] for k in known}
        changed: set[str] = set()
        for act in activities:
            existing = records.get(act.call_key)
            if existing is not None and applied(existing, act.event_id):
                continue
            records[act.call_key] = merge(existing, act)
            changed.add(act.call_key)
        ids = {k: known[k][0] for k in known}
        if changed:
            properties = {k: call_properties(records[k]) for k in sorted(changed)}
            ids.update(await self._upsert("calls", CALL_KEY_PROPERTY, properties))
            for key in changed:  # what HubSpot now holds (fitted to its limits)
                records[key] = orjson.loads(properties[key][DETAILS_PROPERTY])
        for key, call_id in ids.items():
            self._calls.put(key, (call_id, records[key]))
        return ids

    async def _read_calls(self, keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        document = await self.http.request(
            "call_read", "POST", f"{CALLS}/batch/read", json={
                "idProperty": CALL_KEY_PROPERTY, "properties": [CALL_KEY_PROPERTY,
                                                                DETAILS_PROPERTY],
                "inputs": [{"id": k} for k in keys]})
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for hit in _results(document, "call_read"):
            properties = hit.get("properties") or {}
            key = properties.get(CALL_KEY_PROPERTY)
            if key not in keys:
                continue
            try:
                record = orjson.loads(properties.get(DETAILS_PROPERTY) or "{}")
            except orjson.JSONDecodeError:
                record = {}
            found[str(key)] = (str(hit["id"]), record if isinstance(record, dict) else {})
        return found

    # ------------------------------------------------------------ batch requests
    async def _read_unique(self, kind: str, prop: str, values: list[str]) -> dict[str, str]:
        """value -> id of the objects holding ``values`` of unique property ``prop``
        (a batch read: consistent, unlike search; missing ones are a 207's errors)."""
        found: dict[str, str] = {}
        for chunk in _chunks(values, self.settings.batch_size):
            document = await self.http.request(
                f"{kind[:-1]}_read", "POST", f"/crm/v3/objects/{kind}/batch/read", json={
                    "idProperty": prop, "properties": [prop],
                    "inputs": [{"id": v} for v in chunk]})
            for hit in _results(document, f"{kind[:-1]}_read"):
                value = (hit.get("properties") or {}).get(prop)
                if value in chunk:
                    found[str(value)] = str(hit["id"])
        return found

    async def _upsert(self, kind: str, prop: str, inputs: dict[str, dict[str, str]]
                      ) -> dict[str, str]:
        """Create or update each object by its value of unique property ``prop``; value
        -> id. At most ``batch_size`` inputs a request."""
        ids: dict[str, str] = {}
        for chunk in _chunks(sorted(inputs), self.settings.batch_size):
            operation = f"{kind[:-1]}_upsert"
            document = await self.http.request(
                operation, "POST", f"/crm/v3/objects/{kind}/batch/upsert", json={
                    "inputs": [{"id": value, "idProperty": prop,
                                "properties": {**inputs[value], prop: value}}
                               for value in chunk]})
            results = _results(document, operation)
            for hit in results:
                value = (hit.get("properties") or {}).get(prop)
                if value in inputs:
                    ids[str(value)] = str(hit["id"])
            if any(v not in ids for v in chunk):
                if len(results) == len(chunk) == 1:  # an answer without the property
                    ids[chunk[0]] = str(results[0]["id"])
                else:
                    raise CRMTransient(operation, "upsert answer without every input",
                                       cause="bad_response")
        return ids

    async def _associate(self, pairs: list[tuple[str, str]]) -> None:
        """The default call-to-contact association of each (call id, contact id)."""
        for chunk in _chunks(pairs, self.settings.batch_size):
            document = await self.http.request(
                "association", "POST",
                "/crm/v4/associations/calls/contacts/batch/associate/default", json={
                    "inputs": [{"from": {"id": call}, "to": {"id": contact}}
                               for call, contact in chunk]})
            if isinstance(document, dict) and document.get("errors"):
                # A cached call or contact was deleted in the CRM meanwhile: look
                # everything up again (retrying runs the whole sequence once more).
                self.forget()
                raise CRMTransient("association", f"207: {str(document['errors'])[:200]}",
                                   207, cause="bad_response")
            for pair in chunk:
                self._associated.put(pair, True)


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def webhook_document(activity: CallActivity) -> dict[str, Any]:
    """The JSON document the webhook adapter sends for one event."""
    fields = {k: v for k, v in activity.fields.items() if k not in ("types", "event_ids")}
    single = merge(None, activity)
    return {
        "schema": "hookstream.crm.call.v1",
        "event_id": activity.event_id,
        "event_type": activity.event_type,
        "call_key": activity.call_key,
        "provider": activity.provider,
        "contact": ({"phone": activity.phone, "raw_phone": activity.raw_phone}
                    if activity.raw_phone else None),
        "call": {**fields, "title": title(single), "timestamp": timestamp(single)},
    }


class WebhookAdapter:
    name = "webhook"

    def __init__(self, settings: CRMSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 http: CRMHttp | None = None) -> None:
        headers = ({"Authorization": f"Bearer {settings.webhook_token}"}
                   if settings.webhook_token else {})
        self.url = settings.webhook_url
        # HubSpot's budgets are not the receiver's: no pacing, its 429s are still waited.
        self.http = http or CRMHttp(settings, headers=headers, transport=transport,
                                    paced=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def log_calls(self, activities: list[CallActivity]) -> None:
        for one in activities:  # the receiver takes one document per event
            await self.log_call(one)

    async def log_call(self, activity: CallActivity) -> None:
        document = webhook_document(activity)
        await self.http.retrying("webhook", lambda: self.http.request(
            "webhook", "POST", self.url, json=document, expect_json=False,
            headers={"Idempotency-Key": activity.event_id}))


def build_adapter(settings: CRMSettings,
                  transport: httpx.AsyncBaseTransport | None = None) -> CRMAdapter:
    settings.validate()
    if settings.adapter == "webhook":
        return WebhookAdapter(settings, transport=transport)
    return HubSpotAdapter(settings, transport=transport)
