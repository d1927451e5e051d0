"""EnvironmentRuntime on QEMU: microVMs from an environment's disk, and packages added to a
running microVM without losing its state (the flow of adapter.environment.live_install).

A VM shares no directory with the host, so the hand-off goes through the agent channel itself:
the files the host fetched (wheels only; npm packages with their scripts ignored, as for Docker)
go, in chunks of ``PUSH_CHUNK_BYTES``, into a fresh directory under ``/workspace/.sandboxd`` by
small writes the chat's python interpreter runs (inside a function, so the chat's variables are
untouched); after the install the directory is removed. No package code runs on the host; the
VM has no network.
"""

from __future__ import annotations

import base64
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapter.environment.live_install import LiveInstallEnvironmentRuntime
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.environment import BuiltEnvironment
from domain.errors import EnvironmentBuildError
from domain.execution import ExecutionRequest, Language

# Raw bytes per write; base64 makes a frame of about 4/3 of it, well under the agent's limit.
PUSH_CHUNK_BYTES = 2 * 1024 * 1024
STAGING_ROOT = "/workspace/.sandboxd"

_WRITE = """
def __sandboxd_put(path, data, first):
    import base64, os
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if first else "ab") as out:
        out.write(base64.b64decode(data))
__sandboxd_put({path!r}, {data!r}, {first!r})
del __sandboxd_put
"""

_REMOVE = """
def __sandboxd_remove(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)
__sandboxd_remove({path!r})
del __sandboxd_remove
"""


class QemuEnvironmentRuntime(LiveInstallEnvironmentRuntime):
    """EnvironmentRuntime port over a QemuSandboxRuntime; see the module docstring."""

    _runtime: QemuSandboxRuntime
    INSTALL_TIMEOUT_S = 600.0  # TCG: pip runs several times slower than in a container

    def _start_options(self, environment: BuiltEnvironment) -> dict[str, str]:
        return {"environment_key": environment.key}

    @contextmanager
    def _handoff(self, container_id: str) -> Iterator[tuple[Path, str]]:
        guest_dir = f"{STAGING_ROOT}/packages-{uuid.uuid4().hex}"
        with tempfile.TemporaryDirectory(prefix="sandboxd-pkgs-") as staging:
            try:
                yield Path(staging), guest_dir
            finally:
                self._python(container_id, _REMOVE.format(path=guest_dir))

    def _hand_in(self, container_id: str, staging: Path, guest_dir: str) -> None:
        for path in sorted(staging.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            target = f"{guest_dir}/{path.relative_to(staging).as_posix()}"
            with path.open("rb") as source:
                first = True
                while True:
                    chunk = source.read(PUSH_CHUNK_BYTES)
                    data = base64.b64encode(chunk).decode()
                    self._python(container_id, _WRITE.format(path=target, data=data, first=first))
                    first = False
                    if len(chunk) < PUSH_CHUNK_BYTES:
                        break

    def _python(self, container_id: str, code: str) -> None:
        result = self._runtime.execute(
            container_id, ExecutionRequest(code, Language.PYTHON, self._install_timeout_s)
        )
        if result.timed_out or result.exit_code != 0:
            message = (result.stderr or result.stdout).strip()[-500:]
            raise EnvironmentBuildError(f"handing packages into the microVM failed: {message}")
