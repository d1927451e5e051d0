"""HTTP routes of a chat's workspace files: PUT (streamed body), GET (streamed), list, DELETE."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from domain.files import StoredFile
from domain.sandbox import parse_chat_id
from entrypoint.application.files_api import FilesApi
from entrypoint.http.routes import _ERRORS, CallerDep, require_api_key
from entrypoint.http.schemas import ChatIdPath

files = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
_FILE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such file, or the chat has no sandbox (file_not_found, ...)."},
    413: {"description": "Past SANDBOXD_MAX_FILE_BYTES (code: file_too_large)."},
    422: {"description": "Absolute path, '..', or a symlink leading out (code: path_refused)."},
    507: {"description": "The sandbox's workspace is full (code: workspace_full)."},
}


def _files_api(request: Request) -> FilesApi:
    api: FilesApi = request.app.state.files_api
    return api


def _stored_json(stored: StoredFile) -> dict[str, Any]:
    return {"path": stored.path, "size": stored.size, "sha256": stored.sha256}


@files.put(
    "/chats/{chat_id}/files/{path:path}",
    summary="Upload a file into the chat's workspace (creates the sandbox if needed)",
    description="The raw body is the file's content; it is written atomically.",
    responses=_FILE_ERRORS,
)
async def upload_file(
    chat_id: ChatIdPath, path: str, request: Request, caller: CallerDep
) -> Response:
    parsed = parse_chat_id(chat_id)
    length = request.headers.get("content-length", "")
    declared = int(length) if length.isdigit() else None
    stored = await _files_api(request).upload(parsed, path, request.stream(), declared, caller)
    return JSONResponse(_stored_json(stored))


@files.get(
    "/chats/{chat_id}/files/{path:path}",
    summary="Download a file of the chat's workspace",
    description="Streamed; the X-Sandboxd-Sha256 header holds the content's SHA-256.",
    responses=_FILE_ERRORS,
    response_class=StreamingResponse,
)
async def download_file(
    chat_id: ChatIdPath, path: str, request: Request, caller: CallerDep
) -> Response:
    parsed = parse_chat_id(chat_id)
    download = await _files_api(request).download(parsed, path, caller)
    return StreamingResponse(
        download.chunks(),
        media_type=download.content_type,
        headers={
            "Content-Length": str(download.stored.size),
            "X-Sandboxd-Sha256": download.stored.sha256,
        },
    )


@files.get(
    "/chats/{chat_id}/files",
    summary="List the files of the chat's workspace",
    description="Regular files under the prefix (symlinks are not followed), at most 5000.",
    responses=_FILE_ERRORS,
)
async def list_files(
    chat_id: ChatIdPath, request: Request, caller: CallerDep, prefix: Annotated[str, Query()] = ""
) -> Response:
    listing = await _files_api(request).list(parse_chat_id(chat_id), prefix, caller)
    return JSONResponse(
        {
            "files": [
                {
                    "path": entry.path,
                    "size": entry.size,
                    "modified_at": entry.modified_at.isoformat(),
                }
                for entry in listing.entries
            ],
            "truncated": listing.truncated,
        }
    )


@files.delete(
    "/chats/{chat_id}/files/{path:path}",
    summary="Delete a file of the chat's workspace",
    status_code=204,
    responses=_FILE_ERRORS,
)
async def delete_file(
    chat_id: ChatIdPath, path: str, request: Request, caller: CallerDep
) -> Response:
    await _files_api(request).delete(parse_chat_id(chat_id), path, caller)
    return Response(status_code=204)
