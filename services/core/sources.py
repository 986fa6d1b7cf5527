"""Sources: the configured subscriptions that may deliver to ingest.

A *source* is one subscription of one provider (a deployment may have several
per provider). Sources are declared in a TOML file; secrets never appear in it,
only the names of the environment variables that hold them::

    [defaults]                      # optional; applies to every source
    max_body_bytes = 1048576

    [sources.acme-main]
    provider = "acme"                        # a folder of services/providers/
    secrets_env = ["ACME_SECRET", "ACME_SECRET_PREVIOUS"]   # rotation

    [sources.acme-prod]
    provider = "acme"
    path_secret_env = "ACME_PATH_SECRET"     # URL: /v1/webhooks/acme-prod/<secret>
    allow_cidrs = ["203.0.113.0/24"]
    trusted_proxies = ["10.20.0.0/24"]       # only these may set X-Forwarded-For

The settings every source accepts are in ``COMMON_KEYS``; provider-specific
ones are the provider's ``ProviderSpec.options``, documented in its folder
(``providers/<name>/auth.py``) and in docs/sources.md (deploy/local/sources.toml
has a source of every provider).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..providers import PROVIDERS
from ..providers.base import HEADER_NAME, ProviderSpec, Verifier, any_digest_matches
from ..providers.base import MIN_SECRET_BYTES as MIN_SECRET_BYTES  # re-exported
from .config import ConfigError

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_CONTENT_TYPES = ("application/json",)
MIN_PATH_SECRET_CHARS = 24
# Every other secret is at least MIN_SECRET_BYTES (16) long, checked where each
# provider reads it (providers/base.py: secrets_from).
# The value the shipped manifests put where a real secret belongs: never accepted.
PLACEHOLDER = "REPLACE_ME"
# Where a delivery's routing key (an event name sent outside the body) travels.
ROUTING_KEY_PLACES = ("header", "query", "path", "fixed")
DEFAULT_ROUTING_KEY_PARAM = "routing_key"
# The limit ingest applies to every value it copies onto the record (app.py truncates a
# longer one); a fixed key is checked against it at start-up instead.
MAX_ROUTING_KEY_CHARS = 256
# trusted_proxies wider than these prefixes are logged as a warning at start-up:
# every address in them may name the client in X-Forwarded-For.
WIDE_PROXY_PREFIX = {4: 16, 6: 48}
# The query parameter names a routing key may travel in.
_QUERY_NAME = re.compile(r"[0-9A-Za-z_.\-]+")

# Settings any source may set, with their defaults (documented in docs/sources.md).
COMMON_KEYS: dict[str, Any] = {
    "provider": None,  # required: a registered provider (providers/<name>/)
    "max_body_bytes": DEFAULT_MAX_BODY_BYTES,
    "content_types": list(DEFAULT_CONTENT_TYPES),
    "allow_missing_content_type": True,
    "path_secret_env": None,
    "path_secrets_env": None,
    "allow_cidrs": [],
    "trusted_proxies": [],
    "routing_key_from": "header",  # header | query | path | fixed
    "routing_key_header": "<provider default>",
    "routing_key_param": DEFAULT_ROUTING_KEY_PARAM,
    "routing_key": None,  # required with routing_key_from = "fixed"
    "event_id_header": "<provider default>",
    "allow_unauthenticated": False,
    "test_call_ids": [],  # call ids whose deliveries are tests (issue 13)
    "test_call_id_pattern": None,  # a regex; a call id it matches (re.fullmatch) is a test
}


@dataclasses.dataclass(frozen=True)
class TestCalls:
    """Which call ids of one source are test calls: the ids listed, or those the pattern
    matches whole (``re.fullmatch``). The call id is the canonical event's ``call_id``,
    else its ``session_id``. Read by the normalizer, which sets ``test`` on the event."""

    __test__ = False  # not a pytest class

    ids: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.ids) or self.pattern is not None

    def match(self, call_id: str | None) -> bool:
        if call_id is None:
            return False
        return call_id in self.ids or (
            self.pattern is not None and self.pattern.fullmatch(call_id) is not None)


def parse_test_calls(name: str, table: Mapping[str, Any]) -> TestCalls:
    """A source's ``test_call_ids`` and ``test_call_id_pattern``, checked."""
    ids = table.get("test_call_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise ConfigError(f"source {name!r}: test_call_ids must be a list of call ids "
                          f"(non-empty strings), got {ids!r}")
    pattern = table.get("test_call_id_pattern")
    if pattern is None:
        return TestCalls(frozenset(ids))
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"source {name!r}: test_call_id_pattern must be a regular "
                          f"expression, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"source {name!r}: test_call_id_pattern {pattern!r}: {exc}") from None
    return TestCalls(frozenset(ids), compiled)


def load_test_calls(path: str | Path) -> dict[str, TestCalls]:
    """Every source's test calls from the sources file, for the normalizer: only these
    settings are read (and ``[defaults]``), so no secret has to be in its environment."""
    document = _read_sources_file(path)
    defaults = document.get("defaults", {})
    tables = document.get("sources", {})
    if not isinstance(defaults, dict) or not isinstance(tables, dict):
        raise ConfigError(f"sources file {path}: [defaults] and [sources.<name>] must be tables")
    found: dict[str, TestCalls] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"sources.{name} must be a table")
        rule = parse_test_calls(name, {**defaults, **table})
        if rule:
            found[name] = rule
    return found


def load_api_keys(path: str | Path, environ: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """Each source's API key (the variable its provider's ``api_key_var`` hook names,
    e.g. ``api_key_env``), for the recordings sink and ``hookstream backfill``: only that
    setting is read, so no webhook secret has to be in their environment. A named
    variable that is unset or holds the placeholder is a ``ConfigError``; a source
    without one, or of a provider with no API key, has no key."""
    environ = os.environ if environ is None else environ
    document = _read_sources_file(path)
    defaults = document.get("defaults", {})
    tables = document.get("sources", {})
    if not isinstance(defaults, dict) or not isinstance(tables, dict):
        raise ConfigError(f"sources file {path}: [defaults] and [sources.<name>] must be tables")
    keys: dict[str, str] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"sources.{name} must be a table")
        merged = {**defaults, **table}
        spec = PROVIDERS.get(str(merged.get("provider")))
        if spec is None or spec.api_key_var is None:
            continue
        try:
            var = spec.api_key_var(name, merged)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if var is not None:
            keys[name] = _env_lookup(environ, name)(var)
    return keys


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    provider: ProviderSpec
    verifier: Verifier
    path_secrets: tuple[bytes, ...] = ()
    allow_networks: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    allow_missing_content_type: bool = True
    routing_key_from: str = "header"
    routing_key_header: str | None = None
    routing_key_param: str | None = None
    routing_key_value: str | None = None  # routing_key_from = "fixed"
    event_id_header: str | None = None
    test_calls: TestCalls = TestCalls()

    def path_secret_ok(self, given: str | None) -> bool:
        if not self.path_secrets:
            return given is None
        if given is None:
            return False
        return any_digest_matches([given.encode()], list(self.path_secrets))

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        """The delivering client's address; X-Forwarded-For only from trusted proxies."""
        try:
            address: IPAddress = _unmapped(ipaddress.ip_address(peer or ""))
        except ValueError:
            return None
        if not forwarded_for or not _within(address, self.trusted_proxies):
            return address
        # Walk from the nearest hop outwards; the first untrusted hop is the client.
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            try:
                address = _unmapped(ipaddress.ip_address(hop))
            except ValueError:
                return None
            if not _within(address, self.trusted_proxies):
                return address
        return address

    def network_ok(self, peer: str | None, forwarded_for: str | None) -> bool:
        if not self.allow_networks:
            return True
        address = self.client_ip(peer, forwarded_for)
        return address is not None and _within(address, self.allow_networks)

    def content_type_ok(self, value: str | None) -> bool:
        if value is None:
            return self.allow_missing_content_type
        media_type = value.split(";", 1)[0].strip().lower()
        return media_type in self.content_types

    def split_path(self, rest: list[str]) -> tuple[str | None, str | None] | None:
        """The path segments after the source's name as (path secret, routing key), or
        None when this source has no such URL (more segments than it takes).

        Position alone decides: with path secrets the first segment is always the
        secret, so a routing key is never taken for one (or the other way round).
        """
        first = rest[0] if rest else None
        if self.routing_key_from != "path":
            return None if len(rest) > 1 else (first, None)
        if not self.path_secrets:
            return None if len(rest) > 1 else (None, first)
        return None if len(rest) > 2 else (first, rest[1] if len(rest) == 2 else None)

    def url_path(self, routing_key: str | None = None) -> str:
        """The path a provider is given for this source (with its first path secret),
        with ``routing_key`` where the source expects it when that is in the URL."""
        path = f"/v1/webhooks/{self.name}"
        if self.path_secrets:
            path += f"/{self.path_secrets[0].decode()}"
        if routing_key is not None and self.routing_key_from == "path":
            path += f"/{urllib.parse.quote(routing_key, safe='')}"
        elif routing_key is not None and self.routing_key_from == "query":
            path += "?" + urllib.parse.urlencode({self.routing_key_param or "": routing_key})
        return path

    def routing_key_headers(self, routing_key: str | None) -> dict[str, str]:
        """The header carrying ``routing_key``, when this source takes it from one."""
        if routing_key is None or self.routing_key_from != "header" or not self.routing_key_header:
            return {}
        return {self.routing_key_header: routing_key}

    def recorded_routing_key(self, sent: str | None) -> str | None:
        """The routing key ingest records for a delivery sent with ``sent`` where this
        source expects it (``url_path`` and ``routing_key_headers``)."""
        if self.routing_key_from == "fixed":
            return self.routing_key_value
        if self.routing_key_from == "header" and not self.routing_key_header:
            return None
        return sent


def _unmapped(address: IPAddress) -> IPAddress:
    """A dual-stack listener sees IPv4 clients as ``::ffff:a.b.c.d``; compare them as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)


def _networks(source: str, key: str, values: Any) -> tuple[IPNetwork, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"source {source!r}: {key} must be a list of CIDRs")
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in values)
    except ValueError as exc:
        raise ConfigError(f"source {source!r}: {key}: {exc}") from None


def _every_address(networks: tuple[IPNetwork, ...]) -> bool:
    """True if the networks together cover all of IPv4 or all of IPv6 (a /0)."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(v4))
            or any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(v6)))


def _check_networks(name: str, allow: tuple[IPNetwork, ...],
                    trusted: tuple[IPNetwork, ...]) -> None:
    """Refuse an allow-list that allows everyone; warn on wide trusted proxies."""
    if _every_address(allow):
        raise ConfigError(
            f"source {name!r}: allow_cidrs {[str(n) for n in allow]} covers every address, "
            "so it authenticates nothing; list the provider's ranges (or leave it empty "
            "on a signed source)")
    if allow and _every_address(trusted):
        raise ConfigError(
            f"source {name!r}: trusted_proxies {[str(n) for n in trusted]} trusts every "
            "address, so any client can name itself in X-Forwarded-For and pass "
            "allow_cidrs; list only the load balancer's addresses")
    wide = [str(n) for n in trusted if n.prefixlen < WIDE_PROXY_PREFIX[n.version]]
    if wide:
        log.warning(
            "source %r: trusted_proxies %s are wide (shorter than /%d for IPv4, /%d for "
            "IPv6): every address in them may set X-Forwarded-For and so choose the client "
            "address allow_cidrs judges; list only the proxies' own addresses",
            name, wide, WIDE_PROXY_PREFIX[4], WIDE_PROXY_PREFIX[6])


def _env_lookup(environ: Mapping[str, str], source: str) -> Any:
    """Read a secret's variable; a missing variable or the placeholder is refused."""

    def lookup(var: str) -> str:
        try:
            value = environ[var]
        except KeyError:
            raise ConfigError(
                f"source {source!r}: environment variable {var} is not set"
            ) from None
        if PLACEHOLDER in value:
            raise ConfigError(
                f"source {source!r}: environment variable {var} holds the placeholder "
                f"{PLACEHOLDER}: set the real secret"
            )
        return value

    return lookup


@dataclasses.dataclass(frozen=True)
class _RoutingKeyPlace:
    place: str = "header"
    header: str | None = None
    param: str | None = None
    value: str | None = None


def _routing_key_place(name: str, table: Mapping[str, Any],
                       provider: ProviderSpec) -> _RoutingKeyPlace:
    """Where this source's routing key travels, checked: the key that names the place
    must be the one set, so a setting for another place is refused, not ignored."""
    place = table.get("routing_key_from", "header")
    if place not in ROUTING_KEY_PLACES:
        raise ConfigError(f"source {name!r}: routing_key_from must be one of "
                          f"{list(ROUTING_KEY_PLACES)}, got {place!r}")
    owner = {"routing_key_header": "header", "routing_key_param": "query",
             "routing_key": "fixed"}
    for key, needs in owner.items():
        if key in table and place != needs:
            raise ConfigError(f"source {name!r}: {key} applies only with "
                              f'routing_key_from = "{needs}" (this source has "{place}")')
    if place == "header":
        header = table.get("routing_key_header", provider.default_routing_key_header)
        if header is not None and not (isinstance(header, str) and HEADER_NAME.fullmatch(header)):
            raise ConfigError(f"source {name!r}: routing_key_header must be an HTTP header "
                              f"name, got {header!r}")
        return _RoutingKeyPlace(place, header=header)
    if place == "query":
        param = table.get("routing_key_param", DEFAULT_ROUTING_KEY_PARAM)
        if not isinstance(param, str) or not param or not _QUERY_NAME.fullmatch(param):
            raise ConfigError(f"source {name!r}: routing_key_param must be a query parameter "
                              f"name (letters, digits, '-', '_', '.'), got {param!r}")
        return _RoutingKeyPlace(place, param=param)
    if place == "fixed":
        value = table.get("routing_key")
        # The limits ingest applies to a key it copies from a request (ASCII, at most
        # MAX_ROUTING_KEY_CHARS), so a fixed key is stored exactly as configured.
        if (not isinstance(value, str) or not value.strip() or value != value.strip()
                or len(value) > MAX_ROUTING_KEY_CHARS
                or not (value.isascii() and value.isprintable())):
            raise ConfigError(
                f"source {name!r}: routing_key_from = \"fixed\" needs routing_key, the event "
                f"name every delivery to this source carries (e.g. \"call.ended\"; printable "
                f"ASCII, at most {MAX_ROUTING_KEY_CHARS} characters), got {value!r}")
        return _RoutingKeyPlace(place, value=value)
    return _RoutingKeyPlace(place)  # path: the segment after the path secret


def known_keys() -> set[str]:
    """Every setting some source may set: the common ones and each provider's."""
    return set(COMMON_KEYS).union(*(spec.options for spec in PROVIDERS.values()))


def build_source(
    name: str, table: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Source:
    environ = os.environ if environ is None else environ
    provider_name = table.get("provider")
    if provider_name not in PROVIDERS:
        raise ConfigError(
            f"source {name!r}: provider must be one of {sorted(PROVIDERS)}, got {provider_name!r}"
        )
    provider = PROVIDERS[provider_name]
    # A misspelt setting would otherwise be silently ignored and its default used.
    # A warning, not a refusal: [defaults] may hold any provider's settings, and a
    # setting another provider knows is not flagged for that reason.
    unknown = sorted(set(table) - known_keys())
    if unknown:
        log.warning("source %r: unknown settings %s are ignored (docs/sources.md lists "
                    "every setting)", name, unknown)
    lookup = _env_lookup(environ, name)
    verifier = provider.build_verifier(name, table, lookup)

    path_vars: list[str] = []
    if isinstance(table.get("path_secret_env"), str):
        path_vars.append(table["path_secret_env"])
    if isinstance(table.get("path_secrets_env"), list):
        path_vars.extend(str(v) for v in table["path_secrets_env"])
    path_secrets = tuple(lookup(v).encode() for v in path_vars)
    for var, secret in zip(path_vars, path_secrets, strict=True):
        if len(secret) < MIN_PATH_SECRET_CHARS or "/" in secret.decode():
            raise ConfigError(
                f"source {name!r}: environment variable {var}: a path secret must be at "
                f"least {MIN_PATH_SECRET_CHARS} characters without '/' (use e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )

    allow = _networks(name, "allow_cidrs", table.get("allow_cidrs", []))
    trusted = _networks(name, "trusted_proxies", table.get("trusted_proxies", []))
    _check_networks(name, allow, trusted)
    if not (verifier.authenticates or path_secrets or allow) and not table.get(
        "allow_unauthenticated", False
    ):
        raise ConfigError(
            f"source {name!r}: {provider.name} deliveries carry no signature here; set "
            "path_secret_env and/or allow_cidrs (or allow_unauthenticated = true)"
        )

    routing = _routing_key_place(name, table, provider)
    content_types = table.get("content_types", list(DEFAULT_CONTENT_TYPES))
    return Source(
        name=name,
        provider=provider,
        verifier=verifier,
        path_secrets=path_secrets,
        allow_networks=allow,
        trusted_proxies=trusted,
        max_body_bytes=int(table.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        content_types=tuple(str(c).lower() for c in content_types),
        allow_missing_content_type=bool(table.get("allow_missing_content_type", True)),
        routing_key_from=routing.place,
        routing_key_header=routing.header,
        routing_key_param=routing.param,
        routing_key_value=routing.value,
        event_id_header=table.get("event_id_header", provider.default_event_id_header),
        test_calls=parse_test_calls(name, table),
    )


def parse_sources(
    document: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Source]:
    defaults = document.get("defaults", {})
    tables = document.get("sources", {})
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("the sources file declares no [sources.<name>] table")
    sources: dict[str, Source] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"sources.{name} must be a table")
        sources[name] = build_source(name, {**defaults, **table}, environ)
    return sources


def load_sources(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Source]:
    """Read and validate the sources file; any problem raises ``ConfigError``."""
    return parse_sources(_read_sources_file(path), environ)


def _read_sources_file(path: str | Path) -> dict[str, Any]:
    """The sources file's TOML document; a missing or unreadable file is ``ConfigError``."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"sources file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sources file {path}: {exc}") from None
