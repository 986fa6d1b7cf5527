"""Structured logging: one JSON object per line on stderr.

Extra context travels through ``logger.info("msg", extra={"source": ...})``;
every key that is not a standard LogRecord attribute lands in the JSON object.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from .config import LogSettings

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(service: str, settings: LogSettings | None = None) -> None:
    """Install the handler once per process; safe to call again (tests)."""
    settings = settings or LogSettings()
    handler = logging.StreamHandler(sys.stderr)
    if settings.json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # aiokafka logs every reconnect attempt at ERROR; our own lines say what matters.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("uvicorn.access").disabled = True
