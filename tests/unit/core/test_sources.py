"""Sources: network allow-lists and X-Forwarded-For, config errors, the sources file."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from hookstream.core.config import ConfigError
from hookstream.core.sources import (
    DEFAULT_MAX_BODY_BYTES,
    load_sources,
    parse_sources,
)
from hookstream.providers.saaya.auth import SaayaVerifier
from hookstream.providers.sawt.auth import SawtVerifier
from tests.support import ENV, source

REPO = Path(__file__).resolve().parents[3]
LOCAL = REPO / "deploy" / "local"

ALLOW = ["203.0.113.0/24", "2001:db8:1::/48"]
PROXIES = ["10.0.0.0/8", "fd00::/8"]


@pytest.fixture
def proxied():
    return source("sarj", provider="sarj", allow_cidrs=ALLOW, trusted_proxies=PROXIES)


@pytest.fixture
def direct():
    return source("sarj", provider="sarj", allow_cidrs=ALLOW)


# --- allow-list and X-Forwarded-For --------------------------------------------------


def test_direct_peer_in_and_out(direct) -> None:
    assert direct.network_ok("203.0.113.1", None) is True
    assert direct.network_ok("203.0.113.255", None) is True
    assert direct.network_ok("203.0.114.1", None) is False
    assert direct.network_ok("127.0.0.1", None) is False


def test_missing_or_garbage_peer_rejected(direct) -> None:
    assert direct.network_ok(None, None) is False
    assert direct.network_ok("", None) is False
    assert direct.network_ok("testclient", None) is False


def test_no_allow_list_means_any_network() -> None:
    src = source("s", provider="sawt", secret_env="SAWT_SECRET")
    assert src.network_ok("198.51.100.1", None) is True
    assert src.network_ok(None, "garbage") is True


def test_xff_ignored_from_untrusted_peer(direct, proxied) -> None:
    # No trusted proxies at all: the header is ignored.
    assert direct.network_ok("198.51.100.7", "203.0.113.9") is False
    assert direct.network_ok("203.0.113.9", "198.51.100.7") is True
    # Trusted proxies configured, but the peer is not one of them.
    assert proxied.network_ok("198.51.100.7", "203.0.113.9") is False
    assert proxied.client_ip("198.51.100.7", "203.0.113.9") == ipaddress.ip_address(
        "198.51.100.7")


def test_xff_honoured_from_trusted_peer(proxied) -> None:
    assert proxied.client_ip("10.1.2.3", "203.0.113.9") == ipaddress.ip_address("203.0.113.9")
    assert proxied.network_ok("10.1.2.3", "203.0.113.9") is True
    assert proxied.network_ok("10.1.2.3", "198.51.100.7") is False


def test_trusted_peer_without_xff_is_itself_the_client(proxied) -> None:
    assert proxied.client_ip("10.1.2.3", None) == ipaddress.ip_address("10.1.2.3")
    assert proxied.network_ok("10.1.2.3", None) is False
    assert proxied.network_ok("10.1.2.3", "") is False


def test_multi_hop_trusted_rightmost_hops(proxied) -> None:
    # client -> proxy 10.9.9.9 -> proxy 10.8.8.8 -> peer 10.1.2.3
    xff = "203.0.113.9, 10.9.9.9, 10.8.8.8"
    assert proxied.client_ip("10.1.2.3", xff) == ipaddress.ip_address("203.0.113.9")
    assert proxied.network_ok("10.1.2.3", xff) is True
    assert proxied.network_ok("10.1.2.3", "198.51.100.7,10.9.9.9,10.8.8.8") is False


def test_spoofed_leftmost_entry_ignored(proxied) -> None:
    # The client (198.51.100.7, not allowed) put an allowed address in XFF itself;
    # the trusted proxy appended the real client address.
    xff = "203.0.113.9, 198.51.100.7"
    assert proxied.client_ip("10.1.2.3", xff) == ipaddress.ip_address("198.51.100.7")
    assert proxied.network_ok("10.1.2.3", xff) is False
    # ...and the reverse: a spoofed disallowed address on the left does not hurt.
    assert proxied.network_ok("10.1.2.3", "198.51.100.7, 203.0.113.9") is True


def test_all_hops_trusted_falls_back_to_leftmost(proxied) -> None:
    assert proxied.client_ip("10.1.2.3", "10.7.7.7, 10.8.8.8") == ipaddress.ip_address(
        "10.7.7.7")
    assert proxied.network_ok("10.1.2.3", "10.7.7.7, 10.8.8.8") is False


def test_ipv6(direct, proxied) -> None:
    assert direct.network_ok("2001:db8:1::5", None) is True
    assert direct.network_ok("2001:db8:2::5", None) is False
    assert direct.network_ok("::1", None) is False
    assert proxied.network_ok("fd00::1", "2001:db8:1::abcd") is True
    assert proxied.network_ok("fd00::1", "2001:db8:1::abcd, fd12::3") is True
    assert proxied.network_ok("fd00::1", "2001:db8:9::1") is False
    # An IPv6 proxy forwarding for an IPv4 client, and vice versa.
    assert proxied.network_ok("fd00::1", "203.0.113.4") is True
    assert proxied.network_ok("10.0.0.1", "2001:db8:1::1") is True


@pytest.mark.parametrize("xff", [
    "not-an-ip",
    "203.0.113.9, garbage",
    "203.0.113.9:443",
    "[2001:db8:1::1]",
    "203.0.113.9, 10.1.1.1, 999.1.1.1",
])
def test_malformed_xff_from_trusted_peer_rejected(proxied, xff: str) -> None:
    assert proxied.client_ip("10.1.2.3", xff) is None
    assert proxied.network_ok("10.1.2.3", xff) is False


def test_malformed_entry_left_of_the_client_is_never_reached(proxied) -> None:
    # The walk stops at the rightmost untrusted hop; what the client wrote further
    # left (here garbage) is not looked at.
    assert proxied.network_ok("10.1.2.3", "garbage, 203.0.113.9") is True


def test_malformed_xff_from_untrusted_peer_is_ignored(proxied) -> None:
    assert proxied.network_ok("203.0.113.9", "garbage") is True


def test_ipv4_mapped_ipv6_peer_matches_ipv4_allow_list(direct) -> None:
    assert direct.network_ok("::ffff:203.0.113.9", None) is True


def test_bad_cidr_is_config_error() -> None:
    with pytest.raises(ConfigError, match="allow_cidrs"):
        source("s", provider="sarj", allow_cidrs=["203.0.113.0/33"])
    with pytest.raises(ConfigError, match="trusted_proxies"):
        source("s", provider="sarj", allow_cidrs=ALLOW, trusted_proxies=["nope"])
    with pytest.raises(ConfigError, match="must be a list"):
        source("s", provider="sarj", allow_cidrs="203.0.113.0/24")


# --- content types and limits ---------------------------------------------------------


def test_content_type_checks() -> None:
    src = source("s", provider="sawt", secret_env="SAWT_SECRET")
    assert src.content_type_ok("application/json") is True
    assert src.content_type_ok("Application/JSON; charset=utf-8") is True
    assert src.content_type_ok("text/html") is False
    assert src.content_type_ok("application/jsonp") is False
    assert src.content_type_ok(None) is True
    strict = source("s", provider="sawt", secret_env="SAWT_SECRET",
                    allow_missing_content_type=False,
                    content_types=["application/json", "Application/X-Www-Form-Urlencoded"])
    assert strict.content_type_ok(None) is False
    assert strict.content_type_ok("application/x-www-form-urlencoded") is True


# --- configuration errors -------------------------------------------------------------


def test_missing_secret_env_names_variable() -> None:
    with pytest.raises(ConfigError) as info:
        source("saaya-x", {}, provider="saaya", secret_env="SAAYA_SECRET_THAT_IS_MISSING")
    assert "SAAYA_SECRET_THAT_IS_MISSING" in str(info.value)
    assert "saaya-x" in str(info.value)


def test_unknown_provider_is_config_error() -> None:
    with pytest.raises(ConfigError, match="provider must be one of"):
        source("s", provider="twilio")
    with pytest.raises(ConfigError, match="provider must be one of"):
        source("s")


def test_parse_sources_defaults_apply_and_can_be_overridden() -> None:
    doc = {
        "defaults": {"max_body_bytes": 2048, "allow_missing_content_type": False},
        "sources": {
            "a": {"provider": "sawt", "secret_env": "SAWT_SECRET"},
            "b": {"provider": "sawt", "secret_env": "SAWT_SECRET", "max_body_bytes": 10},
        },
    }
    sources = parse_sources(doc, ENV)
    assert sources["a"].max_body_bytes == 2048
    assert sources["a"].allow_missing_content_type is False
    assert sources["b"].max_body_bytes == 10
    assert sources["b"].allow_missing_content_type is False


def test_defaults_absent_gives_builtin_default() -> None:
    sources = parse_sources({"sources": {"a": {"provider": "sawt", "secret_env": "SAWT_SECRET"}}},
                            ENV)
    assert sources["a"].max_body_bytes == DEFAULT_MAX_BODY_BYTES


def test_parse_sources_structural_errors() -> None:
    with pytest.raises(ConfigError, match="declares no"):
        parse_sources({}, ENV)
    with pytest.raises(ConfigError, match="declares no"):
        parse_sources({"sources": {}}, ENV)
    with pytest.raises(ConfigError, match="must be a table"):
        parse_sources({"sources": {"a": "saaya"}}, ENV)


def test_load_sources_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_sources(tmp_path / "nope.toml", ENV)


def test_load_sources_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sources.a\nprovider = ", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_sources(path, ENV)


# --- the local sources file -------------------------------------------------------


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r'\s*export\s+([A-Z0-9_]+)="([^"]*)"\s*', line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def test_local_sources_file_builds_all_five() -> None:
    env = parse_env_file(LOCAL / "sources.env")
    assert len(env) == 7
    sources = load_sources(LOCAL / "sources.toml", env)
    assert set(sources) == {"saaya-main", "saaya-hex", "sawt-main", "sawt-basic", "sarj-main"}
    assert {n: s.provider.name for n, s in sources.items()} == {
        "saaya-main": "saaya", "saaya-hex": "saaya", "sawt-main": "sawt",
        "sawt-basic": "sawt", "sarj-main": "sarj",
    }
    assert all(s.max_body_bytes == 1048576 for s in sources.values())

    main = sources["saaya-main"].verifier
    assert isinstance(main, SaayaVerifier)
    assert main.scheme == "standard-webhooks" and len(main.keys) == 2 and main.tolerance_s == 300
    assert sources["saaya-main"].event_id_header == "webhook-id"
    assert isinstance(sources["saaya-hex"].verifier, SaayaVerifier)
    assert sources["saaya-hex"].verifier.scheme == "hex"
    sawt_main = sources["sawt-main"]
    assert isinstance(sawt_main.verifier, SawtVerifier) and sawt_main.verifier.mode == "header"
    assert sawt_main.routing_key_header == "X-Routing-Key"
    assert isinstance(sources["sawt-basic"].verifier, SawtVerifier)
    assert sources["sawt-basic"].verifier.mode == "basic"
    sarj = sources["sarj-main"]
    assert sarj.path_secret_ok(env["SARJ_MAIN_PATH_SECRET"])
    assert sarj.network_ok("127.0.0.1", None) and sarj.network_ok("::1", None)
    assert not sarj.network_ok("203.0.113.1", None)


def test_local_sources_file_needs_its_env() -> None:
    env = parse_env_file(LOCAL / "sources.env")
    del env["SAWT_BASIC_PASSWORD"]
    with pytest.raises(ConfigError, match="SAWT_BASIC_PASSWORD"):
        load_sources(LOCAL / "sources.toml", env)
