"""Sync and async clients of the sandboxd HTTP API, on httpx.

    from sandboxd_client import SandboxdClient

    with SandboxdClient("http://127.0.0.1:8080", api_key="...") as client:
        result = client.execute(chat_id, "x = 41\\nprint(x + 1)")
        print(result.stdout)          # 42

Every error response raises SandboxdError(status, code, message); ``retryable`` is True for 429
and 503. A timed-out execution is not an error: ``result.timed_out`` is True. What each method
sends and how its answer is read is shared by both clients: sandboxd_client.calls.

``timeout_s`` bounds each request; ``file_timeout_s`` an upload or download as a whole stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import IO, Any, TypeVar
from uuid import UUID

import httpx

from sandboxd_client import calls
from sandboxd_client.calls import DEFAULT_FILE_TIMEOUT_S, Call, SseParser, StreamItem, auth_headers
from sandboxd_client.files import (
    CHUNK,
    Destination,
    DigestCheck,
    Source,
    async_chunks_of,
    chunks_of,
)
from sandboxd_client.models import (
    ExecutionResult,
    FileListing,
    Pool,
    Sandbox,
    SandboxPage,
    StoredFile,
    capacity_spec,
)

__all__ = ["DEFAULT_BASE_URL", "AsyncSandboxdClient", "SandboxdClient", "StreamItem"]

T = TypeVar("T")
DEFAULT_BASE_URL = "http://127.0.0.1:8080"


class SandboxdClient:
    """Blocking client. Thread-safe (httpx.Client is); one per process is enough."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._file_timeout_s = file_timeout_s
        self._http = httpx.Client(
            base_url=base_url,
            headers=auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> SandboxdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def execute(
        self,
        chat_id: UUID | str,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        packages: Sequence[str] = (),
    ) -> ExecutionResult:
        return self._send(calls.execute(chat_id, code, language, timeout_s, packages))

    def execute_stream(
        self,
        chat_id: UUID | str,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        packages: Sequence[str] = (),
    ) -> Iterator[StreamItem]:
        """OutputEvents as the code prints, then the ExecutionResult."""
        call = calls.execute(chat_id, code, language, timeout_s, packages, stream=True)
        with self._stream(call) as response:
            parser = SseParser(response.headers.get("x-request-id", ""))
            yield from parser.items(response.iter_lines())

    # -- workspace files -----------------------------------------------------------------------

    def upload_file(self, chat_id: UUID | str, path: str, source: Source) -> StoredFile:
        """Upload bytes, a local file (path), a binary file object or an iterable of byte
        chunks, streamed as it is read."""
        chunks = chunks_of(source)
        return self._send(calls.upload_file(chat_id, path, chunks, self._file_timeout_s))

    def download_file(self, chat_id: UUID | str, path: str, destination: Destination) -> StoredFile:
        """Stream the file into a local path or a binary file object; checks its SHA-256."""
        with self._stream(calls.download_file(chat_id, path, self._file_timeout_s)) as response:
            check = DigestCheck(response)
            chunks = check.verified(response.iter_bytes(CHUNK))
            if isinstance(destination, str | os.PathLike):
                with open(destination, "wb") as f:
                    f.writelines(chunks)
            else:
                destination.writelines(chunks)
        return StoredFile(path, check.size, check.sha256)

    def iter_file(self, chat_id: UUID | str, path: str) -> Iterator[bytes]:
        """The file's content in chunks as they arrive; past the last one, SandboxdError
        digest_mismatch if it is not what the service's SHA-256 said. The request goes out on
        the first ``next``; close the iterator (or read it to its end) to free the connection."""
        with self._stream(calls.download_file(chat_id, path, self._file_timeout_s)) as response:
            yield from DigestCheck(response).verified(response.iter_bytes(CHUNK))

    def list_files(self, chat_id: UUID | str, prefix: str = "") -> FileListing:
        """The files under ``prefix``; iterates like a list, ``truncated`` if only part."""
        return self._send(calls.list_files(chat_id, prefix))

    def delete_file(self, chat_id: UUID | str, path: str) -> None:
        self._send(calls.delete_file(chat_id, path))

    # -- sandboxes and pools -------------------------------------------------------------------

    def ensure_sandbox(
        self, chat_id: UUID | str, *, packages: Sequence[str] = (), language: str = "python"
    ) -> Sandbox:
        """Create or reuse; ``packages`` the sandbox must have (installed into a running one)."""
        return self._send(calls.ensure_sandbox(chat_id, packages, language))

    def get_sandbox(self, chat_id: UUID | str) -> Sandbox | None:
        """The chat's sandbox, or None when it has none."""
        return self._send(calls.get_sandbox(chat_id))

    def renew_sandbox(self, chat_id: UUID | str) -> Sandbox:
        return self._send(calls.renew_sandbox(chat_id))

    def destroy_sandbox(self, chat_id: UUID | str) -> None:
        self._send(calls.destroy_sandbox(chat_id))

    def list_sandboxes(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> SandboxPage:
        return self._send(calls.list_sandboxes(status, limit, offset))

    def ready(self) -> bool:
        return self._send(calls.ready())

    def list_pools(self) -> list[Pool]:
        return self._send(calls.list_pools())

    def get_pool(self, name: str) -> Pool:
        return self._send(calls.get_pool(name))

    def create_pool(
        self,
        name: str,
        *,
        buffer_min: int,
        buffer_max: int,
        pool_max: int,
        pool_min: int = 0,
        language: str = "python",
        packages: Sequence[str] = (),
    ) -> Pool:
        """Needs an admin key (as update_pool and delete_pool): SandboxdError admin_required
        (403) otherwise."""
        capacity = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        return self._send(calls.create_pool(name, language, packages, capacity))

    def update_pool(
        self, name: str, *, buffer_min: int, buffer_max: int, pool_max: int, pool_min: int = 0
    ) -> Pool:
        capacity = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        return self._send(calls.update_pool(name, capacity))

    def delete_pool(self, name: str) -> None:
        self._send(calls.delete_pool(name))

    def _send(self, call: Call[T]) -> T:
        return call.read(self._http.request(call.method, call.url, **call.options))

    @contextmanager
    def _stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        """The response with its body unread; an error response raises first."""
        with self._http.stream(call.method, call.url, **call.options) as response:
            if response.status_code >= 400:
                response.read()
                call.read(response)
            yield response


class AsyncSandboxdClient:
    """The asyncio twin of SandboxdClient; local file I/O runs in worker threads."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._file_timeout_s = file_timeout_s
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=auth_headers(api_key),
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def __aenter__(self) -> AsyncSandboxdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(
        self,
        chat_id: UUID | str,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        packages: Sequence[str] = (),
    ) -> ExecutionResult:
        return await self._send(calls.execute(chat_id, code, language, timeout_s, packages))

    async def execute_stream(
        self,
        chat_id: UUID | str,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        packages: Sequence[str] = (),
    ) -> AsyncIterator[StreamItem]:
        call = calls.execute(chat_id, code, language, timeout_s, packages, stream=True)
        async with self._stream(call) as response:
            parser = SseParser(response.headers.get("x-request-id", ""))
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item

    # -- workspace files -----------------------------------------------------------------------

    async def upload_file(self, chat_id: UUID | str, path: str, source: Source) -> StoredFile:
        """Upload bytes, a local file (path), a binary file object or an (async) iterable of
        byte chunks, streamed as it is read. A sync iterable is iterated on the event loop."""
        chunks = async_chunks_of(source)
        return await self._send(calls.upload_file(chat_id, path, chunks, self._file_timeout_s))

    async def download_file(
        self, chat_id: UUID | str, path: str, destination: Destination
    ) -> StoredFile:
        """Stream the file into a local path or a binary file object; checks its SHA-256."""
        call = calls.download_file(chat_id, path, self._file_timeout_s)
        async with self._stream(call) as response:
            check = DigestCheck(response)
            chunks = check.averified(response.aiter_bytes(CHUNK))
            if isinstance(destination, str | os.PathLike):
                f = await asyncio.to_thread(open, destination, "wb")
                try:
                    await _write_all(chunks, f)
                finally:
                    await asyncio.to_thread(f.close)
            else:
                await _write_all(chunks, destination)
        return StoredFile(path, check.size, check.sha256)

    async def iter_file(self, chat_id: UUID | str, path: str) -> AsyncIterator[bytes]:
        """SandboxdClient.iter_file as an async iterator."""
        call = calls.download_file(chat_id, path, self._file_timeout_s)
        async with self._stream(call) as response:
            async for chunk in DigestCheck(response).averified(response.aiter_bytes(CHUNK)):
                yield chunk

    async def list_files(self, chat_id: UUID | str, prefix: str = "") -> FileListing:
        return await self._send(calls.list_files(chat_id, prefix))

    async def delete_file(self, chat_id: UUID | str, path: str) -> None:
        await self._send(calls.delete_file(chat_id, path))

    # -- sandboxes and pools -------------------------------------------------------------------

    async def ensure_sandbox(
        self, chat_id: UUID | str, *, packages: Sequence[str] = (), language: str = "python"
    ) -> Sandbox:
        return await self._send(calls.ensure_sandbox(chat_id, packages, language))

    async def get_sandbox(self, chat_id: UUID | str) -> Sandbox | None:
        return await self._send(calls.get_sandbox(chat_id))

    async def renew_sandbox(self, chat_id: UUID | str) -> Sandbox:
        return await self._send(calls.renew_sandbox(chat_id))

    async def destroy_sandbox(self, chat_id: UUID | str) -> None:
        await self._send(calls.destroy_sandbox(chat_id))

    async def list_sandboxes(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> SandboxPage:
        return await self._send(calls.list_sandboxes(status, limit, offset))

    async def ready(self) -> bool:
        return await self._send(calls.ready())

    async def list_pools(self) -> list[Pool]:
        return await self._send(calls.list_pools())

    async def get_pool(self, name: str) -> Pool:
        return await self._send(calls.get_pool(name))

    async def create_pool(
        self,
        name: str,
        *,
        buffer_min: int,
        buffer_max: int,
        pool_max: int,
        pool_min: int = 0,
        language: str = "python",
        packages: Sequence[str] = (),
    ) -> Pool:
        capacity = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        return await self._send(calls.create_pool(name, language, packages, capacity))

    async def update_pool(
        self, name: str, *, buffer_min: int, buffer_max: int, pool_max: int, pool_min: int = 0
    ) -> Pool:
        capacity = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        return await self._send(calls.update_pool(name, capacity))

    async def delete_pool(self, name: str) -> None:
        await self._send(calls.delete_pool(name))

    async def _send(self, call: Call[T]) -> T:
        return call.read(await self._http.request(call.method, call.url, **call.options))

    @asynccontextmanager
    async def _stream(self, call: Call[Any]) -> AsyncIterator[httpx.Response]:
        """The response with its body unread; an error response raises first."""
        async with self._http.stream(call.method, call.url, **call.options) as response:
            if response.status_code >= 400:
                await response.aread()
                call.read(response)
            yield response


async def _write_all(chunks: AsyncIterator[bytes], out: IO[bytes]) -> None:
    async for chunk in chunks:
        await asyncio.to_thread(out.write, chunk)
