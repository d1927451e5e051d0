"""Kill a container's processes from the host, without waiting for the Docker engine.

dockerd stops containers at about 30/s whatever the parallelism (its kill call waits for the
exit); signalling the processes ourselves takes milliseconds. The processes are found through the
container's own cgroup, never by name:

- cgroup v2 (unified): write ``1`` to ``cgroup.kill`` (the kernel kills every member, no pid race);
- cgroup v1: freeze the container's freezer cgroup, read ``cgroup.procs``, SIGKILL each pid, thaw.
  A frozen task cannot exit, so none of those pids can be reused by another process meanwhile;
  the signals are delivered when the cgroup thaws.

The first container's cgroup is found from its main pid (``State.Pid``, an inspect) in
``/proc/<pid>/cgroup`` and must name the container's full id: a pid reused since the inspect
would not. That path is also where the engine puts every other container (the same parent, the
full id in the same place), so HostKiller learns it once and finds the next containers' cgroups
from their ids alone, without asking the engine; each pid it signals is checked to be in that
cgroup. Anything else (gVisor's runsc, whose sandbox runs outside what the engine reports; no
permission; a freeze that does not settle) returns False and the caller uses the engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
_FREEZE_TIMEOUT_S = 2.0
# What the engine calls a container: 64 hex digits (nothing that could climb out of a directory).
_FULL_ID = re.compile(r"[0-9a-f]{64}")


def cgroup_of(pid: int, container_id: str, root: Path = CGROUP_ROOT) -> tuple[str, Path] | None:
    """(``"v1"``, freezer dir) or (``"v2"``, unified dir) of ``pid``'s cgroup, if it is the
    container's own (its path names the full container id)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if container_id not in path:
            continue
        if "freezer" in controllers.split(","):
            freezer = root / "freezer" / path.lstrip("/")
            if (freezer / "freezer.state").exists():
                return ("v1", freezer)
        elif controllers == "" and (root / "cgroup.controllers").exists():
            unified = root / path.lstrip("/")
    if unified is not None and (unified / "cgroup.kill").exists():
        return ("v2", unified)
    return None


def kill_container_processes(info: dict[str, Any], root: Path = CGROUP_ROOT) -> bool:
    """SIGKILL every process of the container ``info`` (an inspect result); False when this
    cannot be done safely here and the engine must do it (nothing was signalled then, or the
    container was not running)."""
    found = _cgroup_of_inspected(info, root)
    return found is not None and _kill_members(*found, str(info["Id"]))


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where the engine puts a container's cgroup: ``prefix + full id + suffix``."""

    version: str
    prefix: str
    suffix: str

    @classmethod
    def learn(cls, version: str, directory: Path, container_id: str) -> CgroupLayout | None:
        """The layout of ``directory`` (``container_id``'s cgroup), if the id is in its last
        component exactly once (``docker/<id>``, ``docker-<id>.scope``)."""
        path = str(directory)
        if not _FULL_ID.fullmatch(container_id) or path.count(container_id) != 1:
            return None
        if container_id not in directory.name:
            return None
        prefix, suffix = path.split(container_id)
        return cls(version, prefix, suffix)

    def directory_of(self, container_id: str) -> Path | None:
        """The container's cgroup directory, if it exists (a running container)."""
        if not _FULL_ID.fullmatch(container_id):
            return None
        directory = Path(self.prefix + container_id + self.suffix)
        control = "freezer.state" if self.version == "v1" else "cgroup.kill"
        return directory if (directory / control).exists() else None


class HostKiller:
    """Kills containers of runc through their cgroups; the layout is learned from the first one.

    ``kill_by_id`` needs no inspect once a container has been killed with ``kill_inspected``;
    until then, or when the id's cgroup is not there (an exited container, another layout), it
    returns False without signalling anything and the caller inspects.
    """

    def __init__(self, root: Path = CGROUP_ROOT, enabled: bool = True) -> None:
        self._root = root
        self._enabled = enabled
        self._layout: CgroupLayout | None = None
        self._learning = threading.Lock()

    def kill_by_id(self, container_id: str) -> bool:
        layout = self._layout
        if not self._enabled or layout is None:
            return False
        directory = layout.directory_of(container_id)
        return directory is not None and _kill_members(layout.version, directory, container_id)

    def kill_inspected(self, info: dict[str, Any]) -> bool:
        """kill_container_processes, learning the layout from the first container killed."""
        if not self._enabled:
            return False
        found = _cgroup_of_inspected(info, self._root)
        if found is None or not _kill_members(*found, str(info["Id"])):
            return False
        if self._layout is None:
            with self._learning:
                self._layout = self._layout or CgroupLayout.learn(*found, str(info["Id"]))
        return True


def _cgroup_of_inspected(info: dict[str, Any], root: Path) -> tuple[str, Path] | None:
    state = info.get("State") or {}
    pid = int(state.get("Pid") or 0)
    if not state.get("Running") or pid <= 0:
        return None
    if (info.get("HostConfig") or {}).get("Runtime", "runc") != "runc":
        return None
    return cgroup_of(pid, str(info.get("Id", "")), root)


def _kill_members(version: str, directory: Path, container_id: str) -> bool:
    try:
        if version == "v2":
            (directory / "cgroup.kill").write_text("1")
            return True
        return _freeze_and_kill(directory, container_id)
    except OSError:
        return False


def _freeze_and_kill(freezer: Path, container_id: str) -> bool:
    state_file = freezer / "freezer.state"
    state_file.write_text("FROZEN")
    try:
        deadline = time.monotonic() + _FREEZE_TIMEOUT_S
        while state_file.read_text().strip() != "FROZEN":
            if time.monotonic() > deadline:
                return False  # thawed below; the engine stops it instead
            time.sleep(0.001)
        for pid in (freezer / "cgroup.procs").read_text().split():
            if _in_container_freezer(int(pid), freezer, container_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        return True
    finally:
        state_file.write_text("THAWED")


def _in_container_freezer(pid: int, freezer: Path, container_id: str) -> bool:
    """Whether ``pid``'s own freezer cgroup is ``freezer`` and names the container. The kernel
    listed it there and a frozen task cannot exit, so this holds; checked all the same, since
    the directory may have been derived from the id rather than read from the container's pid."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return container_id in path and str(freezer).endswith(path)
    return False
