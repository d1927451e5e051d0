"""Runtime conformance: what every SandboxRuntime must do, run against real engines.

Parametrized over testkit/runtime.py. Abuse cases each get a fresh sandbox
and check that it is contained with a clear result, and that the sandbox itself, a bystander
sandbox and the runtime keep working.
"""

from __future__ import annotations

import time

import pytest

from domain.errors import SandboxGoneError
from domain.execution import Language, OutputChunk, OutputStream
from domain.sandbox import SandboxStatus
from testkit.runtime import CONFORMANCE_MAX_OUTPUT_BYTES, Sandbox, create_sandbox
from usecase.ports import SandboxRuntime

CAP = CONFORMANCE_MAX_OUTPUT_BYTES


def assert_still_serving(sandbox: Sandbox, bystander: Sandbox) -> None:
    assert sandbox.run("print('still here')").stdout == "still here\n"
    assert bystander.run("print(bystander_state)").stdout == "intact\n"


# --- lifecycle ------------------------------------------------------------------------------


def test_create_returns_a_running_labelled_session(runtime: SandboxRuntime) -> None:
    sandbox = create_sandbox(runtime)
    try:
        session = sandbox.session
        assert session.status is SandboxStatus.RUNNING
        assert session.container_id
        assert runtime.is_alive(session.container_id)
        managed = {item.container_id: item for item in runtime.list_managed()}
        assert managed[session.container_id].session_id == session.session_id
        assert managed[session.container_id].chat_id == session.chat_id
        assert managed[session.container_id].running
    finally:
        runtime.stop(sandbox.id)


def test_stop_removes_it_and_is_idempotent(runtime: SandboxRuntime) -> None:
    sandbox = create_sandbox(runtime)
    runtime.stop(sandbox.id)
    assert not runtime.is_alive(sandbox.id)
    assert sandbox.id not in {item.container_id for item in runtime.list_managed()}
    runtime.stop(sandbox.id)
    runtime.stop("does-not-exist")
    with pytest.raises(SandboxGoneError):
        sandbox.run("print(1)")


def test_is_alive_is_false_for_unknown_objects(runtime: SandboxRuntime) -> None:
    assert not runtime.is_alive("does-not-exist")


# --- execution ------------------------------------------------------------------------------


def test_execute_python(sandbox: Sandbox) -> None:
    result = sandbox.run("print(1 + 1)")
    assert (result.stdout, result.stderr, result.exit_code) == ("2\n", "", 0)
    assert result.succeeded and not result.timed_out and not result.state_lost
    assert result.duration_s >= 0


def test_errors_are_results(sandbox: Sandbox) -> None:
    result = sandbox.run("raise ValueError('boom')")
    assert result.exit_code == 1
    assert "ValueError: boom" in result.stderr


def test_state_persists_between_executions(sandbox: Sandbox) -> None:
    sandbox.run("counter = 10\ndef bump():\n    global counter\n    counter += 1")
    sandbox.run("bump()")
    assert sandbox.run("print(counter)").stdout == "11\n"


def test_javascript_and_shell_keep_their_own_state(sandbox: Sandbox) -> None:
    assert sandbox.run("var n = 2; console.log(n * 21)", Language.JAVASCRIPT).stdout == "42\n"
    assert sandbox.run("console.log(n)", Language.JAVASCRIPT).stdout == "2\n"
    assert sandbox.run("X=abc; cd /tmp", Language.SHELL).exit_code == 0
    assert sandbox.run("echo $X $(pwd)", Language.SHELL).stdout == "abc /tmp\n"


def test_output_is_streamed(sandbox: Sandbox) -> None:
    chunks: list[OutputChunk] = []
    result = sandbox.run("for i in range(3): print(i)", on_output=chunks.append)
    assert "".join(c.data for c in chunks if c.stream is OutputStream.STDOUT) == result.stdout
    assert result.stdout == "0\n1\n2\n"


def test_sandbox_runs_as_an_unprivileged_user_in_workspace(sandbox: Sandbox) -> None:
    result = sandbox.run("import os; print(os.getuid(), os.getcwd())")
    uid, cwd = result.stdout.split()
    assert int(uid) != 0
    assert cwd == "/workspace"


def test_files_written_in_workspace_persist(sandbox: Sandbox) -> None:
    sandbox.run("open('/workspace/notes.txt', 'w').write('kept')")
    assert sandbox.run("cat /workspace/notes.txt", Language.SHELL).stdout == "kept"
    assert sandbox.run("print(open('notes.txt').read())").stdout == "kept\n"


def test_timeout_kills_the_code_and_reports_lost_state(sandbox: Sandbox) -> None:
    sandbox.run("before = 1")
    result = sandbox.run("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout_s=1)
    assert result.timed_out and result.state_lost
    assert result.exit_code is None and not result.succeeded
    assert result.stdout == "started\n"
    assert 1 <= result.duration_s < 10
    assert sandbox.run("print('before' in globals())").stdout == "False\n"


def test_output_past_the_cap_is_truncated(sandbox: Sandbox) -> None:
    result = sandbox.run(f"print('y' * {CAP * 4})")
    assert result.exit_code == 0
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout == "y" * CAP


# --- abuse ----------------------------------------------------------------------------------


def test_infinite_loop_is_stopped_by_the_timeout(sandbox: Sandbox, bystander: Sandbox) -> None:
    result = sandbox.run("while True:\n    pass", timeout_s=1)
    assert result.timed_out and result.exit_code is None
    assert_still_serving(sandbox, bystander)


def test_fork_bomb_is_contained(sandbox: Sandbox, bystander: Sandbox) -> None:
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = sandbox.run(bomb, timeout_s=3)
    assert result.timed_out and result.state_lost
    assert_still_serving(sandbox, bystander)


def test_background_fork_bomb_is_cleared(sandbox: Sandbox, bystander: Sandbox) -> None:
    # The classic bomb puts itself in the background, so its own execution may end at once;
    # by the next execution the sandbox's process limit is nearly exhausted and the agent kills
    # the interpreter session holding the processes, saying so.
    results = [sandbox.run("bomb() { bomb | bomb & }; bomb", Language.SHELL, timeout_s=3)]
    deadline = time.monotonic() + 20
    while not results[-1].state_lost and time.monotonic() < deadline:
        time.sleep(0.5)
        results.append(sandbox.run("echo next", Language.SHELL))
    assert results[-1].state_lost
    assert "too many processes" in results[-1].stderr
    assert_still_serving(sandbox, bystander)
    after = sandbox.run("echo ok; ls / > /dev/null && echo forked", Language.SHELL)
    assert (after.stdout, after.state_lost) == ("ok\nforked\n", False)


def test_memory_bomb_kills_only_the_interpreter(sandbox: Sandbox, bystander: Sandbox) -> None:
    bomb = "hog = []\nwhile True:\n    hog.append(bytearray(16 * 1024 * 1024))"
    result = sandbox.run(bomb, timeout_s=60)
    assert not result.succeeded and not result.timed_out
    # Either the kernel's OOM killer took the interpreter, or allocation failed first.
    assert result.state_lost or "MemoryError" in result.stderr
    assert_still_serving(sandbox, bystander)


def test_output_flood_is_capped_and_stopped(sandbox: Sandbox, bystander: Sandbox) -> None:
    result = sandbox.run("while True:\n    print('z' * 4096)", timeout_s=2)
    assert result.timed_out and result.stdout_truncated
    assert len(result.stdout.encode()) <= CAP
    assert_still_serving(sandbox, bystander)


def test_writes_outside_workspace_fail(sandbox: Sandbox, bystander: Sandbox) -> None:
    for path in ("/etc/passwd", "/usr/bin/python3", "/opt/sandboxd/agent.py", "/evil"):
        result = sandbox.run(f"open({path!r}, 'a').write('x')")
        assert result.exit_code == 1, path
        assert "Error" in result.stderr, path
    shell = sandbox.run("touch /root/x /var/x /evil 2>&1; echo rc=$?", Language.SHELL)
    assert "rc=1" in shell.stdout
    assert_still_serving(sandbox, bystander)


def test_network_is_unreachable(sandbox: Sandbox, bystander: Sandbox) -> None:
    code = (
        "import socket\n"
        "for target in [('1.1.1.1', 80), ('deb.debian.org', 80), ('10.0.2.2', 22)]:\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=3).close()\n"
        "        print('connected', target)\n"
        "    except OSError as exc:\n"
        "        print('blocked', type(exc).__name__)\n"
    )
    result = sandbox.run(code, timeout_s=30)
    assert result.exit_code == 0
    assert "connected" not in result.stdout
    assert result.stdout.count("blocked") == 3
    assert_still_serving(sandbox, bystander)


def test_runtime_still_creates_sandboxes_after_the_abuse(runtime: SandboxRuntime) -> None:
    sandbox = create_sandbox(runtime)
    try:
        assert sandbox.run("print('fresh')").stdout == "fresh\n"
    finally:
        runtime.stop(sandbox.id)
