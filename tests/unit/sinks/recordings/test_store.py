"""The recording stores: path layout, atomic and idempotent local writes, the S3 requests."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from hookstream.core.config import ConfigError
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.store import (
    LocalDirStore,
    Spooled,
    StoreError,
    extension,
    recording_key,
    safe_part,
)

CALL = "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
WHEN = dt.datetime(2026, 4, 12, 10, 30, 52, tzinfo=dt.UTC)


def spool(directory: Path, data: bytes, name: str = "x.part") -> Spooled:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return Spooled(path, len(data), hashlib.sha256(data).hexdigest(), "audio/wav")


def test_path_layout() -> None:
    assert recording_key("sarj", CALL, WHEN, "wav") == f"sarj/2026/04/{CALL}.wav"
    # The month is the UTC month of the call.
    late = dt.datetime(2026, 5, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    assert recording_key("sarj", "c", late, "mp3") == "sarj/2026/04/c.mp3"


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/abs", ".hidden", "a/b", "", "é"])
def test_outside_ids_cannot_escape_or_collide(hostile: str, tmp_path: Path) -> None:
    part = safe_part(hostile)
    assert "/" not in part and not part.startswith(".") and part
    store = LocalDirStore(tmp_path)
    assert store.path_of(recording_key("sarj", hostile, WHEN, "wav")).is_relative_to(tmp_path)
    assert safe_part("a/b") != safe_part("a_b")  # a changed id carries a hash of the original


def test_extension_from_url_then_content_type() -> None:
    signed = "https://storage.googleapis.com/b/org/call_1.WAV?X-Goog-Signature=abc.mp3"
    assert extension(signed, "audio/mpeg") == "wav"
    assert extension("https://h/rec/123", "audio/mpeg; charset=binary") == "mp3"
    assert extension("https://h/rec/123", None) == "bin"


async def test_local_put_is_atomic_and_durable(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    await store.start()
    data = b"RIFF" + bytes(range(256)) * 40
    stored = await store.put(f"sarj/2026/04/{CALL}.wav", spool(store.spool_dir(), data))
    final = tmp_path / "sarj" / "2026" / "04" / f"{CALL}.wav"
    assert stored.written and stored.location == final.as_uri()
    assert final.read_bytes() == data
    assert list(store.spool_dir().iterdir()) == []  # the spool file became the final file
    assert await store.exists(stored.location, len(data))
    assert not await store.exists(stored.location, len(data) + 1)
    assert not await store.exists((tmp_path / "missing.wav").as_uri(), 1)


async def test_local_put_of_the_same_bytes_does_not_rewrite(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    await store.start()
    key = f"sarj/2026/04/{CALL}.wav"
    data = b"the same recording" * 100
    await store.put(key, spool(store.spool_dir(), data, "a.part"))
    final = store.path_of(key)
    before = final.stat()
    again = await store.put(key, spool(store.spool_dir(), data, "b.part"))
    after = final.stat()
    assert not again.written and store.writes == 1
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert list(store.spool_dir().iterdir()) == []  # the second spool file was dropped
    # Different bytes under the same key replace the file (atomically).
    changed = await store.put(key, spool(store.spool_dir(), data + b"!", "c.part"))
    assert changed.written and store.writes == 2 and final.read_bytes() == data + b"!"


async def test_local_start_removes_only_stale_spool_files(tmp_path: Path) -> None:
    import os
    import time

    store = LocalDirStore(tmp_path)
    store.spool_dir().mkdir(parents=True)
    old, fresh = store.spool_dir() / "old.part", store.spool_dir() / "fresh.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    await store.start()
    assert not old.exists() and fresh.exists()


async def test_local_write_failure_is_a_store_error_and_leaves_no_spool(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path)
    await store.start()
    (tmp_path / "sarj").write_text("a file where a directory must go")
    spooled = spool(store.spool_dir(), b"data")
    with pytest.raises(StoreError):
        await store.put(f"sarj/2026/04/{CALL}.wav", spooled)
    assert not spooled.path.exists()


def test_settings_validation() -> None:
    RecordingsSettings().validate()
    with pytest.raises(ConfigError, match="HOOKSTREAM_RECORDINGS_STORE"):
        RecordingsSettings(store="gcs").validate()
    with pytest.raises(ConfigError, match="HOOKSTREAM_S3_BUCKET"):
        RecordingsSettings(store="s3", s3_endpoint="https://s3.example.test",
                           s3_access_key_id="a", s3_secret_access_key="b").validate()
    with pytest.raises(ConfigError, match="HOOKSTREAM_S3_ENDPOINT"):
        RecordingsSettings(store="s3", s3_endpoint="s3.example.test").validate()
    RecordingsSettings(store="s3", s3_endpoint="http://127.0.0.1:9000", s3_bucket="b",
                       s3_access_key_id="a", s3_secret_access_key="s").validate()
    with pytest.raises(ConfigError, match="HOOKSTREAM_S3_PART_BYTES"):
        RecordingsSettings(store="s3", s3_endpoint="http://127.0.0.1:9000", s3_bucket="b",
                           s3_access_key_id="a", s3_secret_access_key="s",
                           s3_part_bytes=1024).validate()
    with pytest.raises(ConfigError, match="S3's most parts"):
        RecordingsSettings(store="s3", s3_endpoint="http://127.0.0.1:9000", s3_bucket="b",
                           s3_access_key_id="a", s3_secret_access_key="s",
                           max_bytes=6 * 1024**4).validate()
    assert "secret" not in repr(RecordingsSettings(s3_secret_access_key="secret"))
