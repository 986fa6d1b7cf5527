"""Sarj.ai: one webhook per call, no signature yet (auth.py: a path secret or an IP
allow-list); the call API (api.py) for fresh recording URLs and ``hookstream
backfill sarj`` (backfill.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..base import MediaUrl, ProviderSettings, ProviderSpec, RecordingUrls, SenderRetries
from . import adapter, auth, load_mix
from .settings import SarjApiSettings


def recording_urls() -> RecordingUrls | None:
    from .api import from_environment

    return from_environment()


def point_media(body: dict[str, Any], media_url: MediaUrl) -> None:
    """A ``payload.call_data.recording_url`` (when set) becomes the call's recording at
    ``media_url``; a call without a recording keeps none."""
    payload = body.get("payload")
    call_data = payload.get("call_data") if isinstance(payload, dict) else None
    if not isinstance(call_data, dict) or not isinstance(call_data.get("recording_url"), str):
        return
    call_id = call_data.get("call_id") or body.get("call_id")
    if isinstance(call_id, str) and call_id:
        call_data["recording_url"] = media_url("recording", call_id)


def add_backfill_command(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         default_sources: str, printable: Callable[[str], str]) -> None:
    from .backfill import add_command

    add_command(sub, default_sources, printable)


SPEC = ProviderSpec(
    name=adapter.PROVIDER,
    title="Sarj.ai",
    build_verifier=auth.build_verifier,
    natural_key=auth.natural_key,
    adapter=adapter.ADAPTER,
    options=auth.OPTIONS,
    load_mix=load_mix.MIX,
    # As documented ("Retries"): 3 retries 2 s apart, each try with a 10 s timeout.
    sender_retries=SenderRetries(retries=3, delay_s=2.0, timeout_s=10.0, documented=True),
    settings=(ProviderSettings("call API", SarjApiSettings,
                               ("hookstream-sink-recordings", "hookstream backfill")),),
    api_key_var=auth.api_key_var,
    recording_urls=recording_urls,
    add_backfill_command=add_backfill_command,
    # Its recordings: signed, expiring Google Cloud Storage URLs.
    recording_hosts=("storage.googleapis.com",),
    point_media=point_media,
)
