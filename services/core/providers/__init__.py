"""The provider registry: provider name to its module's ``PROVIDER`` spec."""

from __future__ import annotations

from . import saaya, sarj, sawt
from .base import ProviderSpec

PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec for spec in (saaya.PROVIDER, sawt.PROVIDER, sarj.PROVIDER)
}

__all__ = ["PROVIDERS", "ProviderSpec"]
