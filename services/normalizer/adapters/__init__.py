"""Provider adapters: provider name to the module that maps its events (``ADAPTER``)."""

from __future__ import annotations

from . import saaya, sarj, sawt
from .base import Adapter

ADAPTERS: dict[str, Adapter] = {a.provider: a for a in (saaya.ADAPTER, sawt.ADAPTER, sarj.ADAPTER)}

__all__ = ["ADAPTERS", "Adapter"]
