"""S3ArtifactStore against a real S3 HTTP endpoint (moto server on loopback)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest
import zstandard

from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from domain.environment import ArtifactKind
from domain.errors import ArtifactStoreUnavailableError
from testkit.fakes import FakeLogger
from testkit.s3 import CREDENTIALS, free_port

KEY = "python-v0.1-01234567-00112233445566aa"


def multi_mb_file(path: Path, megabytes: int = 21) -> Path:
    # Half random (incompressible, so the compressed stream spans several 8 MiB parts), half
    # repetitive (so compression visibly shrinks it).
    with path.open("wb") as out:
        for index in range(megabytes):
            block = os.urandom(1 << 20) if index % 2 == 0 else bytes([index]) * (1 << 20)
            out.write(block)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_round_trip_of_a_multi_megabyte_object(
    store: S3ArtifactStore, s3_endpoint: str, bucket: str, tmp_path: Path, logger: FakeLogger
) -> None:
    source = multi_mb_file(tmp_path / "image.tar")
    store.upload(ArtifactKind.IMAGE, KEY, source)

    stored = raw_client(s3_endpoint).get_object(Bucket=bucket, Key=f"images/{KEY}.tar.zst")
    assert stored["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    compressed = stored["Body"].read()
    assert len(compressed) < source.stat().st_size  # zstd, not the raw bytes
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == (
        source.read_bytes()
    )
    assert store.exists(ArtifactKind.IMAGE, KEY)

    target = tmp_path / "back" / "image.tar"
    assert store.download(ArtifactKind.IMAGE, KEY, target) is True
    assert sha256(target) == sha256(source)
    assert [p.name for p in target.parent.iterdir()] == ["image.tar"]  # no partial left
    assert "artifact_uploaded" in logger.events()
    assert "artifact_downloaded" in logger.events()


def test_snapshots_live_under_their_own_prefix(
    store: S3ArtifactStore, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "disk.qcow2"
    source.write_bytes(b"qcow2" * 1000)
    store.upload(ArtifactKind.SNAPSHOT, KEY, source)
    listed = raw_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == [f"snapshots/{KEY}.qcow2.zst"]
    assert not store.exists(ArtifactKind.IMAGE, KEY)
    assert store.list_keys(ArtifactKind.SNAPSHOT) == [KEY]
    assert store.list_keys(ArtifactKind.IMAGE) == []
    raw_client(s3_endpoint).put_object(Bucket=bucket, Key="snapshots/not-a-key.txt", Body=b"x")
    assert store.list_keys(ArtifactKind.SNAPSHOT) == [KEY]  # other objects are skipped
    store.delete(ArtifactKind.SNAPSHOT, KEY)
    store.delete(ArtifactKind.SNAPSHOT, KEY)  # idempotent
    assert not store.exists(ArtifactKind.SNAPSHOT, KEY)


def test_an_empty_file_round_trips(store: S3ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    store.upload(ArtifactKind.IMAGE, KEY, source)
    target = tmp_path / "empty.back"
    assert store.download(ArtifactKind.IMAGE, KEY, target)
    assert target.read_bytes() == b""


def test_a_missing_key_is_false_and_leaves_nothing(
    store: S3ArtifactStore, tmp_path: Path, logger: FakeLogger
) -> None:
    target = tmp_path / "never.tar"
    assert store.download(ArtifactKind.IMAGE, KEY, target) is False
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    assert not store.exists(ArtifactKind.IMAGE, KEY)
    assert "artifact_missing" in logger.events()


def test_a_corrupted_object_is_refused_and_the_destination_untouched(
    store: S3ArtifactStore, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "small"
    source.write_bytes(b"hello" * 1000)
    store.upload(ArtifactKind.IMAGE, KEY, source)
    client = raw_client(s3_endpoint)
    # Same metadata (sha256 of the original), other content.
    client.put_object(
        Bucket=bucket,
        Key=f"images/{KEY}.tar.zst",
        Body=zstandard.ZstdCompressor().compress(b"evil"),
        Metadata={"sha256": sha256(source)},
    )
    target = tmp_path / "out"
    target.write_bytes(b"previous")
    with pytest.raises(ArtifactStoreUnavailableError, match="sha256"):
        store.download(ArtifactKind.IMAGE, KEY, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "small"]


def test_a_missing_bucket_is_a_clear_error(
    s3_endpoint: str, tmp_path: Path, logger: FakeLogger
) -> None:
    store = S3ArtifactStore(
        S3ArtifactConfig(bucket="no-such-bucket-here", endpoint_url=s3_endpoint, **CREDENTIALS),
        logger,
    )
    source = tmp_path / "f"
    source.write_bytes(b"x")
    try:
        with pytest.raises(ArtifactStoreUnavailableError, match="NoSuchBucket"):
            store.upload(ArtifactKind.IMAGE, KEY, source)
    finally:
        store.close()
    assert ("error", "artifact_store_failed") in [(lv, ev) for lv, ev, _ in logger.messages]


def test_a_server_that_is_down_fails_fast_and_clearly(tmp_path: Path, logger: FakeLogger) -> None:
    # Nothing listens on this port: connection refused, retried once, then our error.
    store = S3ArtifactStore(
        S3ArtifactConfig(
            bucket="sandboxd-down",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            connect_timeout_s=1.0,
            read_timeout_s=2.0,
            transfer_timeout_s=30.0,
            request_timeout_s=30.0,
            **CREDENTIALS,
        ),
        logger,
    )
    source = tmp_path / "f"
    source.write_bytes(b"x" * 1000)
    try:
        with pytest.raises(ArtifactStoreUnavailableError, match="upload"):
            store.upload(ArtifactKind.IMAGE, KEY, source)
        with pytest.raises(ArtifactStoreUnavailableError, match="download"):
            store.download(ArtifactKind.IMAGE, KEY, tmp_path / "out")
        with pytest.raises(ArtifactStoreUnavailableError):
            store.exists(ArtifactKind.IMAGE, KEY)
    finally:
        store.close()
    assert not (tmp_path / "out").exists()
    failures = [attrs for _lv, event, attrs in logger.messages if event == "artifact_store_failed"]
    assert [f["operation"] for f in failures] == ["upload", "download", "exists"]
    assert all(f["error"] == "EndpointConnectionError" for f in failures)


def test_without_a_bucket_the_store_is_off_and_says_so(tmp_path: Path, logger: FakeLogger) -> None:
    store = S3ArtifactStore(S3ArtifactConfig(bucket=None), logger)
    assert store.enabled is False
    with pytest.raises(ArtifactStoreUnavailableError, match="off: no bucket"):
        store.upload(ArtifactKind.IMAGE, KEY, tmp_path / "whatever")
    with pytest.raises(ArtifactStoreUnavailableError, match="off: no bucket"):
        store.download(ArtifactKind.SNAPSHOT, KEY, tmp_path / "whatever")
    assert logger.events() == ["artifact_store_disabled", "artifact_store_disabled"]


def test_uploads_beyond_the_limit_wait_for_a_slot(
    s3_endpoint: str, bucket: str, tmp_path: Path, logger: FakeLogger
) -> None:
    import threading

    store = S3ArtifactStore(
        S3ArtifactConfig(
            bucket=bucket, endpoint_url=s3_endpoint, max_concurrent_uploads=1, **CREDENTIALS
        ),
        logger,
    )
    sources = []
    for index in range(3):
        path = tmp_path / f"s{index}"
        path.write_bytes(os.urandom(256 * 1024))
        sources.append(path)
    keys = [f"python-v0.1-01234567-{index:016x}" for index in range(3)]
    try:
        # Count concurrently held slots from inside the store's loop.
        held, peak = 0, 0
        original = store._upload_parts

        async def counting(*args, **kwargs):
            nonlocal held, peak
            held += 1
            peak = max(peak, held)
            try:
                return await original(*args, **kwargs)
            finally:
                held -= 1

        store._upload_parts = counting  # type: ignore[method-assign]
        threads = [
            threading.Thread(target=store.upload, args=(ArtifactKind.IMAGE, key, source))
            for key, source in zip(keys, sources, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert peak == 1
        for key, source in zip(keys, sources, strict=True):
            target = tmp_path / f"{key}.back"
            assert store.download(ArtifactKind.IMAGE, key, target)
            assert target.read_bytes() == source.read_bytes()
    finally:
        store.close()
