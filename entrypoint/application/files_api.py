"""Async facade over the WorkspaceFiles use case for HTTP and gRPC.

Uploads are spooled to a temporary file on the host while they arrive (the per-file limit is
enforced there, before the sandbox is touched), then sent to the agent in chunks (pipelined
binary data frames, see adapter/agent/connection.py); downloads are
spooled the same way, so the digest is known before the first byte goes out and a slow reader
never holds the chat's lock. Neither ever sits whole in memory.
"""

from __future__ import annotations

import asyncio
import mimetypes
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import IO, Any
from uuid import UUID

from domain.errors import FileTooLargeError
from domain.files import FILE_CHUNK_BYTES, StoredFile, WorkspaceListing, check_workspace_path
from domain.tenant import OPERATOR, Caller
from usecase.files import WorkspaceFiles

_THREADS = 8
_SPOOL_BATCH = 1024 * 1024


@dataclass
class SpooledDownload:
    """A downloaded file waiting on the host's disk; iterate it once, it deletes itself."""

    stored: StoredFile
    content_type: str
    _file: IO[bytes]

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await loop.run_in_executor(None, self._file.read, _SPOOL_BATCH):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


class FilesApi:
    def __init__(self, files: WorkspaceFiles, spool_dir: str | None = None) -> None:
        self._files = files
        self._spool_dir = spool_dir
        self._executor = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="files")

    @property
    def max_file_bytes(self) -> int:
        return self._files.max_file_bytes

    async def upload(
        self,
        chat_id: UUID,
        path: str,
        body: AsyncIterable[bytes],
        declared: int | None = None,
        caller: Caller = OPERATOR,
    ) -> StoredFile:
        check_workspace_path(path)
        limit = self._files.max_file_bytes
        if declared is not None and declared > limit:
            raise FileTooLargeError(f"the file is {declared} bytes; the limit is {limit}")
        with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
            size = pending_bytes = 0
            pending: list[bytes] = []
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise FileTooLargeError(f"the file is larger than the limit of {limit} bytes")
                pending.append(chunk)
                pending_bytes += len(chunk)
                # One thread hop per MiB, not per network read; the chunks are not copied.
                if pending_bytes >= _SPOOL_BATCH:
                    await self._run(spool.writelines, pending)
                    pending, pending_bytes = [], 0
            await self._run(spool.writelines, pending)
            source = partial(_replay, spool)
            stored: StoredFile = await self._run(self._files.upload, chat_id, path, source, caller)
            return stored

    async def download(
        self, chat_id: UUID, path: str, caller: Caller = OPERATOR
    ) -> SpooledDownload:
        # Closed by the SpooledDownload once the response has read it.
        spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115
        try:
            stored = await self._run(self._files.download, chat_id, path, spool.write, caller)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return SpooledDownload(stored, content_type, spool)

    async def list(
        self, chat_id: UUID, prefix: str = "", caller: Caller = OPERATOR
    ) -> WorkspaceListing:
        listing: WorkspaceListing = await self._run(self._files.list, chat_id, prefix, caller)
        return listing

    async def delete(self, chat_id: UUID, path: str, caller: Caller = OPERATOR) -> None:
        await self._run(self._files.delete, chat_id, path, caller)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))


def _replay(spool: IO[bytes]) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(FILE_CHUNK_BYTES):
        yield chunk
