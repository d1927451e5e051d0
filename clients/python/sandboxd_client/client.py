"""Sync and async clients of the sandboxd HTTP API, on httpx.

    from sandboxd_client import SandboxdClient

    with SandboxdClient("http://127.0.0.1:8080", api_key="...") as client:
        result = client.execute(chat_id, "x = 41\\nprint(x + 1)")
        print(result.stdout)          # 42

Every error response raises SandboxdError(status, code, message); ``retryable`` is True for 429
and 503. A timed-out execution is not an error: ``result.timed_out`` is True.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import IO, Any
from uuid import UUID

import httpx

from sandboxd_client.files import (
    CHUNK,
    Destination,
    DigestCheck,
    Source,
    async_chunks_of,
    chunks_of,
    file_url,
    listing,
    stored,
)
from sandboxd_client.models import (
    ExecutionResult,
    OutputEvent,
    Pool,
    RichOutput,
    Sandbox,
    SandboxdError,
    SandboxPage,
    StoredFile,
    WorkspaceFile,
    capacity_spec,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
# Extra seconds on top of the execution's own timeout: sandbox creation, queueing behind the
# chat's earlier messages.
_EXECUTE_SLACK_S = 60.0
_DEFAULT_EXECUTION_TIMEOUT_S = 30.0

StreamItem = OutputEvent | RichOutput | ExecutionResult


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _chat(chat_id: UUID | str) -> str:
    return str(chat_id)


def _execute_body(
    code: str, language: str, timeout_s: float | None, packages: Sequence[str] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "language": language}
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if packages:
        body["packages"] = list(packages)
    return body


def _ensure_body(packages: Sequence[str], language: str) -> dict[str, Any] | None:
    return {"packages": list(packages), "language": language} if packages else None


def _execute_timeout(timeout_s: float | None) -> float:
    return (timeout_s or _DEFAULT_EXECUTION_TIMEOUT_S) + _EXECUTE_SLACK_S


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    request_id = response.headers.get("x-request-id", "")
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:500]
    raise SandboxdError(response.status_code, code, message, request_id)


def _page(data: dict[str, Any]) -> SandboxPage:
    return SandboxPage(
        items=[Sandbox.from_json(item) for item in data["items"]],
        next_offset=data.get("next_offset"),
    )


def _list_params(status: str | None, limit: int, offset: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    return params


class _SseParser:
    """Server-sent events to OutputEvent / ExecutionResult; an ``error`` event raises."""

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> StreamItem | None:
        if line.startswith(":"):
            return None
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self._event = value
            elif field == "data":
                self._data.append(value)
            return None
        if not self._data:
            return None
        event, data = self._event, json.loads("\n".join(self._data))
        self._event, self._data = "message", []
        if event == "result":
            return ExecutionResult.from_json(data)
        if event == "display":
            return RichOutput.from_json(data)
        if event == "error":
            # Status 0: the error came inside a 200 stream, after the headers were sent.
            raise SandboxdError(0, data["code"], data["message"], self._request_id)
        return OutputEvent(stream=event, data=data["data"])


def _items(lines: Iterable[str], parser: _SseParser) -> Iterator[StreamItem]:
    for line in lines:
        item = parser.feed(line)
        if item is not None:
            yield item


_FILE_TIMEOUT_S = 600.0


def _copy(response: httpx.Response, out: IO[bytes], check: DigestCheck) -> int:
    size = 0
    for chunk in response.iter_bytes(CHUNK):
        out.write(chunk)
        check.update(chunk)
        size += len(chunk)
    return size


async def _async_copy(response: httpx.Response, out: IO[bytes], check: DigestCheck) -> int:
    size = 0
    async for chunk in response.aiter_bytes(CHUNK):
        await asyncio.to_thread(out.write, chunk)
        check.update(chunk)
        size += len(chunk)
    return size


class SandboxdClient:
    """Blocking client. Thread-safe (httpx.Client is); one per process is enough."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key),
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
        response = self._http.post(
            f"/v1/chats/{_chat(chat_id)}/executions",
            json=_execute_body(code, language, timeout_s, packages),
            timeout=_execute_timeout(timeout_s),
        )
        _raise_for_error(response)
        return ExecutionResult.from_json(response.json())

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
        with self._http.stream(
            "POST",
            f"/v1/chats/{_chat(chat_id)}/executions",
            json=_execute_body(code, language, timeout_s, packages),
            headers={"Accept": "text/event-stream"},
            timeout=_execute_timeout(timeout_s),
        ) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_error(response)
            parser = _SseParser(response.headers.get("x-request-id", ""))
            yield from _items(response.iter_lines(), parser)

    # -- workspace files -----------------------------------------------------------------------

    def upload_file(self, chat_id: UUID | str, path: str, source: Source) -> StoredFile:
        """Upload bytes, a local file (path) or a binary file object, streamed in chunks."""
        response = self._http.put(
            file_url(_chat(chat_id), path), content=chunks_of(source), timeout=_FILE_TIMEOUT_S
        )
        _raise_for_error(response)
        return stored(response.json())

    def download_file(self, chat_id: UUID | str, path: str, destination: Destination) -> StoredFile:
        """Stream the file into a local path or a binary file object; checks its SHA-256."""
        with self._http.stream(
            "GET", file_url(_chat(chat_id), path), timeout=_FILE_TIMEOUT_S
        ) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_error(response)
            digest = response.headers.get("x-sandboxd-sha256", "")
            check = DigestCheck(digest, response.headers.get("x-request-id", ""))
            size = 0
            if isinstance(destination, str | os.PathLike):
                with open(destination, "wb") as f:
                    size = _copy(response, f, check)
            else:
                size = _copy(response, destination, check)
            check.check()
        return StoredFile(path, size, digest)

    def list_files(self, chat_id: UUID | str, prefix: str = "") -> list[WorkspaceFile]:
        response = self._http.get(file_url(_chat(chat_id)), params={"prefix": prefix})
        _raise_for_error(response)
        return listing(response.json())

    def delete_file(self, chat_id: UUID | str, path: str) -> None:
        _raise_for_error(self._http.delete(file_url(_chat(chat_id), path)))

    def ensure_sandbox(
        self, chat_id: UUID | str, *, packages: Sequence[str] = (), language: str = "python"
    ) -> Sandbox:
        """Create or reuse; ``packages`` the sandbox must have (installed into a running one)."""
        response = self._http.put(
            f"/v1/chats/{_chat(chat_id)}/sandbox", json=_ensure_body(packages, language)
        )
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    def get_sandbox(self, chat_id: UUID | str) -> Sandbox | None:
        """The chat's sandbox, or None when it has none."""
        response = self._http.get(f"/v1/chats/{_chat(chat_id)}/sandbox")
        if response.status_code == 404:
            return None
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    def renew_sandbox(self, chat_id: UUID | str) -> Sandbox:
        response = self._http.post(f"/v1/chats/{_chat(chat_id)}/sandbox/renew")
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    def destroy_sandbox(self, chat_id: UUID | str) -> None:
        _raise_for_error(self._http.delete(f"/v1/chats/{_chat(chat_id)}/sandbox"))

    def list_sandboxes(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> SandboxPage:
        response = self._http.get("/v1/sandboxes", params=_list_params(status, limit, offset))
        _raise_for_error(response)
        return _page(response.json())

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def list_pools(self) -> list[Pool]:
        response = self._http.get("/v1/pools")
        _raise_for_error(response)
        return [Pool.from_json(item) for item in response.json()["items"]]

    def get_pool(self, name: str) -> Pool:
        response = self._http.get(f"/v1/pools/{name}")
        _raise_for_error(response)
        return Pool.from_json(response.json())

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
        response = self._http.post(
            "/v1/pools",
            json=_pool_body(name, language, packages, buffer_min, buffer_max, pool_min, pool_max),
        )
        _raise_for_error(response)
        return Pool.from_json(response.json())

    def update_pool(
        self, name: str, *, buffer_min: int, buffer_max: int, pool_max: int, pool_min: int = 0
    ) -> Pool:
        spec = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        response = self._http.put(f"/v1/pools/{name}", json={"capacitySpec": spec})
        _raise_for_error(response)
        return Pool.from_json(response.json())

    def delete_pool(self, name: str) -> None:
        _raise_for_error(self._http.delete(f"/v1/pools/{name}"))


class AsyncSandboxdClient:
    """The asyncio twin of SandboxdClient."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
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
        response = await self._http.post(
            f"/v1/chats/{_chat(chat_id)}/executions",
            json=_execute_body(code, language, timeout_s, packages),
            timeout=_execute_timeout(timeout_s),
        )
        _raise_for_error(response)
        return ExecutionResult.from_json(response.json())

    async def execute_stream(
        self,
        chat_id: UUID | str,
        code: str,
        *,
        language: str = "python",
        timeout_s: float | None = None,
        packages: Sequence[str] = (),
    ) -> AsyncIterator[StreamItem]:
        async with self._http.stream(
            "POST",
            f"/v1/chats/{_chat(chat_id)}/executions",
            json=_execute_body(code, language, timeout_s, packages),
            headers={"Accept": "text/event-stream"},
            timeout=_execute_timeout(timeout_s),
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for_error(response)
            parser = _SseParser(response.headers.get("x-request-id", ""))
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is not None:
                    yield item

    # -- workspace files -----------------------------------------------------------------------

    async def upload_file(self, chat_id: UUID | str, path: str, source: Source) -> StoredFile:
        """Upload bytes, a local file (path) or a binary file object, streamed in chunks."""
        response = await self._http.put(
            file_url(_chat(chat_id), path),
            content=async_chunks_of(source),
            timeout=_FILE_TIMEOUT_S,
        )
        _raise_for_error(response)
        return stored(response.json())

    async def download_file(
        self, chat_id: UUID | str, path: str, destination: Destination
    ) -> StoredFile:
        """Stream the file into a local path or a binary file object; checks its SHA-256."""
        async with self._http.stream(
            "GET", file_url(_chat(chat_id), path), timeout=_FILE_TIMEOUT_S
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for_error(response)
            digest = response.headers.get("x-sandboxd-sha256", "")
            check = DigestCheck(digest, response.headers.get("x-request-id", ""))
            if isinstance(destination, str | os.PathLike):
                f = await asyncio.to_thread(open, destination, "wb")
                try:
                    size = await _async_copy(response, f, check)
                finally:
                    await asyncio.to_thread(f.close)
            else:
                size = await _async_copy(response, destination, check)
            check.check()
        return StoredFile(path, size, digest)

    async def list_files(self, chat_id: UUID | str, prefix: str = "") -> list[WorkspaceFile]:
        response = await self._http.get(file_url(_chat(chat_id)), params={"prefix": prefix})
        _raise_for_error(response)
        return listing(response.json())

    async def delete_file(self, chat_id: UUID | str, path: str) -> None:
        _raise_for_error(await self._http.delete(file_url(_chat(chat_id), path)))

    async def ensure_sandbox(
        self, chat_id: UUID | str, *, packages: Sequence[str] = (), language: str = "python"
    ) -> Sandbox:
        response = await self._http.put(
            f"/v1/chats/{_chat(chat_id)}/sandbox", json=_ensure_body(packages, language)
        )
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    async def get_sandbox(self, chat_id: UUID | str) -> Sandbox | None:
        response = await self._http.get(f"/v1/chats/{_chat(chat_id)}/sandbox")
        if response.status_code == 404:
            return None
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    async def renew_sandbox(self, chat_id: UUID | str) -> Sandbox:
        response = await self._http.post(f"/v1/chats/{_chat(chat_id)}/sandbox/renew")
        _raise_for_error(response)
        return Sandbox.from_json(response.json())

    async def destroy_sandbox(self, chat_id: UUID | str) -> None:
        _raise_for_error(await self._http.delete(f"/v1/chats/{_chat(chat_id)}/sandbox"))

    async def list_sandboxes(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> SandboxPage:
        response = await self._http.get("/v1/sandboxes", params=_list_params(status, limit, offset))
        _raise_for_error(response)
        return _page(response.json())

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).status_code == 200

    async def list_pools(self) -> list[Pool]:
        response = await self._http.get("/v1/pools")
        _raise_for_error(response)
        return [Pool.from_json(item) for item in response.json()["items"]]

    async def get_pool(self, name: str) -> Pool:
        response = await self._http.get(f"/v1/pools/{name}")
        _raise_for_error(response)
        return Pool.from_json(response.json())

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
        response = await self._http.post(
            "/v1/pools",
            json=_pool_body(name, language, packages, buffer_min, buffer_max, pool_min, pool_max),
        )
        _raise_for_error(response)
        return Pool.from_json(response.json())

    async def update_pool(
        self, name: str, *, buffer_min: int, buffer_max: int, pool_max: int, pool_min: int = 0
    ) -> Pool:
        spec = capacity_spec(buffer_min, buffer_max, pool_min, pool_max)
        response = await self._http.put(f"/v1/pools/{name}", json={"capacitySpec": spec})
        _raise_for_error(response)
        return Pool.from_json(response.json())

    async def delete_pool(self, name: str) -> None:
        _raise_for_error(await self._http.delete(f"/v1/pools/{name}"))


def _pool_body(
    name: str,
    language: str,
    packages: Sequence[str],
    buffer_min: int,
    buffer_max: int,
    pool_min: int,
    pool_max: int,
) -> dict[str, Any]:
    return {
        "name": name,
        "environment": {"language": language, "packages": list(packages)},
        "capacitySpec": capacity_spec(buffer_min, buffer_max, pool_min, pool_max),
    }
