"""L3 artifact store on S3 (aioboto3), zstd-compressed, streaming in both directions.

aioboto3 is asyncio inside while the ports are synchronous (use cases run on plain threads), so
the store runs one event loop on a daemon thread of its own and every public method submits a
coroutine there and waits for it with a deadline, like ``adapter.qemu.qmp`` does for QMP.

- Upload: the file is read and compressed part by part into an S3 multipart upload; at most one
  part (``part_size``) of compressed bytes is in memory per upload, and at most
  ``max_concurrent_uploads`` uploads run at once (the others wait). The sha256 and size of the
  uncompressed file travel as object metadata. A failed upload is aborted: no object appears.
- Download: the body is read in chunks, decompressed and written to a temporary file next to
  the destination, checked against the recorded sha256 and renamed into place; on any failure
  the temporary file is removed and the destination is untouched.
- Every library, network or compression error becomes ArtifactStoreUnavailableError, logged
  once as ``artifact_store_failed``. Without a bucket the store is off: calls raise saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import aioboto3
import zstandard
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from domain.environment import ArtifactKind, is_cache_key
from domain.errors import ArtifactStoreUnavailableError
from usecase.ports import Logger

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
_READ_CHUNK = 1024 * 1024
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3ArtifactConfig:
    """Where and how to store artifacts. ``bucket=None`` turns the store off.

    Credentials left as None come from boto's usual chain (environment, config files, instance
    role). ``endpoint_url`` points at any S3-compatible service.
    """

    bucket: str | None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_concurrent_uploads: int = 2
    part_size: int = 8 * 1024 * 1024
    compression_level: int = 3
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0
    max_attempts: int = 2
    transfer_timeout_s: float = 3600.0
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.max_concurrent_uploads < 1:
            raise ValueError("max_concurrent_uploads must be at least 1")


class _LoopThread:
    """A daemon thread running an asyncio loop; ``run`` executes a coroutine there, blocking."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="sandboxd-s3", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout_s), self.loop)
        try:
            return future.result(timeout_s + 5.0)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class S3ArtifactStore:
    """ArtifactStore port on S3; see the module docstring for the rules."""

    def __init__(self, config: S3ArtifactConfig, logger: Logger) -> None:
        self._config = config
        self._logger = logger
        self._session = aioboto3.Session()
        self._boto_config = Config(
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            retries={"max_attempts": config.max_attempts, "mode": "standard"},
            signature_version="s3v4",
        )
        self._loop: _LoopThread | None = None
        self._upload_slots: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._config.bucket is not None

    def upload(self, kind: ArtifactKind, key: str, source: Path) -> None:
        object_key = kind.object_key(key)
        size = self._call("upload", object_key, self._upload(object_key, source), transfer=True)
        self._logger.info("artifact_uploaded", {"object_key": object_key, "size_bytes": size})

    def download(self, kind: ArtifactKind, key: str, destination: Path) -> bool:
        object_key = kind.object_key(key)
        size = self._call(
            "download", object_key, self._download(object_key, destination), transfer=True
        )
        if size is None:
            self._logger.info("artifact_missing", {"object_key": object_key})
            return False
        self._logger.info("artifact_downloaded", {"object_key": object_key, "size_bytes": size})
        return True

    def exists(self, kind: ArtifactKind, key: str) -> bool:
        object_key = kind.object_key(key)
        return self._call("exists", object_key, self._exists(object_key))

    def list_keys(self, kind: ArtifactKind) -> list[str]:
        return sorted(self._call("list", kind.prefix + "/", self._list(kind)))

    def delete(self, kind: ArtifactKind, key: str) -> None:
        object_key = kind.object_key(key)
        self._call("delete", object_key, self._delete(object_key))
        self._logger.info("artifact_deleted", {"object_key": object_key})

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- plumbing ---------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        object_key: str,
        coroutine: Coroutine[Any, Any, T],
        transfer: bool = False,
    ) -> T:
        if not self.enabled:
            coroutine.close()
            self._logger.warning(
                "artifact_store_disabled", {"operation": operation, "object_key": object_key}
            )
            raise ArtifactStoreUnavailableError(
                "the S3 artifact store is off: no bucket is configured"
            )
        timeout_s = self._config.transfer_timeout_s if transfer else self._config.request_timeout_s
        try:
            return self._running_loop().run(coroutine, timeout_s)
        except ArtifactStoreUnavailableError as exc:
            self._failed(operation, object_key, exc)
            raise
        except TimeoutError as exc:
            self._failed(operation, object_key, exc)
            raise ArtifactStoreUnavailableError(
                f"S3 {operation} of {object_key} timed out after {timeout_s:.0f}s"
            ) from exc
        except (BotoCoreError, ClientError, OSError, zstandard.ZstdError) as exc:
            self._failed(operation, object_key, exc)
            raise ArtifactStoreUnavailableError(
                f"S3 {operation} of {object_key} failed: {exc}"
            ) from exc

    def _failed(self, operation: str, object_key: str, exc: BaseException) -> None:
        self._logger.error(
            "artifact_store_failed",
            {
                "operation": operation,
                "object_key": object_key,
                "bucket": self._config.bucket or "",
                "error": type(exc).__name__,
                "detail": str(exc)[:500],
            },
        )

    def _running_loop(self) -> _LoopThread:
        with self._start_lock:
            if self._loop is None:
                self._loop = _LoopThread()
            return self._loop

    def _client(self) -> Any:
        return self._session.client(
            "s3",
            endpoint_url=self._config.endpoint_url,
            region_name=self._config.region,
            aws_access_key_id=self._config.access_key_id,
            aws_secret_access_key=self._config.secret_access_key,
            config=self._boto_config,
        )

    def _slots(self) -> asyncio.Semaphore:
        # Created on the loop thread, on first use, so it belongs to the store's loop.
        if self._upload_slots is None:
            self._upload_slots = asyncio.Semaphore(self._config.max_concurrent_uploads)
        return self._upload_slots

    async def _upload(self, object_key: str, source: Path) -> int:
        digest, size = await asyncio.to_thread(_sha256_and_size, source)
        bucket = self._config.bucket
        async with self._slots(), self._client() as s3:
            created = await s3.create_multipart_upload(
                Bucket=bucket,
                Key=object_key,
                ContentType="application/zstd",
                Metadata={"sha256": digest, "size": str(size)},
            )
            upload_id = created["UploadId"]
            try:
                parts = await self._upload_parts(s3, object_key, upload_id, source)
                await s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                # Best effort: an unaborted upload is invisible but costs storage until the
                # bucket's lifecycle rule drops it.
                with contextlib.suppress(
                    BotoCoreError, ClientError, OSError, asyncio.CancelledError
                ):
                    await asyncio.shield(
                        s3.abort_multipart_upload(Bucket=bucket, Key=object_key, UploadId=upload_id)
                    )
                raise
        return size

    async def _upload_parts(
        self, s3: Any, object_key: str, upload_id: str, source: Path
    ) -> list[dict[str, Any]]:
        part_size = self._config.part_size
        compressor = zstandard.ZstdCompressor(level=self._config.compression_level).compressobj()
        parts: list[dict[str, Any]] = []
        pending = bytearray()
        with source.open("rb") as reader:
            finished = False
            while not finished:
                compressed, finished = await asyncio.to_thread(
                    _compress_some, reader, compressor, part_size
                )
                pending += compressed
                while len(pending) >= part_size or (finished and pending):
                    body = bytes(pending[:part_size])
                    del pending[:part_size]
                    number = len(parts) + 1
                    answer = await s3.upload_part(
                        Bucket=self._config.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
        return parts

    async def _download(self, object_key: str, destination: Path) -> int | None:
        async with self._client() as s3:
            try:
                answer = await s3.get_object(Bucket=self._config.bucket, Key=object_key)
            except ClientError as exc:
                if _is_missing(exc):
                    return None
                raise
            expected = (answer.get("Metadata") or {}).get("sha256")
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
            try:
                size, digest = await self._write_decompressed(answer["Body"], partial)
                if expected is not None and digest != expected:
                    raise ArtifactStoreUnavailableError(
                        f"{object_key}: content does not match its recorded sha256"
                    )
                partial.replace(destination)
            finally:
                partial.unlink(missing_ok=True)
        return size

    async def _write_decompressed(self, body: Any, partial: Path) -> tuple[int, str]:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        digest = hashlib.sha256()
        size = 0
        async with body:  # releases the connection however the loop ends
            with partial.open("wb") as writer:
                while chunk := await body.read(_READ_CHUNK):
                    data = decompressor.decompress(chunk)
                    digest.update(data)
                    size += len(data)
                    await asyncio.to_thread(writer.write, data)
        if not decompressor.eof:
            raise ArtifactStoreUnavailableError(f"{partial.name}: compressed stream is truncated")
        return size, digest.hexdigest()

    async def _exists(self, object_key: str) -> bool:
        async with self._client() as s3:
            try:
                await s3.head_object(Bucket=self._config.bucket, Key=object_key)
            except ClientError as exc:
                if _is_missing(exc):
                    return False
                raise
        return True

    async def _list(self, kind: ArtifactKind) -> list[str]:
        keys: list[str] = []
        prefix, suffix = kind.prefix + "/", kind.object_name_suffix
        async with self._client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._config.bucket, Prefix=prefix):
                for item in page.get("Contents") or []:
                    name = str(item["Key"])[len(prefix) :]
                    if name.endswith(suffix) and is_cache_key(name.removesuffix(suffix)):
                        keys.append(name.removesuffix(suffix))
        return keys

    async def _delete(self, object_key: str) -> None:
        async with self._client() as s3:
            await s3.delete_object(Bucket=self._config.bucket, Key=object_key)


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _sha256_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _compress_some(reader: IO[bytes], compressor: Any, amount: int) -> tuple[bytes, bool]:
    """Compress up to ``amount`` more input bytes; True when the input is exhausted."""
    raw = reader.read(amount)
    if raw:
        return compressor.compress(raw), False
    return compressor.flush(), True
