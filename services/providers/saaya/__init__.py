"""Saaya: voice sessions, agents, campaigns and knowledge bases; HMAC-signed deliveries
in a per-source form (auth.py), a versioned envelope (adapter.py)."""

from __future__ import annotations

from typing import Any

from ...core.config import load
from ..base import MediaUrl, ProviderSettings, ProviderSpec, SenderRetries
from . import adapter, auth, load_mix
from .settings import SaayaSettings


def renew_ids(body: dict[str, Any], tag: str) -> None:
    """The envelope ``id`` and ``data.sessionId``, each ``<id>_<tag>``."""
    body["id"] = f"{body.get('id', 'evt')}_{tag}"
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("sessionId"), str):
        data["sessionId"] = f"{data['sessionId']}_{tag}"


def point_media(body: dict[str, Any], media_url: MediaUrl) -> None:
    """A ``data.transcriptUrl`` (when set) becomes the session's transcript at
    ``media_url``."""
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("transcriptUrl"), str):
        return
    session_id = data.get("sessionId")
    if isinstance(session_id, str) and session_id:
        data["transcriptUrl"] = media_url("transcript", session_id)


def figures(body: dict[str, Any]) -> Any:
    return body.get("data")


def accepted_versions() -> tuple[str, ...]:
    return load(SaayaSettings).versions


SPEC = ProviderSpec(
    name=adapter.PROVIDER,
    title="Saaya",
    build_verifier=auth.build_verifier,
    natural_key=auth.natural_key,
    adapter=adapter.ADAPTER,
    default_event_id_header="webhook-id",
    options=auth.OPTIONS,
    renew_ids=renew_ids,
    figures=figures,
    load_mix=load_mix.MIX,
    # Its document states no retry policy: assumed the shape of the documented ones.
    sender_retries=SenderRetries(retries=3, delay_s=2.0, timeout_s=10.0, documented=False),
    settings=(ProviderSettings("envelope versions", SaayaSettings,
                               ("hookstream-normalizer",)),),
    accepted_versions=accepted_versions,
    # Its document shows transcript URLs on its API host (transcriptUrl).
    transcript_hosts=("api.saaya.ai",),
    point_media=point_media,
)
