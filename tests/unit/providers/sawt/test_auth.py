"""Sawt verification: shared-secret header, HTTP Basic, and 'none' (network-gated)."""

from __future__ import annotations

import base64

import pytest

from hookstream.core.config import ConfigError
from hookstream.providers.sawt import auth as sawt
from hookstream.providers.sawt.auth import SawtVerifier
from tests.support import (
    BASIC_PASSWORD,
    BASIC_USER,
    PATH_SECRET,
    SAWT_SECRET,
    H,
    basic,
    source,
)

BODY = b'{"call_id":"c-1","status":"ended"}'
NOW = 1_800_000_000.0


@pytest.fixture
def header_v() -> SawtVerifier:
    v = source("sawt-main", provider="sawt", auth="header", secret_env="SAWT_SECRET").verifier
    assert isinstance(v, SawtVerifier)
    return v


@pytest.fixture
def basic_v() -> SawtVerifier:
    v = source("sawt-basic", provider="sawt", auth="basic", basic_user_env="SAWT_USER",
               basic_password_env="SAWT_PASSWORD").verifier
    assert isinstance(v, SawtVerifier)
    return v


# --- header mode -------------------------------------------------------------------


def test_header_mode_is_default() -> None:
    v = source("s", provider="sawt", secret_env="SAWT_SECRET").verifier
    assert isinstance(v, SawtVerifier) and v.mode == "header" and v.authenticates


def test_header_exact_value_accepted(header_v: SawtVerifier) -> None:
    assert header_v.verify(H({"X-Webhook-Secret": SAWT_SECRET}), BODY, NOW) is True


def test_header_bearer_value_accepted(header_v: SawtVerifier) -> None:
    assert header_v.verify(H({"X-Webhook-Secret": f"Bearer {SAWT_SECRET}"}), BODY, NOW) is True


def test_header_wrong_secret_rejected(header_v: SawtVerifier) -> None:
    assert header_v.verify(H({"X-Webhook-Secret": "nope"}), BODY, NOW) is False
    assert header_v.verify(H({"X-Webhook-Secret": SAWT_SECRET[:-1]}), BODY, NOW) is False
    assert header_v.verify(H({"X-Webhook-Secret": SAWT_SECRET + "x"}), BODY, NOW) is False
    assert header_v.verify(H({"X-Webhook-Secret": "Bearer nope"}), BODY, NOW) is False


def test_header_missing_secret_rejected(header_v: SawtVerifier) -> None:
    assert header_v.verify(H({}), BODY, NOW) is False
    assert header_v.verify(H({"X-Webhook-Secret": ""}), BODY, NOW) is False
    assert header_v.verify(H({"Authorization": f"Bearer {SAWT_SECRET}"}), BODY, NOW) is False


def test_header_custom_name_and_rotation() -> None:
    v = source("s", provider="sawt", auth_header="X-Sawt-Token",
               secrets_env=["SAWT_SECRET", "SAWT_SECRET_2"]).verifier
    assert v.verify(H({"X-Sawt-Token": SAWT_SECRET}), BODY, NOW) is True
    assert v.verify(H({"x-sawt-token": "sawt-second-secret"}), BODY, NOW) is True
    assert v.verify(H({"X-Webhook-Secret": SAWT_SECRET}), BODY, NOW) is False


def test_header_sign(header_v: SawtVerifier) -> None:
    assert header_v.sign(BODY, NOW, "d") == {"X-Webhook-Secret": SAWT_SECRET}


# --- basic mode --------------------------------------------------------------------


def test_basic_valid(basic_v: SawtVerifier) -> None:
    assert basic_v.verify(H({"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}), BODY, NOW)
    # Scheme name is case-insensitive.
    token = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    assert basic_v.verify(H({"Authorization": f"basic {token}"}), BODY, NOW) is True


def test_basic_password_may_contain_colon() -> None:
    password = "pa:ss-long-enough-password"
    v = source("s", {"U": "u", "P": password}, provider="sawt", auth="basic",
               basic_user_env="U", basic_password_env="P").verifier
    assert v.verify(H({"Authorization": basic("u", password)}), BODY, NOW) is True


def test_basic_wrong_password(basic_v: SawtVerifier) -> None:
    assert basic_v.verify(H({"Authorization": basic(BASIC_USER, "wrong")}), BODY, NOW) is False


def test_basic_wrong_user(basic_v: SawtVerifier) -> None:
    headers = H({"Authorization": basic("mallory", BASIC_PASSWORD)})
    assert basic_v.verify(headers, BODY, NOW) is False


def test_basic_malformed_base64(basic_v: SawtVerifier) -> None:
    assert basic_v.verify(H({"Authorization": "Basic !!!not-base64!!!"}), BODY, NOW) is False
    assert basic_v.verify(H({"Authorization": "Basic abc"}), BODY, NOW) is False  # bad padding


def test_basic_missing_colon(basic_v: SawtVerifier) -> None:
    token = base64.b64encode(f"{BASIC_USER}{BASIC_PASSWORD}".encode()).decode()
    assert basic_v.verify(H({"Authorization": f"Basic {token}"}), BODY, NOW) is False


def test_basic_not_basic_scheme(basic_v: SawtVerifier) -> None:
    token = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    assert basic_v.verify(H({"Authorization": f"Bearer {token}"}), BODY, NOW) is False
    assert basic_v.verify(H({"Authorization": token}), BODY, NOW) is False
    assert basic_v.verify(H({}), BODY, NOW) is False
    assert basic_v.verify(H({"X-Webhook-Secret": BASIC_PASSWORD}), BODY, NOW) is False


def test_basic_password_rotation() -> None:
    v = source("s", provider="sawt", auth="basic", basic_user_env="SAWT_USER",
               basic_passwords_env=["SAWT_PASSWORD", "SAWT_PASSWORD_2"]).verifier
    assert v.verify(H({"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}), BODY, NOW)
    assert v.verify(H({"Authorization": basic(BASIC_USER, "sawt-second-password")}), BODY, NOW)
    assert not v.verify(H({"Authorization": basic(BASIC_USER, "third")}), BODY, NOW)


def test_basic_sign(basic_v: SawtVerifier) -> None:
    assert basic_v.sign(BODY, NOW, "d") == {"Authorization": basic(BASIC_USER, BASIC_PASSWORD)}


def test_basic_config_errors() -> None:
    with pytest.raises(ConfigError, match="basic_user_env"):
        source("s", provider="sawt", auth="basic", basic_password_env="SAWT_PASSWORD")
    with pytest.raises(ConfigError, match="basic_user_env"):
        source("s", provider="sawt", auth="basic", basic_user_env="SAWT_USER")
    with pytest.raises(ConfigError, match="NOT_SET_USER"):
        source("s", provider="sawt", auth="basic", basic_user_env="NOT_SET_USER",
               basic_password_env="SAWT_PASSWORD")


# --- none mode and general config --------------------------------------------------


def test_none_mode_without_path_secret_or_allow_list_is_config_error() -> None:
    with pytest.raises(ConfigError, match="path_secret_env and/or allow_cidrs"):
        source("s", provider="sawt", auth="none")


def test_none_mode_with_path_secret() -> None:
    src = source("s", provider="sawt", auth="none", path_secret_env="PATH_SECRET")
    assert src.verifier.authenticates is False
    assert src.verifier.verify(H({}), BODY, NOW) is True
    assert src.path_secret_ok(PATH_SECRET) is True
    assert src.path_secret_ok(None) is False
    assert src.verifier.sign(BODY, NOW, "d") == {}


def test_none_mode_with_allow_list() -> None:
    src = source("s", provider="sawt", auth="none", allow_cidrs=["203.0.113.0/24"])
    assert src.network_ok("203.0.113.7", None) is True
    assert src.network_ok("198.51.100.7", None) is False


def test_none_mode_allow_unauthenticated() -> None:
    src = source("s", provider="sawt", auth="none", allow_unauthenticated=True)
    assert src.verifier.verify(H({}), BODY, NOW) is True
    assert src.network_ok("198.51.100.7", None) is True


def test_header_config_errors() -> None:
    with pytest.raises(ConfigError, match="auth must be one of"):
        source("s", provider="sawt", auth="hmac", secret_env="SAWT_SECRET")
    with pytest.raises(ConfigError, match="secret_env or secrets_env"):
        source("s", provider="sawt", auth="header")
    with pytest.raises(ConfigError, match="MISSING_SAWT"):
        source("s", provider="sawt", secret_env="MISSING_SAWT")


def test_routing_key_header_default_and_override() -> None:
    assert source("s", provider="sawt", secret_env="SAWT_SECRET").routing_key_header == (
        "X-Routing-Key")
    src = source("s", provider="sawt", secret_env="SAWT_SECRET", routing_key_header="X-Event")
    assert src.routing_key_header == "X-Event"
    assert src.event_id_header is None


def test_natural_key_is_call_id() -> None:
    assert sawt.natural_key(BODY) == b"c-1"
    assert sawt.natural_key(b'{"id":"x"}') is None
    assert sawt.natural_key(b"{oops") is None


def test_path_secret_constant_is_long_enough() -> None:
    assert len(PATH_SECRET) >= 24
