"""Configuration from environment variables, one frozen dataclass per service.

Each field is declared with :func:`env` so that its variable name, default and
one-line doc live in one place; ``--help`` and the README's reference table are
generated from the same declarations (:func:`describe`), so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


def env(name: str, default: Any, doc: str) -> Any:
    """Declare a dataclass field read from environment variable ``name``."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"env": name, "doc": doc})


def secret(name: str, doc: str) -> Any:
    """Like :func:`env` (default empty) but kept out of the dataclass repr, and so out
    of logs."""
    return dataclasses.field(default="", repr=False, metadata={"env": name, "doc": doc})


def _convert(name: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw == "":
            return None
        return _convert(name, raw, args[0])
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected true/false")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def load(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from the environment; ``overrides`` win (used by CLIs and tests)."""
    source = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        var = field.metadata.get("env")
        if var and var in source:
            values[field.name] = _convert(var, source[var], hints[field.name])
    return cls(**values)


def describe(*classes: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, doc) rows for ``--help`` and the README reference."""
    rows: list[tuple[str, str, str]] = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            var = field.metadata.get("env")
            if not var:
                continue
            default = field.default
            if isinstance(default, tuple):
                shown = ",".join(str(d) for d in default)
            elif default is None:
                shown = ""
            else:
                shown = str(default).lower() if isinstance(default, bool) else str(default)
            rows.append((var, shown, field.metadata["doc"]))
    return rows


def help_epilog(*classes: type[Any]) -> str:
    """The environment reference as plain text, for argparse epilogs."""
    rows = describe(*classes)
    width = max(len(r[0]) for r in rows) if rows else 0
    lines = ["environment (default in brackets):"]
    for var, default, doc in rows:
        lines.append(f"  {var.ljust(width)}  {doc} [{default}]")
    return "\n".join(lines)


def markdown_table(*classes: type[Any]) -> str:
    """The environment reference as a Markdown table (README, docs)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var, default, doc in describe(*classes):
        lines.append(f"| `{var}` | `{default}` | {doc} |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """How every hookstream process reaches the broker and names its topics."""

    bootstrap: str = env("HOOKSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers")
    client_id: str = env("HOOKSTREAM_KAFKA_CLIENT_ID", "hookstream", "Kafka client.id prefix")
    raw_topic: str = env("HOOKSTREAM_RAW_TOPIC", "hookstream.raw.v1", "topic of raw deliveries")
    events_topic: str = env(
        "HOOKSTREAM_EVENTS_TOPIC", "hookstream.events.v1", "topic of canonical events"
    )
    dlq_topic: str = env("HOOKSTREAM_DLQ_TOPIC", "hookstream.dlq.v1", "dead-letter topic")
    sink_topic_prefix: str = env(
        "HOOKSTREAM_SINK_TOPIC_PREFIX", "hookstream.sink",
        "prefix of each sink's retry and dead-letter topics (<prefix>.<sink>.retry.v1)")
    request_timeout_ms: int = env(
        "HOOKSTREAM_KAFKA_REQUEST_TIMEOUT_MS", 10000, "Kafka request timeout (ms)"
    )
    compression: str = env(
        "HOOKSTREAM_KAFKA_COMPRESSION", "none",
        "producer batch compression: none, gzip, snappy, lz4 or zstd")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """Logging shared by every process."""

    level: str = env("HOOKSTREAM_LOG_LEVEL", "INFO", "log level (DEBUG, INFO, WARNING, ERROR)")
    json: bool = env("HOOKSTREAM_LOG_JSON", True, "JSON log lines (false: human-readable)")


@dataclasses.dataclass(frozen=True)
class PostgresSettings:
    """The PostgreSQL database (dedupe marks, the warehouse)."""

    dsn: str = env(
        "HOOKSTREAM_PG_DSN",
        "postgresql://hookstream:hookstream@127.0.0.1:5432/hookstream",
        "PostgreSQL connection string",
    )
    pool_max: int = env("HOOKSTREAM_PG_POOL_MAX", 4, "connections per process")
    command_timeout_s: float = env(
        "HOOKSTREAM_PG_COMMAND_TIMEOUT_S", 30.0,
        "per-statement timeout (a dead connection never hangs)",
    )
