"""Saaya's configurable signature forms (issue 13, item 5): presets, each option on its
own, the combined ``t=,v1=`` header, and the start-up checks of the options.

Every form is checked against the independent signer of ``tests/support.py`` (written from
docs/sources.md), and the verifier's own ``sign`` must agree with it, so that
``hookstream send``, the load generator and the tests sign what ingest accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hookstream.core.config import ConfigError
from hookstream.providers.saaya.auth import PRESETS, SIGNATURE_KEYS, SaayaVerifier
from tests.support import HEX_SECRET, RAW_KEY_A, H, signature_headers, source, std_headers

BODY = b'{"id":"evt_1","type":"session.ended","data":{"x":1}}'
NOW = 1_800_000_000
KEY = HEX_SECRET.encode()  # SAAYA_HEX: a plain secret, its bytes are the key
WRONG = b"not-the-secret-at-all"


@dataclasses.dataclass(frozen=True)
class Form:
    """One configurable form: the sources.toml options and how a sender signs in it."""

    options: dict[str, Any]
    signer: dict[str, Any]


# One form per option value: each preset as shipped, then each option changed alone
# (or with what it needs), then the combined header.
FORMS: dict[str, Form] = {
    "standard-webhooks": Form(
        {}, dict(header="webhook-signature", encoding="base64", prefix="v1,",
                 signed="id.timestamp.body")),
    "hex": Form(
        {"preset": "hex"}, dict(header="X-Signature", prefix="sha256=")),
    "hex-no-prefix": Form(
        {"preset": "hex", "signature_prefix": ""}, dict(header="X-Signature")),
    "hex-v1-prefix": Form(
        {"preset": "hex", "signature_prefix": "v1,", "signature_header": "X-Saaya-Signature"},
        dict(header="X-Saaya-Signature", prefix="v1,")),
    "base64-body": Form(
        {"preset": "hex", "signature_encoding": "base64"},
        dict(header="X-Signature", encoding="base64", prefix="sha256=")),
    "hex-timestamp-body": Form(
        {"preset": "hex", "signed_string": "timestamp.body", "timestamp_header": "X-Timestamp"},
        dict(header="X-Signature", prefix="sha256=", signed="timestamp.body",
             timestamp_header="X-Timestamp")),
    "standard-hex-id-timestamp-body": Form(
        {"preset": "standard-webhooks", "signature_encoding": "hex",
         "id_header": "X-Delivery-Id"},
        dict(header="webhook-signature", prefix="v1,", signed="id.timestamp.body",
             id_header="X-Delivery-Id")),
    "standard-body-only": Form(
        {"signed_string": "body"}, dict(header="webhook-signature", encoding="base64",
                                        prefix="v1,")),
    "combined-timestamp-body": Form(
        {"preset": "hex", "signature_form": "combined", "signed_string": "timestamp.body",
         "signature_header": "Saaya-Signature"},
        dict(header="Saaya-Signature", signed="timestamp.body", combined=True)),
    "combined-id-timestamp-body-base64": Form(
        {"signature_form": "combined", "signature_header": "X-Saaya-Signature"},
        dict(header="X-Saaya-Signature", encoding="base64", signed="id.timestamp.body",
             combined=True)),
}


def verifier(options: dict[str, Any]) -> SaayaVerifier:
    v = source("s", provider="saaya", secret_env="SAAYA_HEX", **options).verifier
    assert isinstance(v, SaayaVerifier)
    return v


def signed(form: Form, key: bytes = KEY, body: bytes = BODY, **extra: Any) -> dict[str, str]:
    return signature_headers(key, body, **{"msg_id": "msg_1", "timestamp": NOW,
                                           **form.signer, **extra})


@pytest.mark.parametrize("name", FORMS)
def test_each_form_accepts_its_signature(name: str) -> None:
    form = FORMS[name]
    assert verifier(form.options).verify(H(signed(form)), BODY, NOW) is True


@pytest.mark.parametrize("name", FORMS)
def test_each_form_refuses_a_wrong_secret_a_tampered_body_and_no_signature(name: str) -> None:
    form = FORMS[name]
    v = verifier(form.options)
    assert v.verify(H(signed(form, key=WRONG)), BODY, NOW) is False
    assert v.verify(H(signed(form)), BODY + b" ", NOW) is False
    headers = signed(form)
    del headers[form.signer["header"]]
    assert v.verify(H(headers), BODY, NOW) is False


@pytest.mark.parametrize("name", FORMS)
def test_each_form_sign_is_what_a_sender_writes(name: str) -> None:
    form = FORMS[name]
    v = verifier(form.options)
    assert v.sign(BODY, NOW, "msg_1") == signed(form)
    assert v.verify(H(v.sign(BODY, NOW, "msg_9")), BODY, NOW) is True


@pytest.mark.parametrize("name", [n for n, f in FORMS.items()
                                  if "timestamp" in f.signer.get("signed", "body")])
def test_forms_signing_the_timestamp_keep_the_tolerance(name: str) -> None:
    form = FORMS[name]
    v = verifier({**form.options, "timestamp_tolerance_s": 60})
    assert v.verify(H(signed(form, timestamp=NOW - 60)), BODY, NOW) is True
    assert v.verify(H(signed(form, timestamp=NOW - 61)), BODY, NOW) is False
    assert v.verify(H(signed(form, timestamp=NOW + 61)), BODY, NOW) is False
    # Signed over the exact string: only the parse can refuse a non-integer timestamp.
    assert v.verify(H(signed(form, timestamp=f"{NOW}.0")), BODY, NOW) is False


@pytest.mark.parametrize("name", [n for n, f in FORMS.items()
                                  if f.signer.get("signed", "body").startswith("id.")])
def test_forms_signing_the_id_refuse_another_id(name: str) -> None:
    form = FORMS[name]
    headers = signed(form)
    id_header = form.signer.get("id_header", "webhook-id")
    assert verifier(form.options).verify(H({**headers, id_header: "msg_2"}), BODY, NOW) is False
    del headers[id_header]
    assert verifier(form.options).verify(H(headers), BODY, NOW) is False


def test_body_only_forms_ignore_time() -> None:
    # No timestamp is signed, so none is checked (as the hex scheme always was).
    v = verifier(FORMS["hex"].options)
    assert v.verify(H(signed(FORMS["hex"])), BODY, 0.0) is True


@pytest.mark.parametrize("name", FORMS)
def test_each_form_accepts_any_rotated_secret(name: str) -> None:
    form = FORMS[name]
    v = source("s", provider="saaya", secrets_env=["SAAYA_HEX", "SAAYA_A"],
               **form.options).verifier
    assert v.verify(H(signed(form, key=RAW_KEY_A)), BODY, NOW) is True
    assert v.verify(H(signed(form, key=KEY)), BODY, NOW) is True
    assert v.verify(H(signed(form, key=WRONG)), BODY, NOW) is False


# --- the details of each part ------------------------------------------------------


def test_presets_fill_every_option() -> None:
    assert set(PRESETS) == {"standard-webhooks", "hex"}
    for preset in PRESETS.values():
        assert set(preset) == set(SIGNATURE_KEYS)


def test_default_is_standard_webhooks_exactly_as_before() -> None:
    v = verifier({})
    assert (v.preset, v.signature_header, v.encoding, v.prefix, v.prefix_required,
            v.signed_string, v.form, v.id_header, v.timestamp_header, v.tolerance_s) == (
        "standard-webhooks", "webhook-signature", "base64", "v1,", True,
        "id.timestamp.body", "value", "webhook-id", "webhook-timestamp", 300)
    assert v.sign(BODY, NOW, "m") == std_headers(KEY, "m", NOW, BODY)


def test_signature_scheme_is_the_older_name_of_preset() -> None:
    assert verifier({"signature_scheme": "hex"}) == verifier({"preset": "hex"})
    assert verifier({"signature_scheme": "hex", "preset": "hex"}).scheme == "hex"
    with pytest.raises(ConfigError, match="disagree"):
        verifier({"signature_scheme": "hex", "preset": "standard-webhooks"})


def test_required_prefix_refuses_a_bare_signature_and_optional_accepts_it() -> None:
    bare = signed(FORMS["hex"], prefix="")
    assert verifier({"preset": "hex"}).verify(H(bare), BODY, NOW) is True
    strict = verifier({"preset": "hex", "signature_prefix_required": True})
    assert strict.verify(H(bare), BODY, NOW) is False
    assert strict.verify(H(signed(FORMS["hex"])), BODY, NOW) is True
    # Another prefix is not stripped: its text is no valid signature.
    other = signed(FORMS["hex"], prefix="sha1=")
    assert verifier({"preset": "hex"}).verify(H(other), BODY, NOW) is False


def test_encodings_are_compared_as_digests() -> None:
    hexed = signed(FORMS["hex"])
    upper = {"X-Signature": "sha256=" + hexed["X-Signature"][7:].upper()}
    assert verifier({"preset": "hex"}).verify(H(upper), BODY, NOW) is True
    # The same digest in the other encoding is refused: the encoding is the source's.
    b64 = signed(FORMS["base64-body"])
    assert verifier({"preset": "hex"}).verify(H(b64), BODY, NOW) is False
    assert verifier(FORMS["base64-body"].options).verify(H(hexed), BODY, NOW) is False


def test_several_signatures_in_one_value_any_valid_is_enough() -> None:
    form = FORMS["hex-timestamp-body"]
    good = signed(form)
    bad = signed(form, key=WRONG)
    both = {**good, "X-Signature": f"{bad['X-Signature']} {good['X-Signature']}"}
    assert verifier(form.options).verify(H(both), BODY, NOW) is True
    two_bad = {**good, "X-Signature": f"{bad['X-Signature']} sha256=zz"}
    assert verifier(form.options).verify(H(two_bad), BODY, NOW) is False


def test_combined_header_parsing() -> None:
    form = FORMS["combined-timestamp-body"]
    v = verifier(form.options)
    good = signed(form)["Saaya-Signature"]
    sig = good.split(",v1=")[1]
    wrong = signed(form, key=WRONG)["Saaya-Signature"].split(",v1=")[1]
    accepted = [
        good,
        f"v1={sig},t={NOW}",                        # any order
        f"t={NOW}, v1={wrong}, v1={sig}",            # rotation: several v1, spaces
        f"t={NOW},v0=ignored,v1={sig},x",            # other keys ignored
    ]
    refused = [
        f"t={NOW},v1={wrong}",
        f"t={NOW},t={NOW},v1={sig}",                 # which timestamp was signed?
        f"v1={sig}",                                 # no timestamp
        f"t={NOW}",                                  # no signature
        f"t={NOW},v2={sig}",                         # another version
        f"t={NOW}0000000000000,v1={sig}",            # timestamp out of bounds
        f"sha256={sig}",
        "",
    ]
    for value in accepted:
        assert v.verify(H({"Saaya-Signature": value}), BODY, NOW) is True, value
    for value in refused:
        assert v.verify(H({"Saaya-Signature": value}), BODY, NOW) is False, value


def test_combined_form_takes_no_timestamp_header() -> None:
    # t= is the timestamp: a separate header (even a valid one) is not consulted.
    form = FORMS["combined-timestamp-body"]
    headers = signed(form, timestamp=NOW - 3600)
    assert verifier(form.options).verify(
        H({**headers, "webhook-timestamp": str(NOW)}), BODY, NOW) is False


def test_header_values_out_of_bounds_are_refused_not_raised() -> None:
    for name in FORMS:
        v = verifier(FORMS[name].options)
        header = FORMS[name].signer["header"]
        for value in ["x" * 5000, "é", "\ud800", "v1," + "=" * 50, "t=" + "9" * 400,
                      "t=1,v1=" + "9" * 400]:
            # A lower-cased dict: Starlette's Headers cannot even hold a lone surrogate.
            assert v.verify({header.lower(): value, "webhook-timestamp": "9" * 400,
                             "webhook-id": "i"}, BODY, NOW) is False


@pytest.mark.parametrize(("options", "match"), [
    ({"preset": "stripe"}, r"preset must be one of \['hex', 'standard-webhooks'\], "
                           r"got 'stripe'"),
    ({"signature_scheme": "md5"}, "signature_scheme must be one of"),
    ({"signature_encoding": "base32"}, r"signature_encoding must be one of \['hex', 'base64'\]"),
    ({"signed_string": "body.timestamp"}, "signed_string must be one of"),
    ({"signature_form": "stripe"}, r"signature_form must be one of \['value', 'combined'\]"),
    ({"signature_header": "X Signature"}, "signature_header must be an HTTP header name"),
    ({"signature_header": ""}, "signature_header must be an HTTP header name"),
    ({"id_header": 7}, "id_header must be an HTTP header name"),
    ({"timestamp_header": "X-Time:"}, "timestamp_header must be an HTTP header name"),
    ({"signature_prefix": "sha 256="}, "signature_prefix must be"),
    ({"signature_prefix": "x" * 33}, "signature_prefix must be"),
    ({"signature_prefix": "é"}, "signature_prefix must be"),
    ({"signature_prefix_required": "yes"}, "signature_prefix_required must be true or false"),
    ({"signature_form": "combined", "signature_prefix": "v1,"},
     'signature_prefix does not apply with signature_form = "combined"'),
    ({"signature_form": "combined", "timestamp_header": "X-T"},
     "timestamp_header does not apply"),
    ({"timestamp_tolerance_s": "five minutes"}, "timestamp_tolerance_s must be a number"),
])
def test_bad_options_stop_start_up_with_the_source_and_key_named(
        options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        verifier(options)
    assert "source 's'" in str(caught.value)
