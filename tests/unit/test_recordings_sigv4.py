"""SigV4 of the S3 store against the worked examples of the AWS S3 API reference,
"Signature Calculations for the Authorization Header: Transferring Payload in a
Single Chunk" (credentials AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY,
us-east-1, 20130524T000000Z, bucket examplebucket)."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from hookstream.sinks.recordings import sigv4

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DATE = "20130524T000000Z"
HOST = "examplebucket.s3.amazonaws.com"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CREDENTIAL = f"Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request"


def sign(method: str, path: str, query: str, headers: dict[str, str], payload: str) -> str:
    return sigv4.authorization(method, path, query, headers, payload,
                               access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                               region="us-east-1", amz_date=DATE)


def test_empty_payload_hash() -> None:
    assert sigv4.EMPTY_SHA256 == EMPTY


def test_get_object_example() -> None:
    headers = {"Host": HOST, "Range": "bytes=0-9", "x-amz-content-sha256": EMPTY,
               "x-amz-date": DATE}
    assert sign("GET", "/test.txt", "", headers, EMPTY) == (
        f"AWS4-HMAC-SHA256 {CREDENTIAL}, SignedHeaders=host;range;x-amz-content-sha256;"
        "x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_put_object_example() -> None:
    payload = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    assert payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    headers = {"Date": "Fri, 24 May 2013 00:00:00 GMT", "Host": HOST,
               "x-amz-content-sha256": payload, "x-amz-date": DATE,
               "x-amz-storage-class": "REDUCED_REDUNDANCY"}
    # "$" in the key is percent-encoded in the canonical URI (/test%24file.text).
    assert sign("PUT", "/test$file.text", "", headers, payload) == (
        f"AWS4-HMAC-SHA256 {CREDENTIAL}, SignedHeaders=date;host;x-amz-content-sha256;"
        "x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")


@pytest.mark.parametrize(("query", "signature"), [
    ("lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
])
def test_bucket_examples_with_query(query: str, signature: str) -> None:
    headers = {"Host": HOST, "x-amz-content-sha256": EMPTY, "x-amz-date": DATE}
    assert sign("GET", "/", query, headers, EMPTY).endswith(f"Signature={signature}")


def test_canonical_query_sorts_and_encodes() -> None:
    assert sigv4.canonical_query("prefix=J&max-keys=2") == "max-keys=2&prefix=J"
    assert sigv4.canonical_query("a=b c&lifecycle") == "a=b%20c&lifecycle="


def test_sign_headers_adds_and_signs_every_header() -> None:
    now = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)
    payload = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    out = sigv4.sign_headers(
        "PUT", f"https://{HOST}/test%24file.text",
        {"date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        payload, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, region="us-east-1",
        now=now)
    assert out["host"] == HOST and out["x-amz-date"] == DATE
    assert out["x-amz-content-sha256"] == payload
    # The same request as the PUT example, built from a URL: the same signature.
    assert out["Authorization"].endswith(
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    with_token = sigv4.sign_headers("HEAD", f"https://{HOST}/k", {}, EMPTY,
                                    access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                                    region="us-east-1", session_token="tok", now=now)
    assert with_token["x-amz-security-token"] == "tok"
    assert "x-amz-security-token" in with_token["Authorization"].split("SignedHeaders=")[1]
