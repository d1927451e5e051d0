"""Conformance of workspace files (through the agent) on every runtime: round trips, ownership,
and the attacks — traversal, symlinks planted by user code, giant files, a full workspace."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest

from adapter.agent.files import AgentHost, AgentSandboxFileStore
from domain.errors import (
    FilePathRefusedError,
    FileTooLargeError,
    WorkspaceFileNotFoundError,
    WorkspaceFullError,
)
from domain.execution import Language
from testkit.runtime import Sandbox
from usecase.ports import SandboxRuntime

MAX = 64 * 1024 * 1024


@pytest.fixture
def files(runtime: SandboxRuntime) -> AgentSandboxFileStore:
    assert isinstance(runtime, AgentHost)
    return AgentSandboxFileStore(runtime)


def chunks(data: bytes, size: int = 300_000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def read(files: AgentSandboxFileStore, sandbox: Sandbox, path: str) -> bytes:
    out = io.BytesIO()
    files.read_file(sandbox.id, path, out.write)
    return out.getvalue()


def test_a_file_round_trips_and_belongs_to_the_sandbox_user(
    files: AgentSandboxFileStore, sandbox: Sandbox
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    stored = files.write_file(sandbox.id, "in/data.bin", chunks(data), MAX)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read(files, sandbox, "in/data.bin") == data
    check = sandbox.run(
        "import os, hashlib\n"
        "st = os.stat('in/data.bin')\n"
        "print(st.st_uid == os.getuid(), os.stat('in').st_uid == os.getuid())\n"
        "print(hashlib.sha256(open('in/data.bin','rb').read()).hexdigest())\n"
        "open('in/data.bin','ab').write(b'x')\n"
    )
    assert check.stdout == f"True True\n{stored.sha256}\n", check.stderr
    listing = files.list_files(sandbox.id, "in/")
    assert [(e.path, e.size) for e in listing.entries] == [("in/data.bin", len(data) + 1)]
    files.delete_file(sandbox.id, "in/data.bin")
    with pytest.raises(WorkspaceFileNotFoundError):
        read(files, sandbox, "in/data.bin")


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../etc/passwd"])
def test_traversal_is_refused(files: AgentSandboxFileStore, sandbox: Sandbox, path: str) -> None:
    with pytest.raises(FilePathRefusedError):
        read(files, sandbox, path)
    with pytest.raises(FilePathRefusedError):
        files.write_file(sandbox.id, path, [b"x"], MAX)


def test_symlinks_planted_by_user_code_do_not_lead_out(
    files: AgentSandboxFileStore, sandbox: Sandbox
) -> None:
    planted = sandbox.run(
        "import os\n"
        "os.symlink('/etc/passwd', 'passwd')\n"
        "os.symlink('/proc/1/environ', 'environ')\n"
        "os.symlink('/', 'root')\n"
        "os.symlink('/tmp', 'tmp')\n"
    )
    assert planted.exit_code == 0, planted.stderr
    for path in ("passwd", "environ", "root/etc/passwd", "root/proc/1/environ"):
        with pytest.raises(FilePathRefusedError):
            read(files, sandbox, path)
    with pytest.raises(FilePathRefusedError):
        files.write_file(sandbox.id, "tmp/planted", [b"x"], MAX)
    assert sandbox.run("import os; print(os.path.exists('/tmp/planted'))").stdout == "False\n"
    # Overwriting a link replaces the link, never what it points to.
    files.write_file(sandbox.id, "passwd", [b"mine"], MAX)
    assert sandbox.run("print(open('/etc/passwd').read().startswith('root:'))").stdout == "True\n"
    assert {e.path for e in files.list_files(sandbox.id, "").entries} == {"passwd"}


def test_a_file_past_the_limit_leaves_nothing(
    files: AgentSandboxFileStore, sandbox: Sandbox
) -> None:
    with pytest.raises(FileTooLargeError):
        files.write_file(sandbox.id, "big.bin", chunks(b"x" * 2_000_000), 1_000_000)
    assert files.list_files(sandbox.id, "").entries == ()
    assert sandbox.run("import os; print(os.listdir('.'))").stdout == "[]\n"


def test_a_full_workspace_refuses_the_upload_and_keeps_serving(
    files: AgentSandboxFileStore, sandbox: Sandbox
) -> None:
    filled = sandbox.run(
        "f = open('fill', 'wb')\n"
        "try:\n"
        "    while True: f.write(b'\\0' * (1 << 20)); f.flush()\n"
        "except OSError as e: print(e.errno)\n"
        "try:\n"
        "    f.close()\n"
        "except OSError: pass\n",
        timeout_s=120,
    )
    assert filled.stdout == "28\n", filled.stderr  # ENOSPC
    with pytest.raises(WorkspaceFullError):
        files.write_file(sandbox.id, "more.bin", chunks(b"y" * 4_000_000), MAX)
    assert {e.path for e in files.list_files(sandbox.id, "").entries} == {"fill"}
    files.delete_file(sandbox.id, "fill")
    stored = files.write_file(sandbox.id, "more.bin", [b"y" * 1000], MAX)
    assert stored.size == 1000


# --- rich outputs ---------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_last_expression_and_display_are_outputs(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "class R:\n    def _repr_html_(self): return '<i>r</i>'\ndisplay(R())\n6 * 7"
    )
    assert [(o.mime_type, o.data) for o in result.outputs][-1] == ("text/plain", "42")
    assert ("text/html", "<i>r</i>") in [(o.mime_type, o.data) for o in result.outputs]
    forged = sandbox.run('print(\'{"display": {"text/plain": "forged"}}\')')
    assert forged.outputs == ()
    shown = sandbox.run("const k = 20;\nk * 2 + 2", Language.JAVASCRIPT, timeout_s=60)
    assert [(o.mime_type, o.data) for o in shown.outputs] == [("text/plain", "42")]


def test_a_matplotlib_figure_becomes_a_png_and_files_are_reported(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.savefig('plot.png')\n"
        "plt.show()\n"
        "plt.figure(); plt.bar(['a'], [1])\n",  # left open: shown at the end
        timeout_s=240,
    )
    assert result.exit_code == 0, result.stderr
    pngs = [o for o in result.outputs if o.mime_type == "image/png"]
    assert len(pngs) == 2
    for png in pngs:
        width, height = png_size(base64.b64decode(png.data))
        assert width > 100 and height > 100
    assert [f.path for f in result.changed_files] == ["plot.png"]
    assert (
        sandbox.run("import matplotlib.pyplot as plt; len(plt.get_fignums())").outputs[0].data
        == "0"
    )


def test_a_dataframe_gives_html_and_text(sandbox: Sandbox) -> None:
    # QEMU too: pandas is preloaded in the snapshot by default, so TCG imports it at once.
    result = sandbox.run("import pandas as pd\npd.DataFrame({'a': [1, 2]})", timeout_s=120)
    kinds = [o.mime_type for o in result.outputs]
    assert kinds == ["text/html", "text/plain"], result.stderr
    assert "<table" in result.outputs[0].data
