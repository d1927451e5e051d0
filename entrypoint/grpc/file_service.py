"""The file RPCs of SandboxService (UploadFile, DownloadFile, ListFiles, DeleteFile), a mixin of
the servicer: parse, call the FilesApi facade, convert to messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from grpc.aio import ServicerContext as Ctx

from domain.errors import InvalidInputError
from domain.sandbox import parse_chat_id
from domain.tenant import Caller
from entrypoint.application.files_api import FilesApi
from entrypoint.grpc.failures import CallGuard
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.messages import stored_message, timestamp


class FileRpcs:
    """Mixed into SandboxServicer, which sets the two attributes and has the method named here."""

    _files_api: FilesApi | None
    _guard: CallGuard

    if TYPE_CHECKING:

        def _caller(self, context: Ctx) -> Caller: ...

    def _files(self) -> FilesApi:
        if self._files_api is None:
            raise InvalidInputError("files are not served here")
        return self._files_api

    async def UploadFile(self, request_iterator: AsyncIterator[Any], context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInputError("the first message of an upload is its header")
            header = first.header

            async def chunks() -> AsyncIterator[bytes]:
                async for message in request_iterator:
                    if message.WhichOneof("part") != "chunk":
                        raise InvalidInputError("only chunks may follow the header")
                    yield message.chunk

            stored = await self._files().upload(
                parse_chat_id(header.chat_id), header.path, chunks(), caller=self._caller(context)
            )
            return stored_message(stored)

        return await self._guard.run(context, run)

    async def DownloadFile(self, request: Any, context: Ctx) -> None:  # noqa: N802
        async def run() -> None:
            download = await self._files().download(
                parse_chat_id(request.chat_id), request.path, self._caller(context)
            )
            await context.write(pb.DownloadFileResponse(info=stored_message(download.stored)))
            async for chunk in download.chunks():
                await context.write(pb.DownloadFileResponse(chunk=chunk))

        await self._guard.run(context, run)

    async def ListFiles(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            listing = await self._files().list(
                parse_chat_id(request.chat_id), request.prefix, self._caller(context)
            )
            files = [
                pb.WorkspaceFile(
                    path=entry.path, size=entry.size, modified_at=timestamp(entry.modified_at)
                )
                for entry in listing.entries
            ]
            return pb.ListFilesResponse(files=files, truncated=listing.truncated)

        return await self._guard.run(context, run)

    async def DeleteFile(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            await self._files().delete(
                parse_chat_id(request.chat_id), request.path, self._caller(context)
            )
            return pb.DeleteFileResponse()

        return await self._guard.run(context, run)
