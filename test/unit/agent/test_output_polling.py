"""Output of an execution that is not streamed is read by polling the pipes, not on every write
(under TCG each wake of the agent cost ~0.9 ms a print): what that must keep.

The Interpreter runs in a child process of its own (its reaper waits for any child), driven by
HARNESS with the agent's polling constants set per test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from adapter.agent.client import AgentClient
from domain.execution import ExecutionRequest, OutputChunk, OutputStream
from testkit.agent import AGENT

HARNESS = r"""
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("agent_under_test", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
options = json.loads(sys.argv[2])
for name, value in options["constants"].items():
    setattr(agent, name, value)

class Host:
    preload = ""
    workdir = os.getcwd()
    child_env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
    limit_processes = None
    user_uid = user_gid = None
    reaper = agent.Reaper()
    def sweep(self):
        pass

reads = []
original_read = agent._read
def counted_read(fd):
    reads.append(fd)
    return original_read(fd)
agent._read = counted_read
interpreter = agent.Interpreter("python", Host())
interpreter.start()
stdout = agent.OutputBuffer("stdout", options["limit"], None)
stderr = agent.OutputBuffer("stderr", options["limit"], None)
out_fd = interpreter.process.stdout.fileno()
reads.clear()
outcome, code = interpreter.run(
    interpreter.encode("run", options["code"]), time.monotonic() + options["timeout_s"],
    stdout, stderr, None, options["live"],
)
print(json.dumps({"outcome": outcome, "stdout": stdout.text(), "truncated": stdout.truncated,
                  "stdout_reads": reads.count(out_fd)}))
interpreter.kill()
"""


def run_interpreter(
    code: str,
    *,
    live: bool = False,
    timeout_s: float = 20.0,
    limit: int = 1 << 20,
    constants: dict[str, float] | None = None,
) -> dict[str, Any]:
    options = {
        "code": code,
        "live": live,
        "timeout_s": timeout_s,
        "limit": limit,
        "constants": constants or {},
    }
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(AGENT), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


PRINT_LOOP = "for i in range(500): print(i)"


def test_a_print_loop_is_read_in_a_few_reads_not_one_per_print() -> None:
    # No poll falls within the run (however slow the machine): all is read at the end, in one
    # read and the empty one after it. Read on every write, this took 75-311 reads.
    result = run_interpreter(PRINT_LOOP, constants={"OUTPUT_POLL_FIRST_S": 30.0})
    assert result["stdout"] == "".join(f"{i}\n" for i in range(500))
    assert result["stdout_reads"] <= 3


def test_a_streamed_print_loop_is_read_as_it_is_written() -> None:
    # The other side of the above: live output must not wait for a poll.
    result = run_interpreter(
        "import time\nfor i in range(5):\n    print(i)\n    time.sleep(0.02)", live=True
    )
    assert result["stdout"] == "0\n1\n2\n3\n4\n"
    assert result["stdout_reads"] >= 5


def test_output_written_just_before_a_timeout_is_in_the_result() -> None:
    # No poll comes before the deadline: the output is read when the time is up.
    result = run_interpreter(
        "print('before')\nimport time\ntime.sleep(60)",
        timeout_s=1.0,
        constants={"OUTPUT_POLL_FIRST_S": 30.0},
    )
    assert (result["outcome"], result["stdout"]) == ("timeout", "before\n")


def test_output_larger_than_the_pipes_is_read_whole_while_the_code_waits() -> None:
    # 4 MiB through a pipe of at most 1 MiB: the writer blocks until the polls take it.
    code = "import sys\nfor _ in range(64): sys.stdout.write('x' * 65535 + '\\n')"
    result = run_interpreter(code, limit=8 << 20)
    assert result["outcome"] == "done"
    assert len(result["stdout"]) == 64 * 65536 and not result["truncated"]


def test_output_of_code_that_dies_is_kept(agent: AgentClient) -> None:
    died = agent.execute(
        ExecutionRequest("print('last words')\nimport os\nos._exit(7)"), 65536, None
    )
    assert (died.stdout, died.exit_code, died.state_lost) == ("last words\n", 7, True)


def test_streamed_output_still_arrives_before_the_result(agent: AgentClient) -> None:
    chunks: list[OutputChunk] = []
    result = agent.execute(
        ExecutionRequest("import time\nprint('a')\ntime.sleep(0.3)\nprint('b')"),
        65536,
        chunks.append,
    )
    stdout = [c.data for c in chunks if c.stream is OutputStream.STDOUT]
    assert "".join(stdout) == result.stdout == "a\nb\n"
    # print() writes "a" and "\n" apart (python -u): the first chunk may hold only "a", but
    # never "b", which comes 0.3 s later.
    assert stdout[0] in ("a", "a\n")


def test_an_endless_writer_is_stopped_on_time_and_the_agent_keeps_serving(
    agent: AgentClient,
) -> None:
    # Polled reads are bounded per pipe: a flood cannot keep the agent from its deadline.
    result = agent.execute(ExecutionRequest("while True: print('x' * 4096)", timeout_s=1.0), 1000)
    assert result.timed_out and result.stdout_truncated
    assert result.duration_s < 5
    assert agent.ping() == "1"
