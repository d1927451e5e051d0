"""EnvironmentRuntime: sandboxes from an environment, and packages added to a running sandbox
without losing its state. The flow is shared by the runtimes (``LiveInstallEnvironmentRuntime``;
QEMU's hand-off is adapter.qemu.environment_runtime); this module's Docker one is below.

Adding packages to a running sandbox (``install_packages``):
1. the host fetches built artifacts only, as the L2 builder does (wheels; npm packages unpacked
   with their scripts ignored), into a fresh directory inside the sandbox's agent channel on the
   host. The sandbox sees that channel read-only at ``/run/sandboxd`` (sealed at start), so the
   host hands files in without a new mount or a copy through the agent;
2. the chat's own interpreter runs a short installer through the agent, like any code: for
   Python ``pip install --no-index --find-links <dir> --target /workspace/.sandboxd/site-packages``
   (no network, nothing fetched by the guest), then that directory goes in front of ``sys.path``
   and on PYTHONPATH; for JavaScript the unpacked node_modules are copied to
   ``/workspace/.sandboxd/node_modules`` and put on NODE_PATH. Variables survive: it is the same
   interpreter process;
3. the handed-in directory is removed.
Installed packages live in the workspace tmpfs, so they count against its size.
"""

from __future__ import annotations

import json
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from adapter.docker.image import AGENT_SOCKET_DIR
from adapter.docker.runtime import DockerSandboxRuntime
from adapter.environment.host_fetch import HostFetchConfig, download_wheels, stage_npm_packages
from domain.environment import BuiltEnvironment, Environment
from domain.errors import EnvironmentBuildError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult, Language
from domain.sandbox import SandboxSession
from usecase.ports import Logger

SITE_DIR = "/workspace/.sandboxd/site-packages"
NODE_DIR = "/workspace/.sandboxd/node_modules"

_PYTHON_INSTALLER = """
def __sandboxd_install(wheels, packages, target):
    import importlib, os, subprocess, sys
    scratch = os.path.join(os.path.dirname(target), "tmp")
    os.makedirs(scratch, exist_ok=True)
    env = dict(os.environ, TMPDIR=scratch, PIP_NO_INPUT="1")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
         "--target", target, "--upgrade", "--no-cache-dir", "--disable-pip-version-check",
         "--progress-bar", "off", "--", *packages],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:])
        raise SystemExit(1)
    if target not in sys.path:
        sys.path.insert(0, target)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if target not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([target, *paths])
    importlib.invalidate_caches()
__sandboxd_install({wheels!r}, {packages!r}, {target!r})
del __sandboxd_install
"""

_NODE_INSTALLER = """
(() => {
  const req = typeof require === 'function' ? require : process.mainModule.require;
  const fs = req('fs');
  const Module = req('module');
  fs.mkdirSync(%(target)s, { recursive: true });
  fs.cpSync(%(source)s, %(target)s, { recursive: true, force: true });
  const paths = (process.env.NODE_PATH || '').split(':').filter(Boolean);
  if (!paths.includes(%(target)s)) process.env.NODE_PATH = [%(target)s, ...paths].join(':');
  Module._initPaths();
})();
"""


class LiveInstallEnvironmentRuntime(ABC):
    """EnvironmentRuntime port over a runtime whose agent runs the installer. A subclass says
    how a sandbox starts from an environment (options of its runtime's ``create``) and how the
    fetched files reach the sandbox."""

    INSTALL_TIMEOUT_S = 300.0

    def __init__(
        self,
        runtime: Any,  # the subclass's runtime (it narrows ``_runtime``)
        fetch: HostFetchConfig,
        logger: Logger,
        install_timeout_s: float | None = None,
    ) -> None:
        self._runtime = runtime
        self._fetch = fetch
        self._logger = logger
        self._install_timeout_s = install_timeout_s or self.INSTALL_TIMEOUT_S

    def create_from(
        self,
        environment: BuiltEnvironment,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
    ) -> SandboxSession:
        session: SandboxSession = self._runtime.create(
            session_id=session_id,
            chat_id=chat_id,
            created_at=created_at,
            expires_at=expires_at,
            **self._start_options(environment),
        )
        return session

    def install_packages(self, container_id: str, environment: Environment) -> None:
        if environment.is_base:
            return
        with self._handoff(container_id) as (staging, guest_dir):
            code = installer_code(self._fetch, environment, staging, guest_dir)
            self._hand_in(container_id, staging, guest_dir)
            result = self._runtime.execute(
                container_id,
                ExecutionRequest(code, environment.language, self._install_timeout_s),
            )
        check_installed(result, container_id, environment, self._logger)

    @abstractmethod
    def _start_options(self, environment: BuiltEnvironment) -> dict[str, str]:
        """The runtime's create() options that start a sandbox from the environment."""

    @abstractmethod
    def _handoff(self, container_id: str) -> AbstractContextManager[tuple[Path, str]]:
        """A host directory to fetch into and where the sandbox will see it; both gone after."""

    @abstractmethod
    def _hand_in(self, container_id: str, staging: Path, guest_dir: str) -> None:
        """Make the fetched files in ``staging`` visible in the sandbox at ``guest_dir``."""


class DockerEnvironmentRuntime(LiveInstallEnvironmentRuntime):
    """The sandbox's agent channel on the host is the hand-off (see the module docstring)."""

    _runtime: DockerSandboxRuntime

    def _start_options(self, environment: BuiltEnvironment) -> dict[str, str]:
        return {"image": environment.reference}

    @contextmanager
    def _handoff(self, container_id: str) -> Iterator[tuple[Path, str]]:
        channel = self._runtime.channel_dir(container_id)
        if channel is None:
            raise SandboxGoneError(f"container {container_id[:12]} is gone or not running")
        handoff = channel / f"packages-{uuid.uuid4().hex}"
        handoff.mkdir(mode=0o755)
        try:
            yield handoff, f"{AGENT_SOCKET_DIR}/{handoff.name}"
        finally:
            shutil.rmtree(handoff, ignore_errors=True)

    def _hand_in(self, container_id: str, staging: Path, guest_dir: str) -> None:
        _readable(staging)


def installer_code(
    fetch: HostFetchConfig, environment: Environment, staging: Path, guest_dir: str
) -> str:
    """Fetch the environment's artifacts into ``staging`` on the host (wheels only; npm packages
    with their scripts ignored) and return the code that installs them from ``guest_dir``, where
    the sandbox sees ``staging``, into the running interpreter of the environment's language."""
    if environment.language is Language.PYTHON:
        download_wheels(fetch, environment.packages, staging, _quiet)
        return _PYTHON_INSTALLER.format(
            wheels=guest_dir, packages=list(environment.packages), target=SITE_DIR
        )
    if environment.language is Language.JAVASCRIPT:
        modules = stage_npm_packages(fetch, environment.packages, staging, _quiet)
        source = f"{guest_dir}/{modules.relative_to(staging)}"
        return _NODE_INSTALLER % {"source": json.dumps(source), "target": json.dumps(NODE_DIR)}
    raise EnvironmentBuildError(f"no package support for {environment.language}")


def check_installed(
    result: ExecutionResult, container_id: str, environment: Environment, logger: Logger
) -> None:
    """An installer run that timed out or failed is an EnvironmentBuildError with its output."""
    if result.timed_out or result.exit_code != 0:
        message = (result.stderr or result.stdout).strip()[-1500:]
        logger.error(
            "sandbox_packages_install_failed",
            {"container_id": container_id, "error": message[-300:]},
        )
        raise EnvironmentBuildError(
            f"installing {' '.join(environment.packages)} into the sandbox failed: {message}"
        )


def _readable(root: Path) -> None:
    """The sandbox user reads what the host (root) fetched."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)


def _quiet(_message: str) -> None:
    pass
