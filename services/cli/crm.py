"""``hookstream crm setup``: HubSpot set-up for the CRM sink."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..core.config import help_epilog, load
from ..sinks.crm.settings import CRMSettings


def cmd_crm_setup(args: argparse.Namespace) -> int:
    """Create the CRM sink's custom properties in HubSpot (idempotent)."""
    from ..sinks.crm.http import CRMError
    from ..sinks.crm.setup import setup

    settings = load(CRMSettings)
    settings.validate()
    try:
        lines = asyncio.run(setup(settings))
    except CRMError as exc:
        print(f"hookstream crm setup: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 1 if any("WITHOUT" in line for line in lines) else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``crm setup``."""
    crm = sub.add_parser("crm", help="HubSpot set-up for the CRM sink")
    crm_sub = crm.add_subparsers(dest="crm_command", required=True)
    crm_setup = crm_sub.add_parser(
        "setup", help="create the custom properties the CRM sink writes by (idempotent)",
        description="Create hookstream_call_key (calls, unique), hookstream_details (calls) "
        "and hookstream_phone_e164 (contacts, unique) in the HubSpot account of "
        "HOOKSTREAM_CRM_TOKEN (scope crm.schemas.calls.write and crm.schemas.contacts.write)."
        " Existing ones are left alone (HubSpot answers 409). See docs/sinks-crm.md.",
        epilog=help_epilog(CRMSettings), formatter_class=argparse.RawDescriptionHelpFormatter)
    crm_setup.set_defaults(func=cmd_crm_setup)
