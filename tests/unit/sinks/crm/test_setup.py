"""`hookstream crm setup`: the custom properties, created once, against the fake CRM."""

from __future__ import annotations

import pytest

from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.setup import setup
from tests.fakes.crm import TOKEN, FakeCRM, TimeoutASGITransport

SETTINGS = CRMSettings(url="http://crm.test", token=TOKEN)


async def test_setup_creates_the_unique_properties_and_is_idempotent() -> None:
    fake = FakeCRM(custom_properties=False)
    transport = TimeoutASGITransport(fake.app)
    assert await setup(SETTINGS, transport) == [
        "calls.hookstream_call_key: created", "calls.hookstream_details: created",
        "contacts.hookstream_phone_e164: created"]
    assert fake.properties == {("calls", "hookstream_call_key"): True,
                               ("calls", "hookstream_details"): False,
                               ("contacts", "hookstream_phone_e164"): True}
    assert await setup(SETTINGS, transport) == [  # 409: exists
        "calls.hookstream_call_key: exists", "calls.hookstream_details: exists",
        "contacts.hookstream_phone_e164: exists"]


async def test_setup_flags_an_existing_property_that_is_not_unique() -> None:
    fake = FakeCRM()
    fake.properties[("calls", "hookstream_call_key")] = False
    lines = await setup(SETTINGS, TimeoutASGITransport(fake.app))
    assert "WITHOUT hasUniqueValue" in lines[0]


def test_the_cli_has_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from hookstream.cli import main

    with pytest.raises(SystemExit):
        main(["crm", "setup", "--help"])
    assert "hookstream_phone_e164" in capsys.readouterr().out
