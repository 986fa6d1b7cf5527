"""A fake of the CRM's HTTP API: the HubSpot CRM endpoints the CRM sink uses, in memory.

The real CRM is a third-party SaaS, so this is the one place a stand-in is right.
It keeps HubSpot's request and response shapes (objects with ``id`` and
``properties``, search with ``filterGroups``, v4 default associations, error
bodies with ``category``), checks the bearer token (401), validates call
properties as HubSpot does for the ones we send (unknown property, missing
``hs_timestamp``, enumeration values: 400), and has programmable faults:

* ``fail_next(n, status, retry_after)``: the next n requests answer ``status``
  (429 storms with ``Retry-After``, 500s, 400s) without being applied;
* ``slow_next(n, delay_s)``: the next n requests are *applied*, then answered
  after ``delay_s`` (longer than the client's timeout: the client sees a
  timeout although the write happened, the nasty case for idempotency);
* ``go_down(status)`` / ``come_back()``: every request fails until further notice;
* ``storm(statuses, retry_after)``: every request fails until ``come_back()``, the
  answers taking turns through ``statuses`` (e.g. 429 with ``Retry-After``, 500, 503).

HubSpot's own behaviours, each switchable (docs/sinks-crm.md cites the sources):

* **429s in HubSpot's shape**: JSON body with ``errorType: RATE_LIMIT`` and
  ``policyName`` (``TEN_SECONDLY_ROLLING``, ``SECONDLY`` on search, ``DAILY``), the
  ``X-HubSpot-RateLimit-*`` headers, and no ``Retry-After`` unless asked for.
  ``rate_limit_next(n, policy=...)`` forces some; ``ten_secondly_window(max)`` is a
  real rolling window (every non-search answer carries ``-Max``, ``-Remaining`` and
  ``-Interval-Milliseconds``); ``daily_limit(n)`` answers ``DAILY`` to everything
  after n more requests until ``reset_daily()``; ``search_per_s`` caps searches a
  second (429 ``SECONDLY``, no rate-limit headers, as HubSpot's search does).
* **search-index lag** (``search_lag_s``): a write shows in search results only
  that long after it was made; reads by id or unique property are consistent.
* **string-length limit**: a property value longer than 65,536 characters (UTF-16
  code units, as HubSpot's Java backend counts) is a 400.
* **unique properties** (``hasUniqueValue``): ``hookstream_call_key`` on calls and
  ``hookstream_phone_e164`` on contacts, once created (``/crm/v3/properties``; made
  at start unless ``custom_properties=False``). A second object with a held value
  is a 409 ``CONFLICT``; batch ``read``/``upsert`` accept them as ``idProperty``.
* **batch limits**: more than 100 inputs, or one id twice, is a 400.

Faults can be limited to one route (``route="calls.create"``). ``requests``
counts requests per route, ``faulted`` the answers forced by a fault, per status.
``/webhook`` is a generic receiver for the webhook adapter, recording each body and
its ``Idempotency-Key``.

What was applied is counted per event: every create or update of a call whose
``hookstream_details`` (the sink's merged record) brings event ids the call did not
have yet counts one application of each (``applied``); a second activity for a call
key applies its events again, so any count above 1 is an event applied twice. Writes
of a call that bring no new event id are ``redundant_writes``.

Run as a process (``python -m tests.fakes.crm --port N``, as the local demo and the
fault suite do), it is driven over HTTP: ``POST /_admin/faults`` switches the failure
mode at runtime (``{"mode": "storm", "statuses": [429, 500, 503], "retry_after": "1"}``,
``{"mode": "down", "status": 503}``, ``{"mode": "fail_next", "n": 5, "status": 500}``,
``{"mode": "up"}``), and ``GET /_admin/state`` reports what the CRM holds and what was
applied. The admin routes are never faulted nor counted.

Use it over real loopback with ``tests.support.serve(fake.app, port)`` or in
process with :class:`TimeoutASGITransport` (which, unlike httpx's own
``ASGITransport``, enforces the client's read timeout).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TOKEN = "fake-crm-token"

CALL_PROPERTIES = {
    "hs_timestamp", "hs_call_title", "hs_call_body", "hs_call_duration", "hs_call_direction",
    "hs_call_status", "hs_call_recording_url", "hs_call_from_number", "hs_call_to_number",
    "hs_call_disposition", "hubspot_owner_id",
    # the portal's custom properties, as docs/sinks-crm.md asks to create them
    "hookstream_call_key", "hookstream_details",
}
CONTACT_PROPERTIES = {"phone", "mobilephone", "email", "firstname", "lastname",
                      "hookstream_phone_e164"}
# Custom properties and the object types they belong to (see `hookstream crm setup`).
CUSTOM_PROPERTIES = {("calls", "hookstream_call_key"): True,  # name -> hasUniqueValue
                     ("calls", "hookstream_details"): False,
                     ("contacts", "hookstream_phone_e164"): True}
MAX_STRING = 65536  # HubSpot's longest property value, in UTF-16 code units
MAX_BATCH = 100
OBJECT_TYPE_IDS = {"calls": "0-48", "contacts": "0-1"}
CALL_STATUSES = {"BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED",
                 "IN_PROGRESS", "NO_ANSWER", "QUEUED", "RINGING"}
CALL_DIRECTIONS = {"INBOUND", "OUTBOUND"}


@dataclasses.dataclass
class Fault:
    status: int | None = None  # answer this instead of handling the request
    retry_after: str | None = None
    delay_s: float = 0.0  # with no status: handle the request, then answer this late
    route: str | None = None  # only requests to this route (e.g. "calls.create")
    policy: str = "TEN_SECONDLY_ROLLING"  # of a 429


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def _error(status: int, message: str, category: str, retry_after: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> Response:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return _json(status, {"status": "error", "message": message, "category": category,
                          "correlationId": str(uuid.uuid4()), **extra}, headers)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# HubSpot's 429 bodies (usage guidelines; the Node client's RetryDecorator keys on the
# same policy names and on the search message).
_LIMIT_MESSAGES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "SECONDLY": "You have reached your secondly limit.",
    "DAILY": "You have reached your daily limit.",
}


class FakeCRM:
    def __init__(self, token: str = TOKEN, webhook_token: str | None = None, *,
                 custom_properties: bool = True, search_lag_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.clock = clock
        self.search_lag_s = search_lag_s
        # (kind, name) -> hasUniqueValue, for the custom properties created so far
        self.properties: dict[tuple[str, str], bool] = (
            dict(CUSTOM_PROPERTIES) if custom_properties else {})
        self.window: tuple[int, float] | None = None  # (max requests, interval s)
        self._window_hits: deque[float] = deque()
        self.daily_left: int | None = None  # requests left today; None: no daily limit
        self.daily_retry_after: str | None = None
        self.search_per_s: float | None = None
        self._search_hits: deque[float] = deque()
        self.limited: Counter[str] = Counter()  # policy -> 429s answered
        self.webhook_token = webhook_token
        self.contacts: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.associations: set[tuple[str, str]] = set()  # (call id, contact id)
        self.webhooks: list[dict[str, Any]] = []  # {"key", "body", "authorization"}
        self.requests: Counter[str] = Counter()
        self.faulted: Counter[int] = Counter()  # status -> answers forced by a fault
        self.applied: Counter[str] = Counter()  # event id -> writes that applied it
        self.redundant_writes = 0  # call writes that brought no new event id
        self.faults: deque[Fault] = deque()
        self.outage: Fault | None = None
        self._storm: list[Fault] = []
        self._storm_turn = itertools.count()
        self._ids = itertools.count(1001)
        self.app = Starlette(routes=[
            Route("/crm/v3/objects/{kind}/search", self._route("search", self._search),
                  methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/read",
                  self._route("batch_read", self._batch_read), methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/upsert",
                  self._route("batch_upsert", self._batch_upsert), methods=["POST"]),
            Route("/crm/v3/objects/{kind}/batch/update",
                  self._route("batch_update", self._batch_update), methods=["POST"]),
            Route("/crm/v4/associations/calls/contacts/batch/associate/default",
                  self._route("associations.batch", self._batch_associate),
                  methods=["POST"]),
            Route("/crm/v3/properties/{kind}", self._route("properties.create",
                                                            self._property_create),
                  methods=["POST"]),
            Route("/crm/v3/properties/{kind}/{name}", self._route("properties.get",
                                                                   self._property_get),
                  methods=["GET"]),
            Route("/crm/v3/objects/{kind}", self._route("create", self._create),
                  methods=["POST"]),
            Route("/crm/v3/objects/{kind}/{id}", self._route("update", self._update),
                  methods=["PATCH"]),
            Route("/crm/v3/objects/{kind}/{id}", self._route("get", self._get),
                  methods=["GET"]),
            Route("/crm/v4/objects/calls/{id}/associations/default/contacts/{contact}",
                  self._route("associations.put", self._associate), methods=["PUT"]),
            Route("/webhook", self._route("webhook", self._webhook), methods=["POST"]),
            Route("/_admin/faults", self._admin_faults, methods=["POST"]),
            Route("/_admin/state", self._admin_state, methods=["GET"]),
        ])

    # ------------------------------------------------------------ faults
    def fail_next(self, n: int, status: int = 500, retry_after: str | None = None,
                  route: str | None = None) -> None:
        self.faults.extend(Fault(status=status, retry_after=retry_after, route=route)
                           for _ in range(n))

    def rate_limit_next(self, n: int, retry_after: str | None = None,
                        route: str | None = None,
                        policy: str = "TEN_SECONDLY_ROLLING") -> None:
        """The next n requests answer HubSpot's 429 for ``policy`` (no Retry-After
        unless given: HubSpot documents none for API clients)."""
        self.faults.extend(Fault(status=429, retry_after=retry_after, route=route,
                                 policy=policy) for _ in range(n))

    def ten_secondly_window(self, max_requests: int, interval_s: float = 10.0) -> None:
        """A rolling window: more than ``max_requests`` in ``interval_s`` is a 429."""
        self.window = (max_requests, interval_s)
        self._window_hits.clear()

    def daily_limit(self, requests_left: int, retry_after: str | None = None) -> None:
        """After ``requests_left`` more requests, every request is a DAILY 429 (with
        ``Retry-After`` when given: a test cannot wait for midnight)."""
        self.daily_left = requests_left
        self.daily_retry_after = retry_after

    def reset_daily(self) -> None:
        """Midnight in the portal's time zone."""
        self.daily_left = None

    def slow_next(self, n: int, delay_s: float, route: str | None = None) -> None:
        self.faults.extend(Fault(delay_s=delay_s, route=route) for _ in range(n))

    def go_down(self, status: int = 503) -> None:
        self.outage = Fault(status=status)

    def storm(self, statuses: list[int], retry_after: str | None = "1") -> None:
        """Every request fails until ``come_back()``, the answers taking turns through
        ``statuses``; a 429 carries ``Retry-After: retry_after``."""
        if not statuses:
            raise ValueError("a storm needs at least one status")
        self._storm = [Fault(status=s, retry_after=retry_after if s == 429 else None)
                       for s in statuses]

    def come_back(self) -> None:
        self.outage = None
        self._storm = []
        self.faults.clear()
        self.window = None
        self.daily_left = None
        self.search_per_s = None

    def mode(self) -> str:
        if self._storm:
            return "storm " + ",".join(str(f.status) for f in self._storm)
        if self.outage is not None:
            return f"down {self.outage.status}"
        return "up"

    def _take_fault(self, route: str) -> Fault | None:
        if self._storm:
            return self._storm[next(self._storm_turn) % len(self._storm)]
        if self.outage is not None:
            return self.outage
        for fault in self.faults:
            if fault.route is None or fault.route == route:
                self.faults.remove(fault)
                return fault
        return None

    # ------------------------------------------------------------ views for tests
    def calls_with_key(self, key: str) -> list[dict[str, Any]]:
        return [c for c in self.calls.values()
                if c["properties"].get("hookstream_call_key") == key]

    def call(self, key: str) -> dict[str, Any]:
        found = self.calls_with_key(key)
        assert len(found) == 1, f"{len(found)} calls with key {key}"
        return found[0]

    def contacts_with_phone(self, phone: str) -> list[dict[str, Any]]:
        return [c for c in self.contacts.values() if c["properties"].get("phone") == phone]

    def contacts_of_call(self, call_id: str) -> set[str]:
        return {contact for call, contact in self.associations if call == call_id}

    def duplicate_activities(self) -> int:
        """Call activities beyond one per call key."""
        keys = Counter(c["properties"].get("hookstream_call_key") for c in self.calls.values())
        return sum(n - 1 for n in keys.values())

    def state(self) -> dict[str, Any]:
        """What ``GET /_admin/state`` answers."""
        return {"mode": self.mode(), "contacts": len(self.contacts), "calls": len(self.calls),
                "applied": dict(self.applied),
                "duplicate_activities": self.duplicate_activities(),
                "redundant_writes": self.redundant_writes,
                "requests": dict(self.requests),
                "faulted": {str(k): n for k, n in sorted(self.faulted.items())}}

    def _count_applied(self, before: dict[str, Any] | None, properties: dict[str, Any]) -> None:
        """Count the event ids a call write brings (see the module's docstring)."""
        if "hookstream_details" not in properties:
            return
        new = _event_ids(properties) - (_event_ids(before) if before is not None else set())
        self.applied.update(new)
        if not new:
            self.redundant_writes += 1

    def snapshot(self) -> dict[str, Any]:
        """Everything the CRM holds, without ids and times (to compare two runs)."""
        def props(obj: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj["properties"].items()
                    if k not in ("hs_object_id", "createdate", "lastmodifieddate",
                                 "hs_createdate", "hs_lastmodifieddate")}
        phone_of = {cid: c["properties"].get("phone") for cid, c in self.contacts.items()}
        return {
            "contacts": sorted(str(c["properties"].get("phone"))
                               for c in self.contacts.values()),
            "calls": sorted(orjson.dumps(props(c), option=orjson.OPT_SORT_KEYS).decode()
                             for c in self.calls.values()),
            "associations": sorted(
                (self.calls[call]["properties"].get("hookstream_call_key", ""),
                 str(phone_of.get(contact)))
                for call, contact in self.associations),
        }

    # ------------------------------------------------------------ plumbing
    def _route(self, action: str, handler: Callable[[Request, str], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            kind = request.path_params.get("kind", "")
            route = f"{kind}.{action}" if kind else action
            self.requests[route] += 1
            fault = self._take_fault(route)
            if fault is not None and fault.status is not None:
                self.faulted[fault.status] += 1
                if fault.delay_s:
                    await asyncio.sleep(fault.delay_s)
                if fault.status == 429:
                    self.limited[fault.policy] += 1
                    return self._too_many(fault.policy, action == "search",
                                          fault.retry_after)
                return _error(fault.status, f"forced {fault.status}", "FORCED",
                              retry_after=fault.retry_after)
            limited = (None if action.startswith("properties") else
                       self._limit(route, action == "search"))
            if limited is not None:
                return limited
            if route == "webhook":
                response = await handler(request, kind)
            elif request.headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "Authentication credentials not found.",
                              "INVALID_AUTHENTICATION")
            elif kind and kind not in ("contacts", "calls"):
                return _error(400, f"Unable to infer object type from: {kind}",
                              "OBJECT_NOT_FOUND")
            else:
                response = await handler(request, kind)
            if fault is not None and fault.delay_s:
                await asyncio.sleep(fault.delay_s)  # applied; the answer comes late
            if self.window is not None and action != "search" and route != "webhook":
                response.headers.update(self._window_headers())
            return response
        return endpoint

    # ------------------------------------------------------------ rate limits
    def _window_headers(self) -> dict[str, str]:
        assert self.window is not None
        most, interval = self.window
        headers = {"X-HubSpot-RateLimit-Max": str(most),
                   "X-HubSpot-RateLimit-Remaining": str(max(0, most - len(self._window_hits))),
                   "X-HubSpot-RateLimit-Interval-Milliseconds": str(round(interval * 1000))}
        if self.daily_left is not None:
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, self.daily_left))
        return headers

    def _too_many(self, policy: str, search: bool, retry_after: str | None = None
                  ) -> Response:
        headers = {} if search or self.window is None else self._window_headers()
        if not search and self.window is None and policy == "TEN_SECONDLY_ROLLING":
            headers = {"X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                       "X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "0"}
        return _error(429, _LIMIT_MESSAGES.get(policy, "rate limited"), "RATE_LIMITS",
                      retry_after=retry_after, headers=headers, errorType="RATE_LIMIT",
                      policyName=policy, groupName=f"publicapi:{'search' if search else 'v3'}")

    def _count_limited(self, policy: str, search: bool) -> Response:
        self.limited[policy] += 1
        self.faulted[429] += 1
        return self._too_many(policy, search,
                              self.daily_retry_after if policy == "DAILY" else None)

    def _limit(self, route: str, search: bool) -> Response | None:
        """HubSpot's limits, checked in its order: daily, then the window, then search."""
        if route == "webhook":
            return None
        if self.daily_left is not None:
            if self.daily_left <= 0:
                return self._count_limited("DAILY", search)
            self.daily_left -= 1
        now = self.clock()
        if self.window is not None and not search:
            most, interval = self.window
            while self._window_hits and self._window_hits[0] <= now - interval:
                self._window_hits.popleft()
            if len(self._window_hits) >= most:
                return self._count_limited("TEN_SECONDLY_ROLLING", search)
            self._window_hits.append(now)
        if self.search_per_s is not None and search:
            while self._search_hits and self._search_hits[0] <= now - 1.0:
                self._search_hits.popleft()
            if len(self._search_hits) >= self.search_per_s:
                return self._count_limited("SECONDLY", search)
            self._search_hits.append(now)
        return None

    def _store(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.contacts if kind == "contacts" else self.calls

    def _validate(self, kind: str, properties: Any, creating: bool) -> Response | None:
        if not isinstance(properties, dict):
            return _error(400, "Invalid input JSON: properties must be an object",
                          "VALIDATION_ERROR")
        known = CONTACT_PROPERTIES if kind == "contacts" else CALL_PROPERTIES
        errors = []
        for name, value in properties.items():
            custom = (kind, name) in CUSTOM_PROPERTIES
            if name not in known or (custom and (kind, name) not in self.properties):
                errors.append(f'Property "{name}" does not exist')
            elif value is not None and not isinstance(value, str | int | float | bool):
                errors.append(f'Property "{name}" has an invalid value')
            elif isinstance(value, str) and utf16_len(value) > MAX_STRING:
                errors.append(f'Property "{name}" value is {utf16_len(value)} characters; '
                              f"the maximum is {MAX_STRING}")
        if kind == "calls":
            if creating and not properties.get("hs_timestamp"):
                errors.append('Property "hs_timestamp" is required')
            status = properties.get("hs_call_status")
            if status is not None and status not in CALL_STATUSES:
                errors.append(f"{status} was not one of the allowed options")
            direction = properties.get("hs_call_direction")
            if direction is not None and direction not in CALL_DIRECTIONS:
                errors.append(f"{direction} was not one of the allowed options")
            duration = properties.get("hs_call_duration")
            if duration is not None and not str(duration).isdigit():
                errors.append(f"{duration} is not a valid number")
        if errors:
            return _error(400, "Property values were not valid: " + "; ".join(errors),
                          "VALIDATION_ERROR")
        return None

    @staticmethod
    async def _body(request: Request) -> Any:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return None

    def _public(self, kind: str, obj: dict[str, Any], wanted: list[str] | None = None
                ) -> dict[str, Any]:
        properties = obj["properties"]
        if wanted is not None:
            base = ("hs_object_id", "createdate", "lastmodifieddate") if kind == "contacts" \
                else ("hs_object_id", "hs_createdate", "hs_lastmodifieddate")
            properties = {k: properties.get(k) for k in (*base, *wanted)}
        return {"id": obj["id"], "properties": properties, "createdAt": obj["createdAt"],
                "updatedAt": obj["updatedAt"], "archived": False}

    # ------------------------------------------------------------ endpoints
    async def _search(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return _error(400, "Invalid input JSON", "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []

        now = self.clock()

        def indexed(obj: dict[str, Any]) -> dict[str, Any] | None:
            """The object as the search index holds it now (None: not indexed yet)."""
            if "_index" not in obj:
                return obj["properties"]  # put in place by a test: indexed long ago
            visible = [props for at, props in obj["_index"] if at <= now]
            return visible[-1] if visible else None

        def matches(obj: dict[str, Any]) -> bool:
            props = indexed(obj)
            if props is None:
                return False
            if not groups:
                return True
            for group in groups:
                ok = True
                for f in group.get("filters", []):
                    value = props.get(f.get("propertyName"))
                    if f.get("operator") == "EQ":
                        ok = ok and value is not None and str(value) == str(f.get("value"))
                    elif f.get("operator") == "IN":
                        ok = ok and value in (f.get("values") or [])
                    else:
                        return False
                if ok:
                    return True
            return False

        found = sorted((o for o in self._store(kind).values() if matches(o)),
                       key=lambda o: int(o["id"]))
        limit = int(body.get("limit") or 10)
        wanted = body.get("properties") or []
        return _json(200, {"total": len(found),
                           "results": [self._public(kind, o, wanted) for o in found[:limit]]})

    # ------------------------------------------------------------ writes (shared)
    def _conflict(self, kind: str, properties: dict[str, Any], own_id: str | None
                  ) -> Response | None:
        """409 when a unique property value is held by another object."""
        for (k, name), unique in self.properties.items():
            value = properties.get(name)
            if k != kind or not unique or value in (None, ""):
                continue
            for obj in self._store(kind).values():
                if obj["id"] != own_id and obj["properties"].get(name) == str(value):
                    return _error(409, f'A {kind[:-1]} with {name} "{value}" already exists '
                                  f"(id {obj['id']})", "CONFLICT")
        return None

    def _index(self, obj: dict[str, Any]) -> None:
        """What search will see of ``obj``, from ``search_lag_s`` from now."""
        obj.setdefault("_index", []).append((self.clock() + self.search_lag_s,
                                             dict(obj["properties"])))

    def _insert(self, kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        object_id = str(next(self._ids))
        now = _now()
        created = "createdate" if kind == "contacts" else "hs_createdate"
        modified = "lastmodifieddate" if kind == "contacts" else "hs_lastmodifieddate"
        obj = {"id": object_id, "createdAt": now, "updatedAt": now,
               "properties": {**{k: (None if v is None else str(v))
                                 for k, v in properties.items()},
                              "hs_object_id": object_id, created: now, modified: now}}
        self._store(kind)[object_id] = obj
        if kind == "calls":
            self._count_applied(None, obj["properties"])
        self._index(obj)
        return obj

    def _change(self, kind: str, obj: dict[str, Any], properties: dict[str, Any]) -> None:
        now = _now()
        if kind == "calls":
            self._count_applied(obj["properties"], properties)
        obj["properties"].update({k: (None if v is None else str(v))
                                  for k, v in properties.items()})
        obj["properties"]["lastmodifieddate" if kind == "contacts"
                          else "hs_lastmodifieddate"] = now
        obj["updatedAt"] = now
        self._index(obj)

    def _by_unique(self, kind: str, name: str, value: str) -> dict[str, Any] | None:
        for obj in self._store(kind).values():
            if obj["properties"].get(name) == value:
                return obj
        return None

    def _inputs(self, body: Any) -> list[Any] | Response:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "Invalid input JSON: inputs must be a non-empty array",
                          "VALIDATION_ERROR")
        if len(inputs) > MAX_BATCH:
            return _error(400, f"Too many inputs: {len(inputs)}; the limit is {MAX_BATCH}",
                          "VALIDATION_ERROR")
        return inputs

    def _id_property(self, kind: str, body: dict[str, Any], item: dict[str, Any]
                     ) -> str | Response:
        name = str(item.get("idProperty") or body.get("idProperty") or "hs_object_id")
        if name != "hs_object_id" and not self.properties.get((kind, name)):
            return _error(400, f"{name} is not a unique property of {kind}",
                          "VALIDATION_ERROR")
        return name

    # ------------------------------------------------------------ endpoints (single)
    async def _create(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return _error(400, "Invalid input JSON", "VALIDATION_ERROR")
        properties = body.get("properties")
        invalid = self._validate(kind, properties, creating=True)
        if invalid is not None:
            return invalid
        assert isinstance(properties, dict)
        conflict = self._conflict(kind, properties, None)
        if conflict is not None:
            return conflict
        return _json(201, self._public(kind, self._insert(kind, properties)))

    async def _get(self, request: Request, kind: str) -> Response:
        obj = self._store(kind).get(request.path_params["id"])
        if obj is None:
            return _error(404, "resource not found", "OBJECT_NOT_FOUND")
        return _json(200, self._public(kind, obj))

    async def _update(self, request: Request, kind: str) -> Response:
        obj = self._store(kind).get(request.path_params["id"])
        if obj is None:
            return _error(404, "resource not found", "OBJECT_NOT_FOUND")
        body = await self._body(request)
        properties = body.get("properties") if isinstance(body, dict) else None
        invalid = self._validate(kind, properties, creating=False)
        if invalid is not None:
            return invalid
        assert isinstance(properties, dict)
        conflict = self._conflict(kind, properties, obj["id"])
        if conflict is not None:
            return conflict
        self._change(kind, obj, properties)
        return _json(200, self._public(kind, obj))

    # ------------------------------------------------------------ endpoints (batch)
    async def _batch_read(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        inputs = self._inputs(body)
        if isinstance(inputs, Response):
            return inputs
        assert isinstance(body, dict)
        name = self._id_property(kind, body, {})
        if isinstance(name, Response):
            return name
        wanted = body.get("properties") or []
        results, missing = [], []
        for item in inputs:
            value = str(item.get("id") if isinstance(item, dict) else "")
            obj = (self._store(kind).get(value) if name == "hs_object_id"
                   else self._by_unique(kind, name, value))
            if obj is None:
                missing.append(value)
            else:
                results.append(self._public(kind, obj, wanted))
        now = _now()
        document: dict[str, Any] = {"status": "COMPLETE", "results": results,
                                    "startedAt": now, "completedAt": now}
        if missing:
            document.update(numErrors=1, errors=[{
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": f"Could not get some {kind.upper()} objects, they may be "
                           "deleted or not exist. Check that ids are valid.",
                "context": {"ids": missing}}])
        return _json(207 if missing else 200, document)

    async def _batch_upsert(self, request: Request, kind: str) -> Response:
        """Create or update by a unique ``idProperty``: all inputs are checked first,
        then applied (a 400 or 409 applies none of them)."""
        body = await self._body(request)
        inputs = self._inputs(body)
        if isinstance(inputs, Response):
            return inputs
        assert isinstance(body, dict)
        plan: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
        seen: set[str] = set()
        for item in inputs:
            if not isinstance(item, dict) or not item.get("id"):
                return _error(400, "every input needs an id", "VALIDATION_ERROR")
            name = self._id_property(kind, body, item)
            if isinstance(name, Response):
                return name
            value = str(item["id"])
            if value in seen:
                return _error(400, f"Duplicate IDs found in batch input: [{value}]",
                              "VALIDATION_ERROR")
            seen.add(value)
            obj = (self._store(kind).get(value) if name == "hs_object_id"
                   else self._by_unique(kind, name, value))
            properties = dict(item.get("properties") or {})
            if name != "hs_object_id":
                properties[name] = value
            invalid = self._validate(kind, properties, creating=obj is None)
            if invalid is not None:
                return invalid
            conflict = self._conflict(kind, properties, obj["id"] if obj else None)
            if conflict is not None:
                return conflict
            plan.append((obj, properties))
        results = []
        for obj, properties in plan:
            new = obj is None
            if obj is None:
                obj = self._insert(kind, properties)
            else:
                self._change(kind, obj, properties)
            results.append({**self._public(kind, obj), "new": new})
        now = _now()
        return _json(200, {"status": "COMPLETE", "results": results, "startedAt": now,
                           "completedAt": now})

    async def _batch_update(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        inputs = self._inputs(body)
        if isinstance(inputs, Response):
            return inputs
        plan: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for item in inputs:
            obj = self._store(kind).get(str(item.get("id"))) if isinstance(item, dict) \
                else None
            if obj is None:
                return _error(404, "resource not found", "OBJECT_NOT_FOUND")
            properties = item.get("properties")
            invalid = self._validate(kind, properties, creating=False)
            if invalid is not None:
                return invalid
            conflict = self._conflict(kind, properties, obj["id"])
            if conflict is not None:
                return conflict
            plan.append((obj, properties))
        for obj, properties in plan:
            self._change(kind, obj, properties)
        now = _now()
        return _json(200, {"status": "COMPLETE", "startedAt": now, "completedAt": now,
                           "results": [self._public(kind, o) for o, _ in plan]})

    async def _batch_associate(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        inputs = self._inputs(body)
        if isinstance(inputs, Response):
            return inputs
        results, missing = [], []
        for item in inputs:
            try:
                call_id, contact_id = str(item["from"]["id"]), str(item["to"]["id"])
            except (KeyError, TypeError):
                return _error(400, "inputs need from.id and to.id", "VALIDATION_ERROR")
            if call_id not in self.calls or contact_id not in self.contacts:
                missing.append(f"{call_id}->{contact_id}")
                continue
            self.associations.add((call_id, contact_id))
            results.append({"fromObjectTypeId": OBJECT_TYPE_IDS["calls"],
                            "fromObjectId": int(call_id),
                            "toObjectTypeId": OBJECT_TYPE_IDS["contacts"],
                            "toObjectId": int(contact_id),
                            "labels": []})
        now = _now()
        document: dict[str, Any] = {"status": "COMPLETE", "results": results,
                                    "startedAt": now, "completedAt": now}
        if missing:
            document.update(numErrors=len(missing), errors=[{
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": f"one of the objects does not exist: {pair}"} for pair in missing])
        return _json(207 if missing else 200, document)

    async def _property_create(self, request: Request, kind: str) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or not body.get("name"):
            return _error(400, "a property needs a name", "VALIDATION_ERROR")
        name = str(body["name"])
        if (kind, name) in self.properties:
            return _error(409, f"Property named '{name}' already exists.", "CONFLICT")
        if (kind, name) not in CUSTOM_PROPERTIES:
            return _error(400, f"the fake knows no custom property {kind}.{name}",
                          "VALIDATION_ERROR")
        self.properties[(kind, name)] = bool(body.get("hasUniqueValue"))
        return _json(201, {**body, "hidden": False, "calculated": False})

    async def _property_get(self, request: Request, kind: str) -> Response:
        name = request.path_params["name"]
        if (kind, name) not in self.properties:
            return _error(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
        return _json(200, {"name": name, "hasUniqueValue": self.properties[(kind, name)]})

    async def _associate(self, request: Request, kind: str) -> Response:
        call_id, contact_id = request.path_params["id"], request.path_params["contact"]
        if call_id not in self.calls or contact_id not in self.contacts:
            return _error(404, "one of the objects does not exist", "OBJECT_NOT_FOUND")
        self.associations.add((call_id, contact_id))
        now = _now()
        return _json(200, {"status": "COMPLETE", "startedAt": now, "completedAt": now,
                           "results": [{"from": {"id": call_id}, "to": {"id": contact_id},
                                        "associationSpec": {
                                            "associationCategory": "HUBSPOT_DEFINED",
                                            "associationTypeId": 194}}]})

    async def _webhook(self, request: Request, kind: str) -> Response:
        authorization = request.headers.get("authorization")
        if self.webhook_token and authorization != f"Bearer {self.webhook_token}":
            return _error(401, "bad token", "INVALID_AUTHENTICATION")
        body = await self._body(request)
        key = request.headers.get("idempotency-key")
        self.webhooks.append({"key": key, "body": body, "authorization": authorization})
        return Response(status_code=204)

    # ------------------------------------------------------------ admin (not faulted)
    async def _admin_faults(self, request: Request) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return _error(400, "want a JSON object", "VALIDATION_ERROR")
        mode = body.get("mode")
        try:
            if mode == "up":
                self.come_back()
            elif mode == "down":
                self.go_down(int(body.get("status", 503)))
            elif mode == "storm":
                self.storm([int(s) for s in body.get("statuses") or [429, 500, 503]],
                           _optional_str(body.get("retry_after", "1")))
            elif mode == "fail_next":
                self.fail_next(int(body.get("n", 1)), int(body.get("status", 500)),
                               _optional_str(body.get("retry_after")),
                               _optional_str(body.get("route")))
            else:
                return _error(400, f"unknown mode {mode!r}: up, down, storm or fail_next",
                              "VALIDATION_ERROR")
        except (TypeError, ValueError) as exc:
            return _error(400, f"bad {mode} request: {exc}", "VALIDATION_ERROR")
        return _json(200, {"mode": self.mode()})

    async def _admin_state(self, request: Request) -> Response:
        return _json(200, self.state())

    def webhook_documents(self) -> dict[str, Any]:
        """The receiver's view: one document per Idempotency-Key (repeats collapse)."""
        return {w["key"]: w["body"] for w in self.webhooks}


def _event_ids(properties: dict[str, Any]) -> set[str]:
    """The event ids of a call's ``hookstream_details`` (the sink's merged record)."""
    try:
        details = orjson.loads(properties.get("hookstream_details") or "{}")
    except orjson.JSONDecodeError:
        return set()
    ids = details.get("event_ids") if isinstance(details, dict) else None
    return {str(i) for i in ids} if isinstance(ids, list) else set()


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class TimeoutASGITransport(httpx.ASGITransport):
    """``httpx.ASGITransport`` that honours the request's read timeout like a socket."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = (request.extensions.get("timeout") or {}).get("read")
        try:
            async with asyncio.timeout(timeout):
                return await super().handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout("fake CRM answered too late", request=request) from None


# ---------------------------------------------------------------- test data
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "canonical" / "v1" / "examples"


def example(name: str, **changes: Any) -> dict[str, Any]:
    """A canonical example event (``call.ended.sawt``, ``session.ended``...) with a fresh
    ``event_id`` unless one is given, and ``changes`` applied."""
    event: dict[str, Any] = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    event["event_id"] = str(uuid.uuid4())
    event.update(changes)
    return event


# ---------------------------------------------------------------- local demo
def main() -> None:
    """Serve the fake on loopback for the local demo (`deploy/local/demo`) and the fault
    suite (`hookstream faults crm-429-5xx`): the real CRM is a third-party SaaS, so their
    CRM sink talks to this stand-in (driven with /_admin/faults and /_admin/state)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.crm",
                                     description=main.__doc__)
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    fake = FakeCRM()

    async def health(_: Request) -> Response:
        return _json(200, {"contacts": len(fake.contacts), "calls": len(fake.calls)})

    fake.app.add_route("/healthz", health, methods=["GET"])
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main()
