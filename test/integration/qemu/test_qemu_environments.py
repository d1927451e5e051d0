"""L2 for QEMU on real VMs: an environment's disk is built in a VM with no network from wheels
the host fetched, sandboxes boot from it (restored from its own snapshot), a disk whose backing
file is wrong is dropped and rebuilt, a failed build leaves nothing, LRU eviction past the
budget."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from adapter.qemu.environment import QemuEnvironmentConfig, QemuEnvironmentStore
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.environment import Environment
from domain.errors import EnvironmentBuildError
from domain.execution import ExecutionRequest, Language
from testkit.fakes import FakeLogger
from testkit.qemu import RuntimeFactory

pytestmark = pytest.mark.qemu

TABULATE = Environment(Language.PYTHON, ("tabulate==0.9.0",))
IMPORT_TABULATE = "import tabulate; print(tabulate.__version__, tabulate.__file__)"


def _run_in_new_vm(runtime: QemuSandboxRuntime, key: str | None, code: str) -> tuple[int, str]:
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid4(),
        chat_id=uuid4(),
        created_at=now,
        expires_at=now + timedelta(hours=1),
        environment_key=key,
    )
    result = runtime.execute(session.container_id, ExecutionRequest(code=code, timeout_s=120))
    runtime.stop(session.container_id)
    return result.exit_code or 0, result.stdout + result.stderr


def _store(
    runtime: QemuSandboxRuntime, logger: FakeLogger, **options: object
) -> QemuEnvironmentStore:
    config = QemuEnvironmentConfig(service_version="0.1.0", **options)  # type: ignore[arg-type]
    return QemuEnvironmentStore(runtime, config, logger)


def test_build_boot_restore_and_rebuild_after_a_wrong_backing_file(
    make_runtime: RuntimeFactory,
) -> None:
    runtime, logger = make_runtime(preload=())
    store = _store(runtime, logger)

    built = store.ensure(TABULATE)

    assert built.key == store.key_for(TABULATE)
    disk = Path(built.reference)
    assert disk.is_file() and built.size_bytes > 0
    code, output = _run_in_new_vm(runtime, built.key, IMPORT_TABULATE)
    assert code == 0 and output.startswith("0.9.0 /usr/local/lib/python3"), output
    code, output = _run_in_new_vm(runtime, built.key, IMPORT_TABULATE)
    assert code == 0 and output.startswith("0.9.0"), output
    # The snapshot was taken at build time: both chats restored from it.
    started = logger.named("qemu_vm_started")
    assert [(a["mode"], a["environment"]) for a in started] == [("restore", built.key)] * 2
    assert store.find(built.key) == built

    # A disk whose header names another backing file would boot other files: rebuilt.
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-b", "/nonexistent/base.qcow2", "-F", "qcow2", str(disk)],
        check=True,
    )
    assert store.find(built.key) is None
    assert logger.named("environment_invalid")
    assert not disk.exists()
    rebuilt = store.ensure(TABULATE)
    assert len(logger.named("environment_built")) == 2
    code, output = _run_in_new_vm(runtime, rebuilt.key, IMPORT_TABULATE)
    assert code == 0 and output.startswith("0.9.0"), output
    assert logger.named("qemu_vm_started")[-1]["mode"] == "restore"


def test_failed_build_leaves_no_entry_and_lru_evicts_past_the_budget(
    make_runtime: RuntimeFactory,
) -> None:
    runtime, logger = make_runtime(preload=())
    # A budget of 0: every build evicts all the others.
    store = _store(runtime, logger, max_total_mb=0, snapshot=False)
    missing = Environment(Language.PYTHON, ("sandboxd-no-such-package-xyz==1.0",))

    with pytest.raises(EnvironmentBuildError):
        store.ensure(missing)
    assert store.list_keys() == []
    assert not list(runtime.environment_disks.staging_root().iterdir())

    first = store.ensure(TABULATE)
    second = store.ensure(Environment(Language.PYTHON, ("iniconfig==2.0.0",)))
    assert store.list_keys() == [second.key]
    assert [a["key"] for a in logger.named("environment_evicted")] == [first.key]
    version = "import iniconfig, importlib.metadata as m; print(m.version('iniconfig'))"
    code, output = _run_in_new_vm(runtime, second.key, version)
    assert code == 0 and output.strip() == "2.0.0", output
    code, output = _run_in_new_vm(runtime, None, "import iniconfig")
    assert code != 0 and "ModuleNotFoundError" in output, "the base image has no iniconfig"
