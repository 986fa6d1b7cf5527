"""Sarj.ai: one webhook per call, no signature yet (auth.py: a path secret or an IP
allow-list); the call API (api.py) for fresh recording URLs and ``hookstream
backfill sarj`` (backfill.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..base import ProviderSettings, ProviderSpec, RecordingUrls, SenderRetries
from . import adapter, auth, load_mix
from .settings import SarjApiSettings


def recording_urls() -> RecordingUrls | None:
    from .api import from_environment

    return from_environment()


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
)
