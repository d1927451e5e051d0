"""With default settings the VM behind the memory snapshot has numpy, pandas and pyplot imported
already (SANDBOXD_QEMU_PRELOAD), outside the user's namespace: a new chat's first
``import pandas, matplotlib.pyplot`` answers within the default timeout under TCG, where importing
them takes 20-40 s. matplotlib's font cache comes prebuilt from the image and nothing lands in the
user's /workspace."""

from __future__ import annotations

import uuid

import pytest
from sandboxd_client import SandboxdClient

from domain.execution import ExecutionRequest
from testkit.qemu import RuntimeFactory, create_vm
from testkit.service import API_KEY, ServiceProcess

pytestmark = pytest.mark.qemu

PRELOADED = ["numpy", "pandas", "matplotlib.pyplot"]

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

# What a chat's first message does; it also says whether the modules were there before it.
FIRST_MESSAGE = """
import sys
warm = [m for m in ("numpy", "pandas", "matplotlib.pyplot") if m in sys.modules]
import pandas, matplotlib.pyplot as plt
print(warm, pandas.DataFrame({'a': [1, 2]}).shape)
"""


def test_snapshot_has_the_modules_preloaded_and_the_workspace_stays_clean(
    make_runtime: RuntimeFactory,
) -> None:
    runtime, logger = make_runtime(shared=True)
    vm = create_vm(runtime).container_id
    assert logger.named("qemu_vm_started")[0]["mode"] == "restore"

    first = runtime.execute(vm, ExecutionRequest(code=CHECK, timeout_s=120))
    plot = runtime.execute(vm, ExecutionRequest(code=PLOT, timeout_s=120))

    assert first.stdout.strip() == f"{PRELOADED} []", first
    # The cache is the prebuilt one (not rebuilt by a font scan), and outside /workspace.
    assert plot.stdout.strip() == "['a.png'] /tmp/.sandboxd/matplotlib True", plot


def test_a_new_chat_with_default_settings_imports_pandas_and_pyplot_within_the_default_timeout(
    qemu_service: ServiceProcess,
) -> None:
    # No timeout on the request: the service's default (SANDBOXD_DEFAULT_TIMEOUT_S, 30 s) holds.
    with SandboxdClient(qemu_service.http_url, api_key=API_KEY, timeout_s=300) as client:
        result = client.execute(uuid.uuid4(), FIRST_MESSAGE)

    assert (result.timed_out, result.exit_code, result.stderr) == (False, 0, ""), result
    assert result.stdout == f"{PRELOADED} (2, 1)\n"
