"""Starts one microVM like the service would, prints its id, then waits to be killed (-9).

Run by test_reconcile_after_service_killed: the test kills this process the hard way, so no
stop() ever runs, and checks that a fresh runtime finds and removes the VM."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from adapter.logging import ServiceLogger, configure_logging
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime


def main() -> None:
    data_dir, image_dir, instance_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    configure_logging("warning", "json", sys.stderr)
    config = QemuSandboxConfig(data_dir=data_dir, instance_id=instance_id, image_dir=image_dir)
    runtime = QemuSandboxRuntime(config, ServiceLogger())
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=now, expires_at=now + timedelta(hours=1)
    )
    print(session.container_id, flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
