"""Sawt: a bare call object per status change; a shared secret or HTTP Basic
(auth.py); the event name travels outside the body as a routing key (adapter.py)."""

from __future__ import annotations

from ..base import ProviderSpec, SenderRetries
from . import adapter, auth, load_mix

SPEC = ProviderSpec(
    name=adapter.PROVIDER,
    title="Sawt",
    build_verifier=auth.build_verifier,
    natural_key=auth.natural_key,
    adapter=adapter.ADAPTER,
    default_routing_key_header=auth.DEFAULT_ROUTING_KEY_HEADER,
    options=auth.OPTIONS,
    event_in_routing_key=True,
    load_mix=load_mix.MIX,
    # Its document states no retry policy: assumed the shape of the documented ones.
    sender_retries=SenderRetries(retries=3, delay_s=2.0, timeout_s=10.0, documented=False),
)
