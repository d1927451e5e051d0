"""The guest agent as a local process, driven through the host's AgentClient."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.agent.client import AgentClient, AgentUnansweredError
from domain.errors import SandboxGoneError
from domain.execution import ExecutionRequest, Language, OutputChunk, OutputStream
from testkit.agent import AgentProcess

LIMIT = 64 * 1024


def run(
    agent: AgentClient,
    code: str,
    language: Language = Language.PYTHON,
    timeout_s=10.0,
    limit: int = LIMIT,
):
    return agent.execute(ExecutionRequest(code, language, timeout_s), limit)


def test_ping_reports_the_version(agent: AgentClient) -> None:
    assert agent.ping() == "1"


def test_python_state_persists_between_executions(agent: AgentClient) -> None:
    first = run(agent, "x = 41\nprint('set')")
    second = run(agent, "print(x + 1)")
    assert (first.stdout, first.exit_code, first.state_lost) == ("set\n", 0, False)
    assert (second.stdout, second.exit_code) == ("42\n", 0)


def test_python_error_gives_traceback_on_stderr_and_exit_1(agent: AgentClient) -> None:
    result = run(agent, "print('before')\n1/0")
    assert result.stdout == "before\n"
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.stderr
    assert "1/0" in result.stderr  # the cell's source line is shown in the traceback
    assert "_sandboxd_runner" not in result.stderr


def test_python_sys_exit_sets_the_exit_code_and_keeps_state(agent: AgentClient) -> None:
    run(agent, "kept = 'yes'")
    result = run(agent, "import sys; sys.exit(7)")
    assert (result.exit_code, result.state_lost) == (7, False)
    assert run(agent, "print(kept)").stdout == "yes\n"


def test_syntax_error_is_a_result(agent: AgentClient) -> None:
    result = run(agent, "def (:")
    assert result.exit_code == 1
    assert "SyntaxError" in result.stderr


def test_timeout_kills_the_interpreter_and_its_children(agent: AgentClient) -> None:
    run(agent, "lost = 1")
    child = run(
        agent, "import subprocess; p = subprocess.Popen(['sleep', '300']); print(p.pid)"
    ).stdout
    result = run(agent, "while True: pass", timeout_s=0.5)
    assert result.timed_out and result.state_lost
    assert result.exit_code is None
    assert 0.5 <= result.duration_s < 5
    assert not os.path.exists(f"/proc/{int(child)}") or _is_zombie(int(child))
    after = run(agent, "print('lost' in globals())")
    assert (after.stdout, after.exit_code, after.state_lost) == ("False\n", 0, False)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_output_past_the_cap_is_dropped_and_flagged(agent: AgentClient) -> None:
    result = run(
        agent, "print('x' * 1_000_000); import sys; print('err', file=sys.stderr)", limit=1000
    )
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout == "x" * 1000
    assert result.stderr == "err\n"
    assert result.exit_code == 0


def test_truncation_never_splits_a_character(agent: AgentClient) -> None:
    result = run(agent, "print('é' * 100)", limit=11)
    assert result.stdout == "é" * 5
    assert result.stdout_truncated


def test_output_is_streamed_in_order(agent: AgentClient) -> None:
    chunks: list[OutputChunk] = []
    result = agent.execute(
        ExecutionRequest(
            "import sys, time\nfor i in range(3):\n    print(i)\n    time.sleep(0.05)\n"
            "print('e', file=sys.stderr)"
        ),
        LIMIT,
        chunks.append,
    )
    assert "".join(c.data for c in chunks if c.stream is OutputStream.STDOUT) == result.stdout
    assert "".join(c.data for c in chunks if c.stream is OutputStream.STDERR) == "e\n"
    assert len([c for c in chunks if c.stream is OutputStream.STDOUT]) >= 2


def test_interpreter_death_is_reported_and_it_restarts(agent: AgentClient) -> None:
    run(agent, "gone = 1")
    died = run(agent, "import os; os._exit(3)")
    assert (died.exit_code, died.state_lost, died.timed_out) == (3, True, False)
    killed = run(agent, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.exit_code, killed.state_lost) == (137, True)
    after = run(agent, "print('gone' in globals())")
    assert after.stdout == "False\n"


def test_code_past_a_pipe_buffer_is_fed_whole_and_no_descriptor_is_left_behind(
    agent_process: AgentProcess,
) -> None:
    # Most code is written to the interpreter at once; what the pipe does not take is fed as
    # it drains. Each incarnation of an interpreter has one selector, closed with it.
    agent = agent_process.connect()
    open_fds = Path(f"/proc/{agent_process.process.pid}/fd")
    try:
        run(agent, "pass")
        before = len(list(open_fds.iterdir()))
        big = "x = '" + "a" * 300_000 + "'\nprint(len(x))"
        for _ in range(2):
            assert run(agent, big).stdout == "300000\n"
            assert run(agent, "print(2)").stdout == "2\n"
            assert run(agent, "import os; os._exit(3)").state_lost  # a new incarnation
        assert run(agent, "import time; time.sleep(5)", timeout_s=0.5).timed_out
        assert run(agent, "print(3)").stdout == "3\n"
        assert len(list(open_fds.iterdir())) == before
    finally:
        agent.close()


def test_interpreters_are_first_in_line_for_the_oom_killer(agent: AgentClient) -> None:
    assert run(agent, "print(open('/proc/self/oom_score_adj').read().strip())").stdout == "1000\n"
    assert run(agent, "cat /proc/$$/oom_score_adj", Language.SHELL).stdout == "1000\n"


@pytest.mark.usefixtures("node_available")
def test_javascript_state_errors_and_await(agent: AgentClient) -> None:
    assert run(agent, "let y = 20; var z = 1; console.log(y)", Language.JAVASCRIPT).stdout == "20\n"
    assert run(agent, "console.log(y + z + 1)", Language.JAVASCRIPT).stdout == "22\n"
    error = run(agent, "null.x", Language.JAVASCRIPT)
    assert error.exit_code == 1 and "TypeError" in error.stderr
    awaited = run(
        agent, "await new Promise(r => setTimeout(r, 20)); console.log('done')", Language.JAVASCRIPT
    )
    assert (awaited.stdout, awaited.exit_code) == ("done\n", 0)
    loop = run(agent, "for(;;){}", Language.JAVASCRIPT, timeout_s=0.5)
    assert loop.timed_out and loop.state_lost
    assert run(agent, "console.log(typeof y)", Language.JAVASCRIPT).stdout == "undefined\n"


def test_shell_keeps_variables_and_directory(agent: AgentClient) -> None:
    run(agent, 'cd /tmp\nA=5\nf() { echo "f$1"; }', Language.SHELL)
    result = run(agent, "echo $A $(pwd); f 1; false", Language.SHELL)
    assert result.stdout == "5 /tmp\nf1\n"
    assert result.exit_code == 1
    syntax = run(agent, "if then", Language.SHELL)
    assert syntax.exit_code != 0 and not syntax.state_lost
    assert run(agent, "echo $A", Language.SHELL).stdout == "5\n"
    quoted = run(agent, "printf '%s\\n' \"a  b\" '$A'\ncat <<'END'\nline\nEND", Language.SHELL)
    assert quoted.stdout == "a  b\n$A\nline\n"


def test_shell_background_job_does_not_hold_up_the_result(agent: AgentClient) -> None:
    started = time.monotonic()
    result = run(agent, "sleep 30 &\necho started", Language.SHELL)
    assert result.stdout == "started\n"
    assert time.monotonic() - started < 5


def test_languages_have_separate_interpreters(agent: AgentClient) -> None:
    run(agent, "shared = 1")
    assert run(agent, "echo ${shared:-unset}", Language.SHELL).stdout == "unset\n"


def test_reseed_reaches_the_python_interpreter(agent: AgentClient) -> None:
    assert isinstance(agent.reseed(b"\x01" * 32), bool)
    first = run(agent, "import random; print(random.random())").stdout
    agent.reseed(b"\x01" * 32)
    assert run(agent, "print(random.random())").stdout == first
    agent.reseed(b"\x02" * 32)
    assert run(agent, "print(random.random())").stdout != first


def test_agent_serves_a_new_connection_after_the_host_leaves(agent_process: AgentProcess) -> None:
    first = agent_process.connect()
    run(first, "survives = 'across connections'")
    first.close()
    second = agent_process.connect()
    try:
        assert run(second, "print(survives)").stdout == "across connections\n"
    finally:
        second.close()


def test_code_finishes_when_the_host_disconnects_mid_run(agent_process: AgentProcess) -> None:
    raw = agent_process.raw()
    request = {
        "id": 1,
        "op": "execute",
        "language": "python",
        "timeout_s": 10,
        "code": "import time\nprint('x')\ntime.sleep(0.3)\nfinished = True",
        "stream": True,
    }
    raw.sendall((json.dumps(request) + "\n").encode())
    raw.close()
    client = agent_process.connect()
    try:
        assert run(client, "print(finished)").stdout == "True\n"
    finally:
        client.close()


def test_malformed_frames_get_errors_and_the_agent_keeps_serving(
    agent_process: AgentProcess,
) -> None:
    raw = agent_process.raw()
    reader = raw.makefile("rb")

    def ask(line: bytes) -> dict:
        raw.sendall(line + b"\n")
        return json.loads(reader.readline())

    try:
        assert ask(b"not json")["code"] == "bad_request"
        assert ask(b"[1, 2]")["code"] == "bad_request"
        assert ask(b'{"id": 5, "op": "dance"}') == {
            "id": 5,
            "type": "error",
            "code": "unknown_op",
            "message": "unknown op 'dance'",
        }
        unsupported = ask(b'{"id": 6, "op": "execute", "language": "cobol", "code": ""}')
        assert (unsupported["id"], unsupported["code"]) == (6, "unsupported_language")
        assert ask(b'{"id": 7, "op": "execute", "code": 5}')["code"] == "bad_request"
        assert (
            ask(b'{"id": 8, "op": "execute", "code": "", "timeout_s": -1}')["code"] == "bad_request"
        )
        assert ask(b'{"id": 9, "op": "reseed", "entropy": "%%%"}')["code"] == "bad_request"
        assert ask(b'{"id": 10, "op": "ping"}') == {"id": 10, "type": "pong", "version": "1"}
    finally:
        reader.close()
        raw.close()


# --- the client against a misbehaving peer ---------------------------------------------------


def _client_with_peer(margin_s: float = 0.2) -> tuple[AgentClient, socket.socket]:
    host, guest = socket.socketpair()
    return AgentClient(host, margin_s=margin_s), guest


def test_client_raises_gone_when_the_agent_does_not_answer_in_time() -> None:
    client, guest = _client_with_peer()
    try:
        started = time.monotonic()
        with pytest.raises(SandboxGoneError, match="did not answer within"):
            client.execute(ExecutionRequest("print(1)", timeout_s=0.1), LIMIT)
        assert 0.1 <= time.monotonic() - started < 3
        assert client.closed
        with pytest.raises(SandboxGoneError):
            client.ping()
    finally:
        guest.close()


def test_client_raises_gone_on_end_of_file() -> None:
    client, guest = _client_with_peer()
    guest.close()
    with pytest.raises(SandboxGoneError):
        client.ping()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\n",
        b'{"id": 99, "type": "pong", "version": "1"}\n',
        b'{"id": 1, "type": "result", "stdout": 5}\n',
        b'{"id": 1, "type": "error", "code": "internal", "message": "x"}\n',
        b'{"id": 1, "type": "output", "stream": "stdout", "data": "' + b"x" * 200_000 + b'"}\n',
    ],
)
def test_client_treats_a_misbehaving_agent_as_gone(answer: bytes) -> None:
    client, guest = _client_with_peer(margin_s=5)
    try:
        guest.sendall(answer)
        with pytest.raises(SandboxGoneError):
            client.execute(ExecutionRequest("print(1)", timeout_s=1), 1000, lambda chunk: None)
    finally:
        guest.close()


def test_an_idle_connection_is_handed_over_to_a_waiting_one(agent_process: AgentProcess) -> None:
    first = agent_process.connect()
    run(first, "turns = ['first']")
    second = agent_process.connect()
    try:
        # `first` is idle and still open: the agent hands over to `second` instead of waiting.
        assert run(second, "turns.append('second'); print(turns)").stdout == (
            "['first', 'second']\n"
        )
        with pytest.raises(AgentUnansweredError):
            first.ping()
        third = agent_process.connect()
        try:
            assert run(third, "print(len(turns))").stdout == "2\n"
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_a_busy_connection_is_not_interrupted(agent_process: AgentProcess) -> None:
    first = agent_process.connect()
    results: list[str] = []
    worker = threading.Thread(
        target=lambda: results.append(run(first, "import time; time.sleep(0.5); print('a')").stdout)
    )
    worker.start()
    time.sleep(0.2)  # the first request is running now
    second = agent_process.connect()
    try:
        assert run(second, "print('b')").stdout == "b\n"  # served after the first finished
        worker.join()
        assert results == ["a\n"]
    finally:
        first.close()
        second.close()


@pytest.fixture
def agent_as_root_for_another_user() -> Iterator[AgentProcess]:
    """As in a container or a microVM: the agent runs as root and its interpreters as nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run interpreters as another user")
    directory = Path(tempfile.mkdtemp(prefix="sbx-agent-", dir="/tmp"))
    directory.chmod(0o711)
    agent_process = AgentProcess(directory, "--user", f"{NOBODY}:{NOBODY}", "--max-processes", "40")
    agent_process.workdir.chmod(0o777)
    try:
        yield agent_process
    finally:
        agent_process.stop()
        shutil.rmtree(directory, ignore_errors=True)


NOBODY = 65534


def test_without_a_pids_cgroup_max_processes_bounds_a_background_fork_bomb(
    agent_as_root_for_another_user: AgentProcess,
) -> None:
    client = agent_as_root_for_another_user.connect()
    try:
        # Never start a bomb on this host unless the limit is really in place.
        limit = run(client, "ulimit -u; id -u", Language.SHELL)
        assert limit.stdout.split() == ["40", str(NOBODY)], limit
        run(client, "bomb() { bomb | bomb & }; bomb", Language.SHELL, timeout_s=3)
        # The bomb's execution ended: nothing of it is left, and the sandbox forks again.
        after = run(
            client, "ls / > /dev/null && echo forked; ps -e -o comm= | wc -l", Language.SHELL
        )
        assert after.stdout.split()[0] == "forked"
    finally:
        client.close()


# Three ways to get away from an execution: a new session, a double fork, nohup in the
# background. Each sleep carries the execution's marker in its duration, so it can be found.
ESCAPES = r"""
import os, random, subprocess, time
kept = str(random.randrange(10**8, 10**9))
subprocess.Popen(['sleep', '1000.' + kept], start_new_session=True)
if os.fork() == 0:
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '1001.' + kept])
    os._exit(0)
os.wait()
subprocess.run(['sh', '-c', 'nohup sleep 1002.' + kept + ' >/dev/null 2>&1 &'])
running = 0
for _ in range(400):  # until all three are up
    running = 0
    for pid in os.listdir('/proc'):
        try:
            running += kept.encode() in open('/proc/%s/cmdline' % pid, 'rb').read()
        except OSError:
            pass
    if running == 3:
        break
    time.sleep(0.05)
print(kept, running)
"""

SURVIVORS = r"""
import os
found = []
for pid in os.listdir('/proc'):
    try:
        argv = open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\0')
    except OSError:
        continue
    if any(kept.encode() in arg for arg in argv[1:]) and argv[0] != b'python3':
        found.append(pid)
print(kept, found)
"""


def test_an_execution_leaves_no_process_behind(agent: AgentClient) -> None:
    marker, started = run(agent, ESCAPES).stdout.split()
    assert started == "3"  # all three were running when the execution ended
    # Seen from the next execution: the variable survived, none of its processes did.
    assert run(agent, SURVIVORS).stdout == f"{marker} []\n"


def test_a_shell_background_job_dies_with_its_execution(agent: AgentClient) -> None:
    started = run(
        agent,
        "M=$RANDOM$RANDOM; (setsid sleep 1003.$M &); nohup sleep 1004.$M >/dev/null 2>&1 &\n"
        'sleep 0.2; pgrep -f "sleep 100[34][.]$M" | wc -l',
        Language.SHELL,
    )
    assert started.stdout.strip() == "2"
    left = run(agent, 'echo $M; pgrep -f "sleep 100[34][.]$M" | wc -l', Language.SHELL)
    assert left.stdout.split()[1] == "0"


def test_user_code_cannot_touch_the_agent(
    agent_as_root_for_another_user: AgentProcess,
) -> None:
    client = agent_as_root_for_another_user.connect()
    socket_path = str(agent_as_root_for_another_user.socket)
    try:
        code = f"""
import ctypes, os, signal, socket
agent = os.getppid()
def attempt(name, action):
    try:
        action()
        print(name, 'succeeded')
    except OSError as exc:
        print(name, type(exc).__name__)
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect({socket_path!r})
    s.sendall(b'{{"id": 1, "op": "ping"')
    if not s.recv(100):
        raise ConnectionResetError('closed without an answer')
attempt('connect', connect)
attempt('signal', lambda: os.kill(agent, signal.SIGTERM))
attempt('mem', lambda: open('/proc/%d/mem' % agent, 'rb'))
libc = ctypes.CDLL(None, use_errno=True)
def ptrace():
    if libc.ptrace(16, agent, 0, 0) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), 'ptrace')
attempt('ptrace', ptrace)
print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])
"""
        lines = run(client, code).stdout.splitlines()
        assert lines[0] in ("connect PermissionError", "connect ConnectionResetError"), lines
        assert lines[1:] == [
            "signal PermissionError",
            "mem PermissionError",
            "ptrace PermissionError",
            "1",
        ]
        assert client.ping() == "1"  # the agent served on, its host connection untouched
    finally:
        client.close()


PEER_AS_NOBODY = r"""
import os, socket, sys
os.setgid(NOBODY)
os.setuid(NOBODY)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"id": 1, "op": "ping"}\n')
    print(s.recv(100))
except ConnectionError:
    print(b'')
"""


def test_a_peer_with_the_sandbox_uid_is_refused(
    agent_as_root_for_another_user: AgentProcess,
) -> None:
    """Even with a socket it could open: the agent checks who connects (SO_PEERCRED)."""
    host = agent_as_root_for_another_user.connect()
    agent_as_root_for_another_user.socket.chmod(0o666)
    agent_as_root_for_another_user.directory.chmod(0o755)
    script = PEER_AS_NOBODY.replace("NOBODY", str(NOBODY))
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, str(agent_as_root_for_another_user.socket)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert out == "b''\n"
        assert host.ping() == "1"  # the refused peer did not take the host's connection over
    finally:
        host.close()


# The agent checks its listening socket only while idle: connect in one execution, look at the
# answer in the next one.
PEER_INSIDE = r"""
import os, socket
peer = socket.socket(socket.AF_UNIX)
peer.connect(PATH)
peer.sendall(b'{"id": 1, "op": "ping"}\n')
print(os.getuid(), os.getppid())
"""


def test_a_peer_inside_the_agents_pid_namespace_is_refused() -> None:
    """The agent as PID 1 of a pid namespace, like a container's: only the host may talk."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the agent a pid namespace")
    directory = Path(tempfile.mkdtemp(prefix="sbx-agent-", dir="/tmp"))
    agent_process = AgentProcess(directory, prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    client = agent_process.connect()
    try:
        code = PEER_INSIDE.replace("PATH", repr(str(agent_process.socket)))
        assert run(client, code).stdout == "0 1\n"
        time.sleep(0.5)  # the agent is idle now, and sees the waiting connection
        answer = run(
            client,
            "peer.settimeout(5)\n"
            "try:\n    print(peer.recv(100))\nexcept OSError as e:\n    print(type(e).__name__)",
        )
        assert answer.stdout in ("b''\n", "ConnectionResetError\n"), answer
        assert client.ping() == "1"
    finally:
        client.close()
        agent_process.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- the client's deadline and byte budget ---------------------------------------------------


def _feed_forever(guest: socket.socket, chunk: bytes, pause_s: float) -> None:
    try:
        while True:
            guest.sendall(chunk)
            time.sleep(pause_s)
    except OSError:
        pass


@pytest.mark.parametrize(
    ("chunk", "pause_s"),
    [
        (b"x", 0.01),  # a frame that trickles in and never ends
        (b'{"id": 1, "type": "output", "stream": "stdout", "data": "x"}\n', 0.0),  # endless frames
    ],
    ids=["trickle", "endless-output"],
)
def test_a_hijacked_agent_cannot_hold_the_client_past_its_deadline(
    chunk: bytes, pause_s: float
) -> None:
    client, guest = _client_with_peer(margin_s=0.5)
    feeder = threading.Thread(target=_feed_forever, args=(guest, chunk, pause_s), daemon=True)
    feeder.start()
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            client.execute(ExecutionRequest("print(1)", timeout_s=0.5), 1000, lambda chunk: None)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=30)
    guest.close()
    assert not caller.is_alive(), "the client was still waiting on the agent"
    assert isinstance(outcome[0], SandboxGoneError)
    assert client.closed


def test_the_byte_budget_stops_a_fast_endless_stream() -> None:
    client, guest = _client_with_peer(margin_s=30)
    frame = b'{"id": 1, "type": "output", "stream": "stdout", "data": "' + b"x" * 900 + b'"}\n'
    threading.Thread(target=_feed_forever, args=(guest, frame * 64, 0.0), daemon=True).start()
    try:
        with pytest.raises(SandboxGoneError, match="budget"):
            client.execute(ExecutionRequest("print(1)", timeout_s=30), 1000, lambda chunk: None)
    finally:
        guest.close()


def test_a_background_writer_does_not_hold_up_the_result(agent: AgentClient) -> None:
    # `yes` inherits the interpreter's stdout and keeps filling it after the execution ended.
    code = "import subprocess, time; subprocess.Popen(['yes']); time.sleep(0.3); kept = 1"
    result = run(agent, code, limit=1000)
    assert result.exit_code == 0 and result.stdout_truncated
    assert run(agent, "print(kept)").stdout == "1\n"


LIVE_PROCESSES = r"""
import os
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        stat = open('/proc/%s/stat' % pid).read()
    except OSError:
        continue
    if stat[stat.rfind(')') + 2] != 'Z':
        print(stat[: stat.rfind(')') + 1])
"""


def test_as_pid_1_the_sweep_takes_every_process_of_the_sandbox_user() -> None:
    """As in a container or a microVM: PID 1 of its own pid namespace, interpreters as nobody."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the agent a pid namespace")
    directory = Path(tempfile.mkdtemp(prefix="sbx-agent-", dir="/tmp"))
    directory.chmod(0o711)
    agent_process = AgentProcess(
        directory,
        "--user",
        f"{NOBODY}:{NOBODY}",
        "--max-processes",
        "40",
        prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    )
    agent_process.workdir.chmod(0o777)
    client = agent_process.connect()
    try:
        assert run(client, "echo $PPID; ulimit -u", Language.SHELL).stdout.split() == ["1", "40"]
        run(client, "kept=yes; bomb() { bomb | bomb & }; bomb", Language.SHELL, timeout_s=3)
        assert run(client, ESCAPES).stdout.split()[1] == "3"
        left = run(client, LIVE_PROCESSES).stdout
        # The agent (1), the python interpreter and the shell interpreter, nothing else.
        assert len(left.splitlines()) == 3, left
        assert run(client, "echo $kept", Language.SHELL).stdout == "yes\n"
    finally:
        client.close()
        agent_process.stop()
        shutil.rmtree(directory, ignore_errors=True)
