"""The CRM stand-in driven over HTTP, as the fault suite drives it in its own process:
its failure mode switched at runtime (/_admin/faults), what it applied read back
(/_admin/state), including events applied twice."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.fakes.crm import TOKEN, FakeCRM

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(key: str, *event_ids: str) -> dict[str, Any]:
    details = {"call_key": key, "event_ids": sorted(event_ids)}
    return {"properties": {"hookstream_call_key": key, "hs_timestamp": "2025-05-01T10:00:00Z",
                           "hookstream_details": orjson.dumps(details).decode()}}


def client(fake: FakeCRM) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app),
                             base_url="http://crm")


async def test_a_storm_switched_on_and_off_at_runtime() -> None:
    fake = FakeCRM()
    async with client(fake) as http:
        answer = await http.post("/_admin/faults", json={
            "mode": "storm", "statuses": [429, 500, 503], "retry_after": "2"})
        assert answer.status_code == 200 and answer.json() == {"mode": "storm 429,500,503"}
        seen = []
        for _ in range(6):
            response = await http.post("/crm/v3/objects/calls", json=call("sawt:1", "e1"),
                                       headers=AUTH)
            seen.append((response.status_code, response.headers.get("retry-after")))
        assert seen == [(429, "2"), (500, None), (503, None)] * 2
        assert fake.calls == {}  # nothing applied while failing
        state = (await http.get("/_admin/state")).json()
        assert state["faulted"] == {"429": 2, "500": 2, "503": 2}
        assert state["mode"] == "storm 429,500,503" and state["applied"] == {}

        assert (await http.post("/_admin/faults", json={"mode": "up"})).json() == {"mode": "up"}
        created = await http.post("/crm/v3/objects/calls", json=call("sawt:1", "e1"),
                                  headers=AUTH)
        assert created.status_code == 201
        state = (await http.get("/_admin/state")).json()
        assert state["applied"] == {"e1": 1} and state["calls"] == 1
        assert state["requests"] == {"calls.create": 7}  # admin routes are not counted


async def test_down_and_fail_next_modes() -> None:
    fake = FakeCRM()
    async with client(fake) as http:
        await http.post("/_admin/faults", json={"mode": "down", "status": 502})
        assert (await http.get("/crm/v3/objects/calls/1", headers=AUTH)).status_code == 502
        await http.post("/_admin/faults", json={"mode": "up"})
        await http.post("/_admin/faults", json={"mode": "fail_next", "n": 1, "status": 429,
                                                "retry_after": "1"})
        first = await http.get("/crm/v3/objects/calls/1", headers=AUTH)
        assert (first.status_code, first.headers["retry-after"]) == (429, "1")
        assert (await http.get("/crm/v3/objects/calls/1", headers=AUTH)).status_code == 404
        bad = await http.post("/_admin/faults", json={"mode": "sideways"})
        assert bad.status_code == 400


async def test_events_applied_twice_and_redundant_writes_are_told_apart() -> None:
    fake = FakeCRM()
    async with client(fake) as http:
        created = (await http.post("/crm/v3/objects/calls", json=call("sawt:1", "e1"),
                                   headers=AUTH)).json()
        # call.analyzed merged in: e2 is new, e1 is not applied again
        await http.patch(f"/crm/v3/objects/calls/{created['id']}",
                         json=call("sawt:1", "e1", "e2"), headers=AUTH)
        # the same record written again: applies nothing
        await http.patch(f"/crm/v3/objects/calls/{created['id']}",
                         json=call("sawt:1", "e1", "e2"), headers=AUTH)
        state = (await http.get("/_admin/state")).json()
        assert state["applied"] == {"e1": 1, "e2": 1}
        assert state["redundant_writes"] == 1 and state["duplicate_activities"] == 0
        # a second activity for the same call: the unique call key refuses it (409) ...
        again = await http.post("/crm/v3/objects/calls", json=call("sawt:1", "e1"),
                                headers=AUTH)
        assert again.status_code == 409 and again.json()["category"] == "CONFLICT"
        # ... unless the portal's property was made without hasUniqueValue: a duplicate
        fake.properties[("calls", "hookstream_call_key")] = False
        await http.post("/crm/v3/objects/calls", json=call("sawt:1", "e1"), headers=AUTH)
        state = (await http.get("/_admin/state")).json()
        assert state["applied"] == {"e1": 2, "e2": 1}
        assert state["duplicate_activities"] == 1
