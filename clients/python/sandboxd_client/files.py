"""Workspace file helpers of the clients: sources as bytes, paths, file objects or iterators of
chunks; destinations as paths or file objects; downloads checked against the service's SHA-256
as they stream. The async client reads and writes local files in a worker thread (a chunk at a
time), so a large file never blocks the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from datetime import datetime
from typing import IO, Any, Union
from urllib.parse import quote

import httpx

from sandboxd_client.models import FileListing, SandboxdError, StoredFile, WorkspaceFile

CHUNK = 1024 * 1024
# An iterable of chunks is sent as it is iterated; an async iterable only by the async client.
Source = Union[bytes, str, "os.PathLike[str]", IO[bytes], Iterable[bytes], AsyncIterable[bytes]]
Destination = Union[str, "os.PathLike[str]", IO[bytes]]


def url_segment(value: str) -> str:
    """One URL path segment (a chat id, a pool name): every reserved character escaped, and no
    dot segment, which an HTTP client would resolve into another route."""
    if value in ("", ".", ".."):
        raise ValueError(f"not a valid identifier: {value!r}")
    return quote(value, safe="")


def file_url(chat: str, path: str = "") -> str:
    """The URL path of a workspace file. Its slashes stay, except when a segment is "." or "..":
    the HTTP client would resolve those away ("files/../sandbox" is the sandbox route), so such
    a path's slashes go as %2F (the service decodes them) and the service, which refuses the
    path, sees what the caller gave."""
    base = f"/v1/chats/{url_segment(chat)}/files"
    if not path:
        return base
    if path in (".", ".."):
        # Alone in the URL it is a dot segment whatever its encoding: nothing to send.
        raise SandboxdError(422, "path_refused", "the path has an empty, '.' or '..' component")
    segments = path.split("/")
    dots = any(segment in (".", "..") for segment in segments)
    return f"{base}/" + ("%2F" if dots else "/").join(quote(s, safe="") for s in segments)


def chunks_of(source: Source) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield from _read(f)
        return
    # A file object is iterable too, by lines: read it in chunks instead.
    if hasattr(source, "read"):
        yield from _read(source)  # type: ignore[arg-type]
        return
    if isinstance(source, AsyncIterable):
        raise TypeError("an async iterable is a source for AsyncSandboxdClient only")
    yield from source


def _read(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


async def async_chunks_of(source: Source) -> AsyncIterator[bytes]:
    """``chunks_of`` for the async client: each read in a worker thread."""
    if isinstance(source, bytes):
        yield source
        return
    if isinstance(source, str | os.PathLike):
        f = await asyncio.to_thread(open, source, "rb")
        try:
            async for chunk in _async_read(f):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)
        return
    if hasattr(source, "read"):
        async for chunk in _async_read(source):  # type: ignore[arg-type]
            yield chunk
        return
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
        return
    for chunk in source:
        yield chunk


async def _async_read(f: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        yield chunk


def stored(data: dict[str, Any]) -> StoredFile:
    return StoredFile(data["path"], data["size"], data["sha256"])


def listing(data: dict[str, Any]) -> FileListing:
    files = tuple(
        WorkspaceFile(f["path"], f["size"], datetime.fromisoformat(f["modified_at"]))
        for f in data["files"]
    )
    return FileListing(files, bool(data.get("truncated", False)))


class DigestCheck:
    """A download's chunks as they arrive, hashed; past the last one, a content that is not what
    the service's X-Sandboxd-Sha256 said raises SandboxdError digest_mismatch."""

    def __init__(self, response: httpx.Response) -> None:
        self.sha256 = response.headers.get("x-sandboxd-sha256", "")
        self.size = 0
        self._request_id = response.headers.get("x-request-id", "")
        self._hash = hashlib.sha256()

    def verified(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._update(chunk)
            yield chunk
        self._check()

    async def averified(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._update(chunk)
            yield chunk
        self._check()

    def _update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def _check(self) -> None:
        if self.sha256 and self._hash.hexdigest() != self.sha256:
            raise SandboxdError(0, "digest_mismatch", "the download is corrupt", self._request_id)
