"""``hookstream crm setup``: create the HubSpot custom properties the CRM sink needs.

The sink writes by *unique* custom properties (``hasUniqueValue``), which HubSpot
lets a batch upsert use as ``idProperty``: a redelivery, a retry after a timeout or
two workers racing then update one object instead of creating a second, and a
batch read by them is consistent where search lags. Idempotent: a 409 means the
property exists (it is then read back to check that it is unique).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from .http import CRMConflict, CRMHttp
from .settings import CRMSettings


@dataclasses.dataclass(frozen=True)
class Property:
    object_type: str
    name: str
    label: str
    unique: bool
    field_type: str
    group: str
    description: str

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "type": "string",
                "fieldType": self.field_type, "groupName": self.group,
                "hasUniqueValue": self.unique, "description": self.description}


PROPERTIES = (
    Property("calls", "hookstream_call_key", "hookstream call key", True, "text",
             "callinformation", "<provider>:<call or session id>: one call activity per "
             "call (the sink's upsert key)"),
    Property("calls", "hookstream_details", "hookstream details", False, "textarea",
             "callinformation", "the sink's merged record of the call (JSON)"),
    Property("contacts", "hookstream_phone_e164", "Phone (E.164, hookstream)", True, "text",
             "contactinformation", "the contact's number in E.164: one contact per number "
             "(the sink's upsert key)"),
)


async def setup(settings: CRMSettings,
                transport: httpx.AsyncBaseTransport | None = None) -> list[str]:
    """Create every property of :data:`PROPERTIES`; one line per property saying what
    happened. Raises the CRM errors of :mod:`hookstream.sinks.crm.http`."""
    http = CRMHttp(settings, base_url=settings.url.rstrip("/"),
                   headers={"Authorization": f"Bearer {settings.token}"}, transport=transport)
    lines = []
    try:
        for prop in PROPERTIES:
            where = f"{prop.object_type}.{prop.name}"
            try:
                await http.request("property_create", "POST",
                                   f"/crm/v3/properties/{prop.object_type}", json=prop.body())
                lines.append(f"{where}: created")
                continue
            except CRMConflict:
                pass
            found = await http.request("property_read", "GET",
                                       f"/crm/v3/properties/{prop.object_type}/{prop.name}")
            unique = isinstance(found, dict) and bool(found.get("hasUniqueValue"))
            if prop.unique and not unique:
                lines.append(f"{where}: EXISTS WITHOUT hasUniqueValue: duplicates are possible;"
                             " HubSpot cannot make an existing property unique: archive it "
                             "and run setup again")
            else:
                lines.append(f"{where}: exists")
    finally:
        await http.aclose()
    return lines
