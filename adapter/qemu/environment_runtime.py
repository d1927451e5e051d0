"""EnvironmentRuntime on QEMU: microVMs from an environment's disk, and packages added to a
running microVM without losing its state.

A VM shares no directory with the host, so adding packages (``install_packages``) pushes what the
host fetched (wheels only; npm packages with their scripts ignored, as for Docker) through the
agent channel itself: the files go, in chunks of ``PUSH_CHUNK_BYTES``, into a fresh directory
under ``/workspace/.sandboxd`` by small writes the chat's python interpreter runs (inside a
function, so the chat's variables are untouched), then the same installer as on Docker
(adapter.environment.live_install) runs offline in the interpreter of the environment's language,
and the directory is removed. No package code runs on the host; the VM has no network.
"""

from __future__ import annotations

import base64
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from uuid import UUID

from adapter.environment.host_fetch import HostFetchConfig
from adapter.environment.live_install import check_installed, installer_code
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.environment import BuiltEnvironment, Environment
from domain.errors import EnvironmentBuildError
from domain.execution import ExecutionRequest, Language
from domain.sandbox import SandboxSession
from usecase.ports import Logger

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


class QemuEnvironmentRuntime:
    """EnvironmentRuntime port over a QemuSandboxRuntime; see the module docstring."""

    def __init__(
        self,
        runtime: QemuSandboxRuntime,
        fetch: HostFetchConfig,
        logger: Logger,
        install_timeout_s: float = 600.0,
    ) -> None:
        self._runtime = runtime
        self._fetch = fetch
        self._logger = logger
        self._install_timeout_s = install_timeout_s

    def create_from(
        self,
        environment: BuiltEnvironment,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
    ) -> SandboxSession:
        return self._runtime.create(
            session_id=session_id,
            chat_id=chat_id,
            created_at=created_at,
            expires_at=expires_at,
            environment_key=environment.key,
        )

    def install_packages(self, container_id: str, environment: Environment) -> None:
        if environment.is_base:
            return
        guest_dir = f"{STAGING_ROOT}/packages-{uuid.uuid4().hex}"
        with tempfile.TemporaryDirectory(prefix="sandboxd-pkgs-") as staging_name:
            staging = Path(staging_name)
            code = installer_code(self._fetch, environment, staging, guest_dir)
            try:
                self._push(container_id, staging, guest_dir)
                result = self._runtime.execute(
                    container_id,
                    ExecutionRequest(code, environment.language, self._install_timeout_s),
                )
            finally:
                self._python(container_id, _REMOVE.format(path=guest_dir))
        check_installed(result, container_id, environment, self._logger)

    def _push(self, container_id: str, staging: Path, guest_dir: str) -> None:
        for path in sorted(staging.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            target = f"{guest_dir}/{path.relative_to(staging).as_posix()}"
            with path.open("rb") as source:
                first = True
                while True:
                    chunk = source.read(PUSH_CHUNK_BYTES)
                    if not chunk and not first:
                        break
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
