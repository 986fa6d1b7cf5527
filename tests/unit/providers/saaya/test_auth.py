"""Saaya verification: Standard Webhooks (default) and the plain hex scheme."""

from __future__ import annotations

import base64
import time

import pytest

from hookstream.core.config import ConfigError
from hookstream.providers.saaya import auth as saaya
from hookstream.providers.saaya.auth import SaayaVerifier
from tests.support import (
    ENV,
    HEX_SECRET,
    PLAIN_B,
    RAW_KEY_A,
    WHSEC_A,
    H,
    hex_signature,
    key_of,
    source,
    std_headers,
    std_signature,
)

BODY = b'{"id":"evt_1","type":"session.ended","data":{"x":1}}'
NOW = 1_800_000_000.0


@pytest.fixture
def std() -> SaayaVerifier:
    src = source("saaya-main", provider="saaya", secrets_env=["SAAYA_A", "SAAYA_B"],
                 timestamp_tolerance_s=300)
    assert isinstance(src.verifier, SaayaVerifier)
    return src.verifier


@pytest.fixture
def hexv() -> SaayaVerifier:
    src = source("saaya-hex", provider="saaya", signature_scheme="hex", secret_env="SAAYA_HEX")
    assert isinstance(src.verifier, SaayaVerifier)
    return src.verifier


# --- Standard Webhooks -------------------------------------------------------------


def test_reference_vector_from_the_standard_webhooks_spec() -> None:
    # The published test vector of the Standard Webhooks / svix libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert std_signature(key_of(secret), msg_id, timestamp, body) == expected  # our signer
    verifier = source("s", {"S": secret}, provider="saaya", secret_env="S").verifier
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": expected}
    assert verifier.verify(H(headers), body, timestamp + 10) is True
    assert verifier.verify(H(headers), body + b" ", timestamp + 10) is False


def test_valid_signature_accepted(std: SaayaVerifier) -> None:
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), BODY)
    assert std.verify(H(headers), BODY, NOW) is True


def test_wrong_secret_rejected(std: SaayaVerifier) -> None:
    headers = std_headers(b"some-other-key", "msg_1", int(NOW), BODY)
    assert std.verify(H(headers), BODY, NOW) is False


def test_tampered_body_rejected(std: SaayaVerifier) -> None:
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), BODY)
    tampered = BODY.replace(b'"x":1', b'"x":2')
    assert std.verify(H(headers), tampered, NOW) is False


def test_tampered_id_or_timestamp_rejected(std: SaayaVerifier) -> None:
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), BODY)
    assert std.verify(H({**headers, "webhook-id": "msg_2"}), BODY, NOW) is False
    assert std.verify(H({**headers, "webhook-timestamp": str(int(NOW) - 1)}), BODY, NOW) is False


@pytest.mark.parametrize("offset", [-301, -3600, 301, 3600])
def test_timestamp_outside_tolerance_rejected(std: SaayaVerifier, offset: int) -> None:
    ts = int(NOW) + offset  # too old (negative) or too far in the future (positive)
    headers = std_headers(RAW_KEY_A, "msg_1", ts, BODY)
    assert std.verify(H(headers), BODY, NOW) is False


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_timestamp_within_tolerance_accepted(std: SaayaVerifier, offset: int) -> None:
    ts = int(NOW) + offset
    headers = std_headers(RAW_KEY_A, "msg_1", ts, BODY)
    assert std.verify(H(headers), BODY, NOW) is True


def test_custom_tolerance_from_config() -> None:
    v = source("s", provider="saaya", secret_env="SAAYA_A", timestamp_tolerance_s=10).verifier
    assert v.verify(H(std_headers(RAW_KEY_A, "m", int(NOW) - 9, BODY)), BODY, NOW) is True
    assert v.verify(H(std_headers(RAW_KEY_A, "m", int(NOW) - 11, BODY)), BODY, NOW) is False


@pytest.mark.parametrize("timestamp", ["1800000000.5", "abc", "", "1.8e9", "0x6B49D200"])
def test_non_integer_timestamp_rejected(std: SaayaVerifier, timestamp: str) -> None:
    # Signed over exactly that timestamp string, so only the parse can reject it.
    headers = std_headers(RAW_KEY_A, "msg_1", timestamp, BODY)
    assert std.verify(H(headers), BODY, NOW) is False


def test_rotated_second_secret_accepted(std: SaayaVerifier) -> None:
    # SAAYA_B is a plain (non-whsec_) secret: its bytes are the key.
    headers = std_headers(PLAIN_B.encode(), "msg_1", int(NOW), BODY)
    assert std.verify(H(headers), BODY, NOW) is True


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_rejected(std: SaayaVerifier, missing: str) -> None:
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), BODY)
    del headers[missing]
    assert std.verify(H(headers), BODY, NOW) is False


@pytest.mark.parametrize("empty", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_empty_header_rejected(std: SaayaVerifier, empty: str) -> None:
    headers = std_headers(RAW_KEY_A, "msg_1", int(NOW), BODY)
    headers[empty] = ""
    assert std.verify(H(headers), BODY, NOW) is False


def test_multiple_signatures_any_valid_accepted(std: SaayaVerifier) -> None:
    good = std_signature(RAW_KEY_A, "msg_1", int(NOW), BODY)
    bad = std_signature(b"wrong", "msg_1", int(NOW), BODY)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(NOW))}
    assert std.verify(H({**headers, "webhook-signature": f"{bad} {good}"}), BODY, NOW)
    assert std.verify(H({**headers, "webhook-signature": f"{good} {bad}"}), BODY, NOW)
    assert std.verify(H({**headers, "webhook-signature": f"v1,bm90LWEtc2ln {good}"}), BODY, NOW)
    assert not std.verify(H({**headers, "webhook-signature": f"{bad} v1,bm90LWEtc2ln"}), BODY, NOW)


def test_signature_with_other_version_prefix_ignored(std: SaayaVerifier) -> None:
    good = std_signature(RAW_KEY_A, "msg_1", int(NOW), BODY)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(NOW))}
    assert not std.verify(H({**headers, "webhook-signature": "v2," + good[3:]}), BODY, NOW)
    assert not std.verify(H({**headers, "webhook-signature": good[3:]}), BODY, NOW)  # no "v1,"


def test_whsec_secret_is_base64_decoded() -> None:
    v = source("s", provider="saaya", secret_env="SAAYA_A").verifier
    assert isinstance(v, SaayaVerifier) and v.keys == (RAW_KEY_A,)
    by_decoded = std_headers(RAW_KEY_A, "m", int(NOW), BODY)
    by_literal = std_headers(WHSEC_A.encode(), "m", int(NOW), BODY)
    assert v.verify(H(by_decoded), BODY, NOW) is True
    assert v.verify(H(by_literal), BODY, NOW) is False


def test_plain_secret_used_verbatim() -> None:
    v = source("s", provider="saaya", secret_env="SAAYA_B").verifier
    assert isinstance(v, SaayaVerifier) and v.keys == (PLAIN_B.encode(),)
    assert v.verify(H(std_headers(PLAIN_B.encode(), "m", int(NOW), BODY)), BODY, NOW) is True
    # A plain secret is not base64-decoded even when it happens to be valid base64.
    b64ish = base64.b64encode(b"0123456789abcdef").decode()
    v2 = source("s", {"S": b64ish}, provider="saaya", secret_env="S").verifier
    assert v2.verify(H(std_headers(b64ish.encode(), "m", int(NOW), BODY)), BODY, NOW) is True
    assert not v2.verify(H(std_headers(b"0123456789abcdef", "m", int(NOW), BODY)), BODY, NOW)


def test_invalid_whsec_base64_is_config_error() -> None:
    with pytest.raises(ConfigError, match="base64"):
        source("s", {"S": "whsec_not*base64!"}, provider="saaya", secret_env="S")


def test_sign_matches_independent_signer(std: SaayaVerifier) -> None:
    headers = std.sign(BODY, NOW, "msg_xyz")
    assert headers == std_headers(RAW_KEY_A, "msg_xyz", int(NOW), BODY)
    assert std.verify(H(headers), BODY, NOW) is True


def test_saaya_config_errors() -> None:
    with pytest.raises(ConfigError, match="secret_env or secrets_env"):
        source("s", provider="saaya")
    with pytest.raises(ConfigError, match="signature_scheme"):
        source("s", provider="saaya", secret_env="SAAYA_A", signature_scheme="md5")
    with pytest.raises(ConfigError, match="empty"):
        source("s", provider="saaya", secret_env="EMPTY")
    with pytest.raises(ConfigError, match="NOPE"):
        source("s", provider="saaya", secrets_env=["SAAYA_A", "NOPE"])


def test_natural_key_is_top_level_id() -> None:
    assert saaya.natural_key(BODY) == b"evt_1"
    assert saaya.natural_key(b'{"data":{"id":"inner"}}') is None
    assert saaya.natural_key(b'{"id":42}') is None
    assert saaya.natural_key(b'{"id":""}') is None
    assert saaya.natural_key(b"[1,2]") is None
    assert saaya.natural_key(b"{not json") is None


def test_live_clock_round_trip(std: SaayaVerifier) -> None:
    now = time.time()
    headers = std_headers(RAW_KEY_A, "msg_live", int(now), BODY)
    assert std.verify(H(headers), BODY, now) is True


# --- hex scheme --------------------------------------------------------------------


KEY_HEX = HEX_SECRET.encode()


def test_hex_with_prefix_accepted(hexv: SaayaVerifier) -> None:
    sig = hex_signature(KEY_HEX, BODY)
    assert hexv.verify(H({"X-Signature": f"sha256={sig}"}), BODY, NOW) is True


def test_hex_bare_accepted(hexv: SaayaVerifier) -> None:
    assert hexv.verify(H({"X-Signature": hex_signature(KEY_HEX, BODY)}), BODY, NOW) is True


def test_hex_uppercase_accepted(hexv: SaayaVerifier) -> None:
    sig = hex_signature(KEY_HEX, BODY).upper()
    assert hexv.verify(H({"X-Signature": sig}), BODY, NOW) is True
    assert hexv.verify(H({"X-Signature": f"sha256={sig}"}), BODY, NOW) is True


def test_hex_ignores_timestamp(hexv: SaayaVerifier) -> None:
    # The hex scheme has no timestamp: any "now" is fine.
    sig = hex_signature(KEY_HEX, BODY)
    assert hexv.verify(H({"X-Signature": sig}), BODY, 0.0) is True


def test_hex_wrong_or_missing_rejected(hexv: SaayaVerifier) -> None:
    good = hex_signature(KEY_HEX, BODY)
    assert hexv.verify(H({}), BODY, NOW) is False
    assert hexv.verify(H({"X-Signature": ""}), BODY, NOW) is False
    assert hexv.verify(H({"X-Signature": hex_signature(b"other", BODY)}), BODY, NOW) is False
    assert hexv.verify(H({"X-Signature": good}), BODY + b"x", NOW) is False
    assert hexv.verify(H({"X-Signature": good[:-2]}), BODY, NOW) is False
    assert hexv.verify(H({"X-Other": good}), BODY, NOW) is False
    # Standard Webhooks headers do not satisfy the hex scheme.
    assert hexv.verify(H(std_headers(KEY_HEX, "m", int(NOW), BODY)), BODY, NOW) is False


def test_hex_custom_header_name() -> None:
    v = source("s", provider="saaya", signature_scheme="hex", secret_env="SAAYA_HEX",
               signature_header="X-Saaya-Sig").verifier
    sig = hex_signature(KEY_HEX, BODY)
    assert v.verify(H({"X-Saaya-Sig": f"sha256={sig}"}), BODY, NOW) is True
    assert v.verify(H({"x-saaya-sig": sig}), BODY, NOW) is True  # headers are case-insensitive
    assert v.verify(H({"X-Signature": sig}), BODY, NOW) is False
    assert v.sign(BODY, NOW, "ignored") == {"X-Saaya-Sig": f"sha256={sig}"}


def test_hex_rotation() -> None:
    v = source("s", provider="saaya", signature_scheme="hex",
               secrets_env=["SAAYA_HEX", "SAAYA_B"]).verifier
    assert v.verify(H({"X-Signature": hex_signature(KEY_HEX, BODY)}), BODY, NOW)
    assert v.verify(H({"X-Signature": hex_signature(PLAIN_B.encode(), BODY)}), BODY, NOW)
    assert not v.verify(H({"X-Signature": hex_signature(b"third", BODY)}), BODY, NOW)


def test_env_fixture_is_consistent() -> None:
    assert key_of(ENV["SAAYA_A"]) == RAW_KEY_A


def test_hex_verify_with_lowercased_dict_as_documented(hexv: SaayaVerifier) -> None:
    sig = hex_signature(KEY_HEX, BODY)
    assert hexv.verify({"x-signature": sig}, BODY, NOW) is True
