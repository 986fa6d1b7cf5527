"""The settings every fetching sink has, declared once with the sink's own variable
names and words, and checked once (:func:`validate`).

Each sink's settings class still lists every field itself, in its own order and with
its own variable name (so a variable is found where it is read, and the README's
reference keeps its order); what it takes from here is the wording of the shared
fields' docs and their checks, so the two sinks cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Protocol

from ...core.config import ConfigError, env

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Words:
    """How a fetching sink names what it fetches, in its docs, logs and details."""

    thing: str  # "recording"
    things: str  # "recordings" (also the sink's name)
    act: str  # "download": one fetch of one thing
    acts: str  # "downloads"


class FetchingSettings(Protocol):
    """What the fetching sink reads of a sink's settings (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def max_bytes(self) -> int: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def batch_deadline_s(self) -> float: ...

    @property
    def allowed_hosts(self) -> tuple[str, ...]: ...

    @property
    def allow_private_addresses(self) -> bool: ...

    @property
    def timeout_s(self) -> float:
        """The longest time for one fetch (each sink's own field, under its own name)."""
        ...


def variable(settings: FetchingSettings, field: str) -> str:
    """The environment variable ``field`` of ``settings`` is read from (messages name
    it as declared, never a second spelling)."""
    return str(settings.__dataclass_fields__[field].metadata["env"])


# ------------------------------------------------------------ the shared fields
def max_bytes_setting(name: str, default: int, words: Words, too_large: str) -> Any:
    return env(name, default, f"largest {words.thing} fetched; a larger one is "
               f"dead-lettered ({too_large}) without reading the rest")


def timeout_setting(name: str, default: float, words: Words) -> Any:
    return env(name, default, f"longest time for one {words.act}, start to last byte (also "
               "the connect/read timeout)")


def concurrency_setting(name: str, default: int, words: Words) -> Any:
    return env(name, default, f"{words.acts} in flight at once")


def batch_deadline_setting(name: str, default: float, words: Words) -> Any:
    return env(name, default, f"no new {words.act} starts after this long on one batch; the "
               "rest is parked on the retry topic (keeps the consumer inside "
               "max.poll.interval)")


def allowed_hosts_setting(name: str, default: tuple[str, ...], words: Words,
                          url_rejected: str, note: str = "") -> Any:
    doc = (f"hosts {words.things} may be fetched from, redirects included (exact name, or "
           f".suffix for its subdomains); empty: none, every {words.thing} is dead-lettered "
           f"({url_rejected})")
    return env(name, default, f"{doc}. {note}" if note else doc)


def allow_private_setting(name: str) -> Any:
    return env(name, False, "tests and development only: also fetch from loopback, private "
               "and link-local addresses (never cloud metadata, multicast or unspecified "
               "ones); false: only public addresses, checked after DNS resolution on every "
               "redirect hop")


# ------------------------------------------------------------ the shared checks
def validate(settings: FetchingSettings, words: Words, *, timeout_field: str) -> None:
    """The checks of the shared fields; ``timeout_field`` is the sink's name for
    :attr:`FetchingSettings.timeout_s`."""
    if settings.max_bytes <= 0:
        raise ConfigError(f"{variable(settings, 'max_bytes')} must be positive")
    if settings.concurrency < 1:
        raise ConfigError(f"{variable(settings, 'concurrency')} must be >= 1")
    for name, value in ((timeout_field, settings.timeout_s),
                        ("batch_deadline_s", settings.batch_deadline_s)):
        if value <= 0:
            raise ConfigError(f"{words.things} setting {name} must be positive")
    for host in settings.allowed_hosts:
        if not re.fullmatch(r"\.?[A-Za-z0-9_.:-]+", host) or host.strip(".") == "":
            raise ConfigError(f"{variable(settings, 'allowed_hosts')}: {host!r} is not a "
                              "host name (no scheme, port, path or wildcard; .suffix for "
                              "subdomains)")
