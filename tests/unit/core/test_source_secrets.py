"""Start-up refuses weak source configuration: short or placeholder secrets, an empty
Basic user, an allow-list of every address; it warns on wide trusted proxies.

Every refusal is a ``ConfigError`` from ``build_source`` (so ``hookstream-ingest
--check-config`` and start-up both fail) naming the source and the variable.
"""

from __future__ import annotations

import base64
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookstream.core import sources as sources_module
from hookstream.core.config import ConfigError
from hookstream.core.sources import build_source, load_sources
from hookstream.providers.saaya.auth import SaayaVerifier
from tests.support import ENV, H, source, std_headers

REPO = Path(__file__).resolve().parents[3]
BODY = b'{"id":"evt_1","type":"session.started","version":"1"}'
NOW = 1_700_000_000.0
LONG = "a-long-enough-secret-0123456789"
MIN_SECRET_BYTES = 16  # the rule, in bytes of HMAC key / secret


def _refused(table: dict[str, Any], env: dict[str, str], *, var: str, name: str = "src",
             match: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_source(name, table, env)
    message = str(caught.value)
    assert repr(name) in message, message
    assert var in message, message
    assert re.search(match, message), message
    return caught.value


# --- whsec_ with an empty key: a forged signature was accepted ----------------------


def test_empty_whsec_key_is_refused_not_forgeable() -> None:
    """``whsec_`` alone decodes to an empty HMAC key: anyone can compute the signature.

    On the old code the source loaded and the forged delivery verified; now the
    configuration is refused at start-up.
    """
    table = {"provider": "saaya", "secret_env": "SAAYA_EMPTY_KEY"}
    try:
        src = build_source("saaya-main", table, {"SAAYA_EMPTY_KEY": "whsec_"})
    except ConfigError as exc:
        assert "'saaya-main'" in str(exc) and "SAAYA_EMPTY_KEY" in str(exc)
        return
    forged = std_headers(b"", "msg_forged", int(NOW), BODY)  # the attacker's key: none
    accepted = src.verifier.verify(H(forged), BODY, NOW)
    pytest.fail(f"whsec_ with an empty key loaded; forged signature accepted: {accepted}")


def test_empty_key_verifier_accepts_forgery() -> None:
    """Why the rule exists: an empty key makes the signature public knowledge."""
    verifier = SaayaVerifier(keys=(b"",))
    assert verifier.verify(H(std_headers(b"", "m", int(NOW), BODY)), BODY, NOW) is True


# --- minimum length -------------------------------------------------------------------


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


@pytest.mark.parametrize(("table", "env", "var"), [
    # Saaya: plain, whsec_ (measured after decoding), one of several in rotation, hex scheme
    ({"provider": "saaya", "secret_env": "S"}, {"S": "x" * (MIN_SECRET_BYTES - 1)}, "S"),
    # 15 bytes decoded although the whsec_ text is 26 characters long
    ({"provider": "saaya", "secret_env": "S"}, {"S": _whsec(b"k" * 15)}, "S"),
    ({"provider": "saaya", "secret_env": "S"}, {"S": "whsec_AA=="}, "S"),
    ({"provider": "saaya", "secrets_env": ["A", "B"]}, {"A": LONG, "B": "short"}, "B"),
    ({"provider": "saaya", "signature_scheme": "hex", "secret_env": "H"}, {"H": "hex"}, "H"),
    # Sawt: shared-secret header, Basic password
    ({"provider": "sawt", "secret_env": "T"}, {"T": "secret"}, "T"),
    ({"provider": "sawt", "auth": "basic", "basic_user_env": "U", "basic_password_env": "P"},
     {"U": "sawt", "P": "password"}, "P"),
    ({"provider": "sawt", "auth": "basic", "basic_user_env": "U",
      "basic_passwords_env": ["P", "P2"]}, {"U": "sawt", "P": LONG, "P2": "pw"}, "P2"),
])
def test_short_secret_refused_naming_source_and_variable(
        table: dict[str, Any], env: dict[str, str], var: str) -> None:
    _refused(table, env, var=var, match=f"at least {MIN_SECRET_BYTES} bytes")


@pytest.mark.parametrize(("table", "env"), [
    ({"provider": "saaya", "secret_env": "S"}, {"S": "x" * MIN_SECRET_BYTES}),
    ({"provider": "saaya", "secret_env": "S"}, {"S": _whsec(b"k" * MIN_SECRET_BYTES)}),
    ({"provider": "sawt", "secret_env": "T"}, {"T": "t" * MIN_SECRET_BYTES}),
    ({"provider": "sawt", "auth": "basic", "basic_user_env": "U", "basic_password_env": "P"},
     {"U": "u", "P": "p" * MIN_SECRET_BYTES}),
])
def test_secret_of_minimum_length_accepted(table: dict[str, Any], env: dict[str, str]) -> None:
    assert build_source("src", table, env).verifier.authenticates


def test_the_minimum_is_exported() -> None:
    assert getattr(sources_module, "MIN_SECRET_BYTES", None) == MIN_SECRET_BYTES


def test_path_secrets_keep_their_24_character_minimum() -> None:
    _refused({"provider": "sarj", "path_secret_env": "P"}, {"P": "p" * 23}, var="P",
             match="at least 24")


# --- the placeholder -----------------------------------------------------------------


@pytest.mark.parametrize(("table", "env", "var"), [
    ({"provider": "saaya", "secret_env": "S"}, {"S": "REPLACE_ME"}, "S"),
    ({"provider": "saaya", "secret_env": "S"}, {"S": f"{LONG}-REPLACE_ME"}, "S"),
    ({"provider": "sawt", "secret_env": "T"}, {"T": f"REPLACE_ME-{LONG}"}, "T"),
    ({"provider": "sawt", "auth": "basic", "basic_user_env": "U", "basic_password_env": "P"},
     {"U": "REPLACE_ME", "P": LONG}, "U"),
    ({"provider": "sawt", "auth": "basic", "basic_user_env": "U", "basic_password_env": "P"},
     {"U": "sawt", "P": f"xxREPLACE_MExx{LONG}"}, "P"),
    ({"provider": "sarj", "path_secret_env": "P"}, {"P": f"REPLACE_ME{LONG}"}, "P"),
    ({"provider": "sarj", "path_secrets_env": ["P", "Q"]},
     {"P": LONG, "Q": f"{LONG}REPLACE_ME"}, "Q"),
])
def test_placeholder_refused_anywhere_in_a_secret(
        table: dict[str, Any], env: dict[str, str], var: str) -> None:
    _refused(table, env, var=var, match="REPLACE_ME")


def test_the_base_k8s_secret_placeholders_cannot_go_live() -> None:
    """Each source of deploy/k8s's sources file is refused with the base Secret's values."""
    k8s = REPO / "deploy" / "k8s" / "base"
    secret = yaml.safe_load((k8s / "secret.yaml").read_text())["stringData"]
    files = yaml.safe_load((k8s / "files.yaml").read_text())["data"]
    document = tomllib.loads(files["sources.toml"])
    assert document["sources"]
    for name, table in document["sources"].items():
        with pytest.raises(ConfigError, match=f"'{name}'.*REPLACE_ME"):
            build_source(name, {**document.get("defaults", {}), **table}, secret)


# --- Sawt HTTP Basic user ------------------------------------------------------------


def test_empty_basic_user_refused() -> None:
    table = {"provider": "sawt", "auth": "basic", "basic_user_env": "U",
             "basic_password_env": "P"}
    _refused(table, {"U": "", "P": LONG}, var="U", match="empty")
    _refused(table, {"U": "  ", "P": LONG}, var="U", match="empty")


# --- allow_cidrs of every address ----------------------------------------------------


@pytest.mark.parametrize("cidrs", [
    ["0.0.0.0/0"],
    ["::/0"],
    ["203.0.113.0/24", "0.0.0.0/0"],
    ["0.0.0.0/1", "128.0.0.0/1"],  # together: every IPv4 address
    ["10.0.0.1/0"],  # host bits set: still /0
])
@pytest.mark.parametrize("table", [
    {"provider": "sarj"},
    {"provider": "sarj", "path_secret_env": "PATH_SECRET"},
    {"provider": "sawt", "auth": "none"},
])
def test_allow_list_of_every_address_refused(cidrs: list[str], table: dict[str, Any]) -> None:
    _refused({**table, "allow_cidrs": cidrs}, ENV, var="allow_cidrs", match="every")


def test_trusted_proxies_of_every_address_refused_with_an_allow_list() -> None:
    """Every peer trusted: any client writes its own X-Forwarded-For and passes the list."""
    _refused({"provider": "sarj", "allow_cidrs": ["203.0.113.0/24"],
              "trusted_proxies": ["0.0.0.0/0"]}, ENV, var="trusted_proxies", match="every")
    _refused({"provider": "sarj", "allow_cidrs": ["2001:db8::/32"],
              "trusted_proxies": ["::/0"]}, ENV, var="trusted_proxies", match="every")


# --- wide trusted proxies: a warning -------------------------------------------------


@pytest.mark.parametrize("proxies", [["10.0.0.0/8"], ["172.16.0.0/12"], ["fd00::/8"],
                                     ["192.168.0.0/16", "2001:db8::/32"]])
def test_wide_trusted_proxies_warn(proxies: list[str],
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hookstream.core.sources"):
        source("sarj-edge", provider="sarj", path_secret_env="PATH_SECRET",
               allow_cidrs=["203.0.113.0/24"], trusted_proxies=proxies)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "no warning for wide trusted_proxies"
    text = " ".join(r.getMessage() for r in warnings)
    assert "'sarj-edge'" in text and "trusted_proxies" in text


@pytest.mark.parametrize("proxies", [[], ["10.1.0.0/16"], ["192.0.2.10/32"],
                                     ["2001:db8:1::/48"]])
def test_narrow_trusted_proxies_do_not_warn(proxies: list[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hookstream.core.sources"):
        source("sarj-edge", provider="sarj", path_secret_env="PATH_SECRET",
               allow_cidrs=["203.0.113.0/24"], trusted_proxies=proxies)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- the shipped configuration passes -------------------------------------------------


def _exports(path: Path) -> dict[str, str]:
    pattern = re.compile(r'^(?:export\s+)?(\w+)="?(.*?)"?\s*$')
    found = {}
    for line in path.read_text().splitlines():
        match = pattern.match(line)
        if match and not line.startswith("#"):
            found[match.group(1)] = match.group(2)
    return found


@pytest.mark.parametrize(("sources_file", "env_file"), [
    ("deploy/local/sources.toml", "deploy/local/sources.env"),
    ("deploy/compose/sources.toml", "deploy/compose/hookstream.env"),
])
def test_shipped_local_configs_pass_the_rules(sources_file: str, env_file: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hookstream.core.sources"):
        sources = load_sources(REPO / sources_file, _exports(REPO / env_file))
    assert {s.provider.name for s in sources.values()} == {"saaya", "sawt", "sarj"}


def test_k8s_local_overlay_secrets_pass_the_rules() -> None:
    k8s = REPO / "deploy" / "k8s"
    files = yaml.safe_load((k8s / "base" / "files.yaml").read_text())["data"]
    overlay = yaml.safe_load((k8s / "overlays" / "local" / "secrets.yaml").read_text())
    document = tomllib.loads(files["sources.toml"])
    for name, table in document["sources"].items():
        build_source(name, {**document.get("defaults", {}), **table}, overlay["stringData"])


def test_unit_test_secrets_pass_the_rules() -> None:
    for var in ("SAAYA_A", "SAAYA_B", "SAAYA_HEX", "SAWT_SECRET", "SAWT_SECRET_2",
                "SAWT_PASSWORD", "SAWT_PASSWORD_2"):
        secret = ENV[var]
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        assert len(key) >= MIN_SECRET_BYTES, var


# --- hookstream-ingest --check-config and start-up -------------------------------------


def test_check_config_fails_naming_source_and_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from hookstream.ingest import main as ingest_main

    sources = tmp_path / "sources.toml"
    sources.write_text('[sources.saaya-main]\nprovider = "saaya"\n'
                       'secret_env = "SAAYA_EMPTY_KEY"\n')
    monkeypatch.setenv("SAAYA_EMPTY_KEY", "whsec_")
    for argv in (["--check-config"], []):  # start-up reads the same file the same way
        assert ingest_main.main([*argv, "--sources", str(sources)]) == 2
        err = capsys.readouterr().err
        assert "configuration error" in err
        assert "'saaya-main'" in err and "SAAYA_EMPTY_KEY" in err
