"""The recordings sink's S3 store against a real S3 implementation: moto's server, run
on loopback for this module, spoken to over HTTP by aiobotocore exactly as a bucket in
AWS would be. Authentication is on (moto's IAM), so a wrong secret is refused as S3
refuses it. (moto does not verify ``ChecksumSHA256``; S3 does.)"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from hookstream.sinks.recordings.store import S3Store, Spooled, StoreError

from ..support import free_port

MIB = 1024 * 1024
CALL = "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"


class Moto:
    def __init__(self, url: str, key_id: str, secret: str) -> None:
        self.url, self.key_id, self.secret = url, key_id, secret

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def store(self, spool: Path, secret: str | None = None, **options: Any) -> S3Store:
        return S3Store(self.url, "recs", region="us-east-1", access_key_id=self.key_id,
                       secret_access_key=secret or self.secret, prefix="hs/", spool=spool,
                       **options)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """``moto.server`` in its own process. Its first three requests are let through
    unauthenticated (INITIAL_NO_AUTH_ACTION_COUNT): they create an IAM user, its access
    key and an s3:* policy; every request after that must be signed with that key."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="recordings")
        key = iam.create_access_key(UserName="recordings")["AccessKey"]
        iam.put_user_policy(UserName="recordings", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        server = Moto(url, key["AccessKeyId"], key["SecretAccessKey"])
        server.client().create_bucket(Bucket="recs")
        yield server
    finally:
        process.terminate()
        process.wait(10)


def spool(directory: Path, data: bytes, name: str = "x.part") -> Spooled:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return Spooled(path, len(data), hashlib.sha256(data).hexdigest(), "audio/wav")


async def test_put_then_head_then_the_same_bytes_are_not_sent_again(
        moto: Moto, tmp_path: Path) -> None:
    store = moto.store(tmp_path / "spool")
    await store.start()
    try:
        data = os.urandom(300_000)
        key = f"sarj/2026/04/{CALL}.wav"
        first = await store.put(key, spool(store.spool_dir(), data))
        assert (first.location, first.written) == (f"s3://recs/hs/{key}", True)
        got = moto.client().get_object(Bucket="recs", Key=f"hs/{key}")
        assert got["Body"].read() == data
        assert got["ContentType"] == "audio/wav"
        assert got["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest()}
        assert store.multipart_uploads == 0
        # HEAD: present with its size; absent; another store's location.
        assert await store.exists(first.location, len(data))
        assert not await store.exists(first.location, len(data) + 1)
        assert not await store.exists("s3://recs/hs/sarj/nothing.wav", 1)
        assert not await store.exists("file:///elsewhere.wav", 1)
        # The same bytes again: HEAD finds them, nothing is uploaded.
        again = await store.put(key, spool(store.spool_dir(), data, "y.part"))
        assert not again.written and store.writes == 1
        # Other bytes under the same key: replaced.
        other = os.urandom(1000)
        assert (await store.put(key, spool(store.spool_dir(), other, "z.part"))).written
        assert moto.client().get_object(Bucket="recs", Key=f"hs/{key}")["Body"].read() == other
        assert list(store.spool_dir().iterdir()) == []
    finally:
        await store.close()


async def test_a_large_recording_is_a_multipart_upload(moto: Moto, tmp_path: Path) -> None:
    store = moto.store(tmp_path / "spool", multipart_threshold=6 * MIB, part_bytes=5 * MIB)
    await store.start()
    try:
        data = os.urandom(12 * MIB + 7)  # three parts: 5, 5 and 2 MiB + 7 bytes
        stored = await store.put("sarj/big.wav", spool(store.spool_dir(), data))
        assert stored.written and store.multipart_uploads == 1
        client = moto.client()
        got = client.get_object(Bucket="recs", Key="hs/sarj/big.wav")
        assert got["Body"].read() == data
        assert got["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest()}
        assert got["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
        assert await store.exists(stored.location, len(data))
        again = await store.put("sarj/big.wav", spool(store.spool_dir(), data, "b.part"))
        assert not again.written and store.multipart_uploads == 1
        assert client.list_multipart_uploads(Bucket="recs").get("Uploads", []) == []
    finally:
        await store.close()


async def test_wrong_credentials_are_a_store_error(moto: Moto, tmp_path: Path) -> None:
    store = moto.store(tmp_path / "spool", secret="not-the-secret")
    await store.start()
    try:
        with pytest.raises(StoreError, match="HTTP 403"):
            await store.exists("s3://recs/hs/sarj/anything.wav", 3)
        spooled = spool(store.spool_dir(), b"abc")
        with pytest.raises(StoreError, match="HTTP 403"):
            await store.put("sarj/denied.wav", spooled)
        assert not spooled.path.exists()  # no spool file is left behind
        assert store.writes == 0
    finally:
        await store.close()
