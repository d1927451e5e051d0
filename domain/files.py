"""Files of a chat's workspace (the sandbox's /workspace)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.errors import FilePathRefusedError

# The chunk size of file transfers inside the service (spool to agent): large files never sit
# whole in the service's memory. The agent's data frames carry at most this much.
FILE_CHUNK_BYTES = 1024 * 1024
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class StoredFile:
    """A file as written or read: its path under the workspace, size and content digest."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class WorkspaceEntry:
    path: str
    size: int
    modified_at: datetime


@dataclass(frozen=True)
class WorkspaceListing:
    entries: tuple[WorkspaceEntry, ...]
    truncated: bool


def check_workspace_path(path: str) -> str:
    """The path, when it is a plausible relative path under the workspace; raise otherwise.

    Only a first filter: the agent resolves the path inside the sandbox without following
    symlinks, which is what actually keeps files of user code's making from leading out.
    """
    if not path or len(path) > MAX_PATH_CHARS or "\x00" in path:
        raise FilePathRefusedError("the path is empty, too long or has a NUL character")
    if path.startswith("/"):
        raise FilePathRefusedError("the path must be relative to the workspace")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise FilePathRefusedError("the path has an empty, '.' or '..' component")
    return path
