"""`sandboxd files put|get|ls|rm`: a chat's workspace files, through the WorkspaceFiles use case
(the same path as the API: the chat's lock, the agent, the size limit)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from functools import partial
from typing import IO, Any

from domain.files import FILE_CHUNK_BYTES
from domain.sandbox import parse_chat_id
from entrypoint.container import Container


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") if path != "-" else _stdin() as f:
        while chunk := f.read(FILE_CHUNK_BYTES):
            yield chunk


def _stdin() -> IO[bytes]:
    return sys.stdin.buffer


def cmd_files(container: Container, args: argparse.Namespace) -> int:
    files = container.workspace_files()
    chat_id = parse_chat_id(args.chat_id)
    result: Any
    if args.files_command == "put":
        stored = files.upload(chat_id, args.path, partial(_chunks, args.source))
        result = {"path": stored.path, "size": stored.size, "sha256": stored.sha256}
    elif args.files_command == "get":
        out = sys.stdout.buffer if args.destination == "-" else open(args.destination, "wb")  # noqa: SIM115
        try:
            stored = files.download(chat_id, args.path, out.write)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        if args.destination == "-":
            return 0
        result = {"path": stored.path, "size": stored.size, "sha256": stored.sha256}
    elif args.files_command == "ls":
        listing = files.list(chat_id, args.prefix)
        result = {
            "files": [
                {"path": e.path, "size": e.size, "modified_at": e.modified_at.isoformat()}
                for e in listing.entries
            ],
            "truncated": listing.truncated,
        }
    else:
        files.delete(chat_id, args.path)
        result = {"deleted": args.path}
    print(json.dumps(result, indent=2))
    return 0


def add_files_parser(commands: Any) -> None:
    parser = commands.add_parser("files", help="a chat's workspace files")
    parser.add_argument("--chat-id", required=True, help="the chat's UUID")
    sub = parser.add_subparsers(dest="files_command", required=True)
    put = sub.add_parser("put", help="upload a local file (- for standard input)")
    put.add_argument("source")
    put.add_argument("path", help="path in the workspace")
    get = sub.add_parser("get", help="download a file (- for standard output)")
    get.add_argument("path", help="path in the workspace")
    get.add_argument("destination")
    ls = sub.add_parser("ls", help="list files")
    ls.add_argument("--prefix", default="")
    rm = sub.add_parser("rm", help="delete a file")
    rm.add_argument("path", help="path in the workspace")
    parser.set_defaults(handler=cmd_files)
