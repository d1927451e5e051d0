"""The API's calls without I/O: what each one sends and how its answer is read.

The sync and async clients differ only in how they send (``httpx.Client`` or ``AsyncClient``);
both take a Call from here, send ``method``, ``url`` and ``options`` (httpx request arguments),
and hand the response to ``read``, which maps every error response to SandboxdError.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx

from sandboxd_client.files import file_url, listing, stored, url_segment
from sandboxd_client.models import (
    ExecutionResult,
    FileListing,
    OutputEvent,
    Pool,
    RichOutput,
    Sandbox,
    SandboxdError,
    SandboxPage,
    StoredFile,
)

T = TypeVar("T")
StreamItem = OutputEvent | RichOutput | ExecutionResult

# Extra seconds on top of the execution's own timeout: sandbox creation, queueing behind the
# chat's earlier messages.
_EXECUTE_SLACK_S = 60.0
_DEFAULT_EXECUTION_TIMEOUT_S = 30.0
# Files stream for as long as they take, up to this (a 100 MiB file on a slow link).
DEFAULT_FILE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    url: str
    read: Callable[[httpx.Response], T]
    options: dict[str, Any] = field(default_factory=dict)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    request_id = response.headers.get("x-request-id", "")
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{response.status_code}", response.text[:500]
    raise SandboxdError(response.status_code, code, message, request_id)


def _body(parse: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    def read(response: httpx.Response) -> T:
        raise_for_error(response)
        return parse(response.json())

    return read


def _nothing(response: httpx.Response) -> None:
    raise_for_error(response)


def _sandbox_or_none(response: httpx.Response) -> Sandbox | None:
    if response.status_code == 404:
        return None
    raise_for_error(response)
    return Sandbox.from_json(response.json())


def _chat(chat_id: UUID | str) -> str:
    return f"/v1/chats/{url_segment(str(chat_id))}"


# -- executions ------------------------------------------------------------------------------


def execute(
    chat_id: UUID | str,
    code: str,
    language: str,
    timeout_s: float | None,
    packages: Sequence[str],
    *,
    stream: bool = False,
) -> Call[ExecutionResult]:
    """``stream``: ask for server-sent events (read them with SseParser, not ``read``)."""
    body: dict[str, Any] = {"code": code, "language": language}
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if packages:
        body["packages"] = list(packages)
    options: dict[str, Any] = {
        "json": body,
        "timeout": (timeout_s or _DEFAULT_EXECUTION_TIMEOUT_S) + _EXECUTE_SLACK_S,
    }
    if stream:
        options["headers"] = {"Accept": "text/event-stream"}
    return Call("POST", f"{_chat(chat_id)}/executions", _body(ExecutionResult.from_json), options)


class SseParser:
    """Server-sent events to OutputEvent / ExecutionResult; an ``error`` event raises."""

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> StreamItem | None:
        if line.startswith(":"):
            return None
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
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

    def items(self, lines: Iterable[str]) -> Iterator[StreamItem]:
        for line in lines:
            item = self.feed(line)
            if item is not None:
                yield item


# -- sandboxes -------------------------------------------------------------------------------


def ensure_sandbox(chat_id: UUID | str, packages: Sequence[str], language: str) -> Call[Sandbox]:
    body = {"packages": list(packages), "language": language} if packages else None
    return Call("PUT", f"{_chat(chat_id)}/sandbox", _body(Sandbox.from_json), {"json": body})


def get_sandbox(chat_id: UUID | str) -> Call[Sandbox | None]:
    return Call("GET", f"{_chat(chat_id)}/sandbox", _sandbox_or_none)


def renew_sandbox(chat_id: UUID | str) -> Call[Sandbox]:
    return Call("POST", f"{_chat(chat_id)}/sandbox/renew", _body(Sandbox.from_json))


def destroy_sandbox(chat_id: UUID | str) -> Call[None]:
    return Call("DELETE", f"{_chat(chat_id)}/sandbox", _nothing)


def list_sandboxes(status: str | None, limit: int, offset: int) -> Call[SandboxPage]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    return Call("GET", "/v1/sandboxes", _body(_page), {"params": params})


def _page(data: dict[str, Any]) -> SandboxPage:
    return SandboxPage(
        items=[Sandbox.from_json(item) for item in data["items"]],
        limit=data["limit"],
        offset=data["offset"],
        next_offset=data.get("next_offset"),
    )


def ready() -> Call[bool]:
    return Call("GET", "/readyz", lambda response: response.status_code == 200)


# -- pools -----------------------------------------------------------------------------------


def list_pools() -> Call[list[Pool]]:
    return Call("GET", "/v1/pools", _body(lambda data: [Pool.from_json(i) for i in data["items"]]))


def get_pool(name: str) -> Call[Pool]:
    return Call("GET", f"/v1/pools/{url_segment(name)}", _body(Pool.from_json))


def create_pool(
    name: str, language: str, packages: Sequence[str], capacity: dict[str, int]
) -> Call[Pool]:
    """``capacity``: models.capacity_spec(...)."""
    body = {
        "name": name,
        "environment": {"language": language, "packages": list(packages)},
        "capacitySpec": capacity,
    }
    return Call("POST", "/v1/pools", _body(Pool.from_json), {"json": body})


def update_pool(name: str, capacity: dict[str, int]) -> Call[Pool]:
    body = {"capacitySpec": capacity}
    return Call("PUT", f"/v1/pools/{url_segment(name)}", _body(Pool.from_json), {"json": body})


def delete_pool(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/pools/{url_segment(name)}", _nothing)


# -- workspace files -------------------------------------------------------------------------


def upload_file(
    chat_id: UUID | str,
    path: str,
    chunks: Iterator[bytes] | AsyncIterator[bytes],
    timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
) -> Call[StoredFile]:
    """``chunks``: files.chunks_of(source), or async_chunks_of for the async client."""
    options = {"content": chunks, "timeout": timeout_s}
    return Call("PUT", file_url(str(chat_id), path), _body(stored), options)


def download_file(
    chat_id: UUID | str, path: str, timeout_s: float = DEFAULT_FILE_TIMEOUT_S
) -> Call[None]:
    """Streamed: the client reads the body itself (``read`` only checks for an error)."""
    return Call("GET", file_url(str(chat_id), path), _nothing, {"timeout": timeout_s})


def list_files(chat_id: UUID | str, prefix: str) -> Call[FileListing]:
    return Call("GET", file_url(str(chat_id)), _body(listing), {"params": {"prefix": prefix}})


def delete_file(chat_id: UUID | str, path: str) -> Call[None]:
    return Call("DELETE", file_url(str(chat_id), path), _nothing)
