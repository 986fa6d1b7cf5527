"""CRM adapters: how one finished call is written to a particular CRM.

:class:`CRMAdapter` is the interface the sink uses. Two implementations:

* :class:`HubSpotAdapter`, shaped like HubSpot's CRM API: find or create the
  contact by phone (``POST /crm/v3/objects/contacts/search``, ``POST
  /crm/v3/objects/contacts``), find the call activity by its hookstream call key
  (``POST /crm/v3/objects/calls/search`` on the custom property
  ``hookstream_call_key``) and create (``POST /crm/v3/objects/calls``) or update
  it (``PATCH /crm/v3/objects/calls/{id}``), then associate the two with the
  default association (``PUT /crm/v4/objects/calls/{id}/associations/default/
  contacts/{contactId}``). ``Authorization: Bearer <token>``.
* :class:`WebhookAdapter`: POSTs one JSON document per event to a URL, with
  ``Idempotency-Key: <event_id>``; the receiver merges documents by ``call_key``.

Both are idempotent per event: writing the same event again leaves the CRM as it
was (search before create; the applied event ids are kept on the activity).
See docs/sinks-crm.md.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import OrderedDict
from typing import Any, Generic, Protocol, TypeVar

import httpx
import orjson

from .http import CRMHttp, CRMRejected, CRMTransient
from .mapping import (
    CallActivity,
    applied,
    body_html,
    call_status,
    merge,
    timestamp,
    title,
    web_url,
)
from .settings import CRMSettings

K = TypeVar("K")
V = TypeVar("V")

CALL_KEY_PROPERTY = "hookstream_call_key"
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
    """HubSpot call properties for the merged call record (all strings)."""
    props: dict[str, str] = {
        "hs_call_title": title(record),
        "hs_call_body": body_html(record),
        CALL_KEY_PROPERTY: str(record["call_key"]),
        DETAILS_PROPERTY: orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode(),
    }
    when = timestamp(record)
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
    name = "hubspot"

    def __init__(self, settings: CRMSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 http: CRMHttp | None = None, cache_size: int = 10000) -> None:
        self.http = http or CRMHttp(settings, base_url=settings.url.rstrip("/"),
                                    headers={"Authorization": f"Bearer {settings.token}"},
                                    transport=transport)
        # In-process caches: phone -> contact id, call key -> (call id, record). They save
        # searches and cover HubSpot's search index lagging a few seconds behind writes.
        self._contacts: LRU[str, str] = LRU(cache_size)
        self._calls: LRU[str, tuple[str, dict[str, Any]]] = LRU(cache_size)
        # Two events of one call never interleave (the main and retry loops run at once).
        self._locks = [asyncio.Lock() for _ in range(64)]

    async def aclose(self) -> None:
        await self.http.aclose()

    def forget(self) -> None:
        """Drop the caches (tests; a CRM restored from backup)."""
        self._contacts.clear()
        self._calls.clear()

    async def log_call(self, activity: CallActivity) -> None:
        lock = self._locks[zlib.crc32(activity.call_key.encode()) % len(self._locks)]
        async with lock:
            try:
                await self.http.retrying("log_call", lambda: self._log_call(activity))
            except CRMRejected as exc:
                if exc.status != 404:
                    raise
                # A cached object was deleted in the CRM meanwhile: look everything up again.
                self._calls.drop(activity.call_key)
                if activity.phone:
                    self._contacts.drop(activity.phone)
                await self.http.retrying("log_call", lambda: self._log_call(activity))

    async def _log_call(self, activity: CallActivity) -> None:
        contact_id = await self._contact(activity) if activity.phone else None
        found = await self._find_call(activity.call_key)
        if found is None:
            record = merge(None, activity)
            call_id = _id_of(await self.http.request(
                "call_create", "POST", CALLS, json={"properties": call_properties(record)}),
                "call_create")
        else:
            call_id, existing = found
            record = existing
            if not applied(existing, activity.event_id):
                record = merge(existing, activity)
                await self.http.request("call_update", "PATCH", f"{CALLS}/{call_id}",
                                        json={"properties": call_properties(record)})
        self._calls.put(activity.call_key, (call_id, record))
        if contact_id is not None:
            await self.http.request(
                "association", "PUT",
                f"/crm/v4/objects/calls/{call_id}/associations/default/contacts/{contact_id}")

    async def _contact(self, activity: CallActivity) -> str:
        assert activity.phone is not None
        cached = self._contacts.get(activity.phone)
        if cached is not None:
            return cached
        numbers = sorted({activity.phone, activity.raw_phone or activity.phone})
        found = _results(await self.http.request(
            "contact_search", "POST", f"{CONTACTS}/search", json={
                "filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ",
                                               "value": number}]} for number in numbers],
                "properties": ["phone"],
                "sorts": [{"propertyName": "createdate", "direction": "ASCENDING"}],
                "limit": 10,
            }), "contact_search")
        if found:
            contact_id = str(_oldest(found)["id"])
        else:
            contact_id = _id_of(await self.http.request(
                "contact_create", "POST", CONTACTS,
                json={"properties": {"phone": activity.phone}}), "contact_create")
        self._contacts.put(activity.phone, contact_id)
        return contact_id

    async def _find_call(self, key: str) -> tuple[str, dict[str, Any]] | None:
        cached = self._calls.get(key)
        if cached is not None:
            return cached
        found = _results(await self.http.request(
            "call_search", "POST", f"{CALLS}/search", json={
                "filterGroups": [{"filters": [{"propertyName": CALL_KEY_PROPERTY,
                                               "operator": "EQ", "value": key}]}],
                "properties": [CALL_KEY_PROPERTY, DETAILS_PROPERTY],
                "sorts": [{"propertyName": "hs_createdate", "direction": "ASCENDING"}],
                "limit": 10,
            }), "call_search")
        if not found:
            return None
        hit = _oldest(found)
        properties = hit.get("properties") or {}
        try:
            record = orjson.loads(properties.get(DETAILS_PROPERTY) or "{}")
        except orjson.JSONDecodeError:
            record = {}
        return str(hit["id"]), record if isinstance(record, dict) else {}


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
        self.http = http or CRMHttp(settings, headers=headers, transport=transport)

    async def aclose(self) -> None:
        await self.http.aclose()

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
