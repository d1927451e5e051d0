"""The agent-ready VM behind the memory snapshot has numpy, pandas and pyplot imported already
(QemuSandboxConfig.preload), outside the user's namespace; matplotlib's font cache comes prebuilt
from the image and nothing lands in the user's /workspace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.execution import ExecutionRequest
from testkit.qemu import RuntimeFactory

pytestmark = pytest.mark.qemu

CHECK = """
import sys
preloaded = [m for m in ("numpy", "pandas", "matplotlib.pyplot") if m in sys.modules]
leaked = [m for m in ("numpy", "pandas", "plt", "matplotlib", "importlib") if m in globals()]
print(preloaded, leaked)
"""

PLOT = """
import filecmp, os, matplotlib, matplotlib.pyplot as plt
plt.plot([1, 2]); plt.savefig('/workspace/a.png')
cache = matplotlib.get_cachedir()
fontlist = [n for n in os.listdir(cache) if n.startswith('fontlist')][0]
print(sorted(os.listdir('/workspace')), cache,
      filecmp.cmp(os.path.join(cache, fontlist), '/opt/sandboxd/matplotlib/' + fontlist, False))
"""


def test_snapshot_has_the_modules_preloaded_and_the_workspace_stays_clean(
    make_runtime: RuntimeFactory,
) -> None:
    runtime, logger = make_runtime(preload=("numpy", "pandas", "matplotlib.pyplot"))
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=now, expires_at=now + timedelta(hours=1)
    )
    assert logger.named("qemu_vm_started")[0]["mode"] == "restore"

    first = runtime.execute(session.container_id, ExecutionRequest(code=CHECK, timeout_s=120))
    plot = runtime.execute(session.container_id, ExecutionRequest(code=PLOT, timeout_s=120))

    assert first.stdout.strip() == "['numpy', 'pandas', 'matplotlib.pyplot'] []", first
    # The cache is the prebuilt one (not rebuilt by a font scan), and outside /workspace.
    assert plot.stdout.strip() == "['a.png'] /tmp/.sandboxd/matplotlib True", plot
