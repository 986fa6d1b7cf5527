"""``hookstream-sink-crm``: log every finished call in the CRM."""

from __future__ import annotations

import logging

from ...core.config import load
from ..runner import sink_main
from .settings import CRMSettings
from .sink import CRMSink


def build() -> CRMSink:
    settings = load(CRMSettings)
    settings.validate()
    # httpx logs every request at INFO; the sink's metrics and its own lines say enough.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return CRMSink(settings)


def main(argv: list[str] | None = None) -> int:
    return sink_main(
        "crm",
        "Consume canonical finished-call events (call.ended, call.analyzed, "
        "call.not_connected, session.ended) and log each call as an activity on the "
        "caller's contact in the CRM (HubSpot-shaped API or a generic JSON webhook).",
        build, settings_classes=(CRMSettings,), argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
