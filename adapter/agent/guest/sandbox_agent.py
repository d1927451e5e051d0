#!/usr/bin/env python3
"""sandboxd guest agent: one long-lived process per sandbox that runs the chat's code.

Standard library only; installed at /opt/sandboxd/agent.py in the sandbox root filesystem.

    python3 agent.py --listen /run/sandboxd/agent.sock   # Unix socket (containers)
    python3 agent.py --device /dev/vport0p1              # open character device (microVMs)
    options: --user NAME (when root: run interpreters as NAME), --workdir DIR (/workspace),
             --max-processes N (with --user, no pids cgroup: RLIMIT_NPROC for NAME)
             --preload MOD,MOD (import these in the first python interpreter before its first
             execution, outside the user's namespace: a microVM snapshot then holds them loaded)

Protocol: newline-delimited JSON frames, both directions, one request at a time per connection;
every frame carries the request's "id". File content travels in binary data frames instead
(HostLink): a 13-byte header (the byte 0, the request id as uint64, the payload length as
uint32, at most DATA_FRAME_MAX; big-endian) and the raw bytes, without base64 or JSON.
The socket server serves one host connection at a time, until end of file, or until another
connection waits while the current one is idle: then the idle one is closed (no request in
flight) and the waiting one served, so several host processes can take turns without waiting
for each other to disconnect.
    {"id", "op": "ping"} -> {"id", "type": "pong", "version"}
    {"id", "op": "execute", "language", "code", "timeout_s", "max_output_bytes", "stream"}
        -> {"id", "type": "output", "stream", "data"}*  (only when stream is true)
        -> {"id", "type": "result", "stdout", "stderr", "exit_code", "duration_s", "timed_out",
            "stdout_truncated", "stderr_truncated", "state_lost"}
    {"id", "op": "reseed", "entropy": base64[, "now": host unix time]}
        -> {"id", "type": "reseeded", "ok"}  ("now", optional: set the clock, when root)
    Workspace files (paths relative to --workdir, resolved component by component with
    O_NOFOLLOW from the workspace's directory fd, so symlinks planted by user code never lead
    out); file transfers need an integer id, which their data frames carry:
    {"id", "op": "file_write", "path", "max_bytes"} -> {"id", "type": "file_ok"} (ready)
        <- data frames, pipelined (no answer each), the last one empty
        -> {"id", "type": "file_ok", "path", "size", "sha256"}
        (a temporary file in the target's directory, renamed over the target at the end; a
        failure midway is answered after the last data frame; a host that gives up midway
        closes the connection, which drops the temporary file)
    {"id", "op": "file_read", "path"} -> data frames -> {"id", "type": "file_ok", "path",
        "size", "sha256"}
    {"id", "op": "file_list", "prefix"} -> {"id", "type": "file_ok", "entries": [{"path",
        "size", "mtime"}], "truncated"}
    {"id", "op": "file_delete", "path"} -> {"id", "type": "file_ok"}
    a refused file operation -> {"id", "type": "file_ok", "error": path_refused | not_found |
        too_large | workspace_full, "message"}
    anything malformed -> {"id", "type": "error", "code", "message"}

Interpreters: one long-lived process per language (python starts with the agent; node and bash on
first use), each the leader of its own session and process group, with oom_score_adj 1000 so the
kernel's OOM killer picks user code before the agent. Code goes in on a control pipe, the end of
an execution comes back on a separate "done" pipe, and stdout/stderr are plain pipes the agent
reads, so output and end-of-execution never mix. A timeout kills the interpreter's whole process
group and session; the interpreter is started again (python at once, others on next use).

When the agent is PID 1 (a container) or a child subreaper, orphaned processes of user code are
re-parented to it; a reaper thread collects every exit status so they do not pile up as zombies
against the pids limit.

Nothing outlives its execution: when an execution ends (normally, by error, by timeout or by
the interpreter's death), every process user code started is stopped and then killed before the
result is sent, whatever it did to get away (setsid, a double fork, nohup, a fork bomb): as PID 1
with --user (a container, a microVM), every process of that user but the live interpreters;
otherwise every process below the agent (a child subreaper) but the interpreters. The
interpreters' own state (variables, functions, the shell's directory) stays. A background job
or server started by one execution does not survive into the next. See Agent.sweep (and its
shortcut: an execution that started no process at all has nothing to sweep).

User code cannot reach the agent. Run as root with --user (a container started as root with
only the capabilities it needs, a microVM's PID 1), the interpreters run as that user with no
capabilities, no_new_privs (inherited from the agent) and oom_score_adj 1000. The agent is not
dumpable (no ptrace, no /proc/PID/mem, not even for its own uid), user code cannot signal it
(another uid), its socket is the channel directory owner's alone (0600) and a connecting peer
is checked with SO_PEERCRED (PeerPolicy); a virtio port is root's alone.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import errno
import fcntl
import functools
import io
import json
import os
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

VERSION = "1"
DEFAULT_MAX_OUTPUT = 1024 * 1024
MAX_REQUEST_BYTES = 16 * 1024 * 1024
READ_CHUNK = 65536
KILL_GRACE_S = 2.0
# The output left in the pipes after an execution is read for at most this long: a process that
# keeps writing must not keep the agent from answering.
DRAIN_S = 1.0
# How long the sweep may take to stop what an execution left (a fork bomb under TCG: seconds).
SWEEP_S = 5.0
# An execution whose output is not streamed has its stdout and stderr read every so often rather
# than each time the code writes: every write to a watched pipe wakes the agent, which preempts
# the (niced) interpreter and hands back, and under TCG that costs about 0.9 ms a print() call
# (2,000 prints took 1.7 s, 19 ms as one print). The first read comes this long after the code
# went in (most executions are done by then: their output is read once, at the end), then as
# often as output keeps coming, backing off while none does.
OUTPUT_POLL_FIRST_S = 0.01
OUTPUT_POLL_MIN_S = 0.005
OUTPUT_POLL_MAX_S = 0.1
# A read of the pipes while code runs takes at most this many chunks from each (a pipe holds
# PIPE_BYTES): code that keeps writing cannot hold the agent in the read.
POLL_READ_CHUNKS = 16
# Output pipes are grown to this where the kernel allows it, so that code writing between two
# reads rarely has to wait for the next one.
PIPE_BYTES = 1024 * 1024
F_SETPIPE_SZ = 1031
# No kernel hands out pids faster than this (every allocation takes one kernel-wide lock): an
# execution shorter than pid_max / MAX_PID_RATE cannot have taken the pid counter all the way round.
MAX_PID_RATE = 10_000_000
# 64-bit Linux's largest pid_max: a microVM's agent raises its kernel's to it.
PID_MAX_LIMIT = 4 * 1024 * 1024
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# Each runner survives SIGHUP with a handler that does nothing (not SIG_IGN: what user code starts
# gets the default back at exec). gVisor sends SIGHUP and SIGCONT to a process group that has
# stopped members when one member exits, though the group is a session of its own (Linux does not);
# the sweep stops, then kills, user code's processes, which share the interpreter's group.
PYTHON_RUNNER = r"""
import ast, base64, builtins, json, linecache, os, signal, sys, traceback, types
def _sandboxd_preload(names):
    import contextlib, importlib, io
    quiet = io.StringIO()
    for name in filter(None, names.split(",")):
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                importlib.import_module(name)
        except BaseException:
            pass
_SANDBOXD_TEXT_CAP = 64 * 1024
_SANDBOXD_OUTPUT_CAP = 8 * 1024 * 1024
_SANDBOXD_OWN = ("_sandboxd_runner", "_sandboxd_run_cell")
def _sandboxd_rich(done_fd, ctl):
    # Rich outputs go to the agent on the done pipe, never through stdout: printing cannot forge
    # them. Each waits for the agent's ack (an empty line on the control pipe), so output printed
    # after it cannot overtake it. Returns display(obj) and the hook run after each cell.
    def emit(bundle):
        # Anything past the agent's total cap would be dropped there anyway: not sent at all.
        for mime, data in list(bundle.items()):
            if len(data) > _SANDBOXD_OUTPUT_CAP:
                del bundle[mime]
                bundle["truncated"] = True
        if bundle:
            os.write(done_fd, (json.dumps({"display": bundle}) + "\n").encode())
            ctl.readline()
    def figure_bundle(fig):
        import io
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii")}
    def bundle_of(obj):
        if type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig"):
            return figure_bundle(obj)
        bundle = {}
        for mime, method in (("image/png", "_repr_png_"), ("image/svg+xml", "_repr_svg_"),
                             ("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_")):
            fn = getattr(obj, method, None)
            if fn is None or isinstance(obj, type):
                continue
            try:
                value = fn()
            except Exception:
                continue
            if isinstance(value, bytes) and mime == "image/png":
                bundle[mime] = base64.b64encode(value).decode("ascii")
            elif isinstance(value, str):
                bundle[mime] = value
        try:
            text = repr(obj)
        except Exception as exc:
            text = "<repr failed: %r>" % (exc,)
        if len(text) > _SANDBOXD_TEXT_CAP:
            text = text[:_SANDBOXD_TEXT_CAP] + "..."
        bundle["text/plain"] = text
        return bundle
    def display(*objs):
        for obj in objs:
            emit(bundle_of(obj))
    def flush_figures():
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for num in plt.get_fignums():
            emit(figure_bundle(plt.figure(num)))
        plt.close("all")
    def patch_pyplot(module):
        def show(*args, **kwargs):
            flush_figures()
        module.show = show
    class PyplotHook:
        # Wraps the loading of matplotlib.pyplot so that its show() shows into the result.
        def find_spec(self, name, path=None, target=None):
            if name != "matplotlib.pyplot":
                return None
            sys.meta_path.remove(self)
            try:
                import importlib.util
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            original = loader.exec_module
            def exec_module(module):
                original(module)
                patch_pyplot(module)
            loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, PyplotHook())
    if "matplotlib.pyplot" in sys.modules:
        patch_pyplot(sys.modules["matplotlib.pyplot"])
    return display, flush_figures
def _sandboxd_run_cell(source, name, ns, display):
    # Like a notebook: the value of a last expression statement is displayed.
    tree = ast.parse(source, name, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec"), ns)
    if last is not None:
        value = eval(compile(last, name, "eval"), ns)
        if value is not None:
            builtins._ = value
            display(value)
def _sandboxd_runner(ctl_fd, done_fd, preload):
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    # User code runs below the agent's priority (inherited by all it starts), so that a fork
    # bomb on one slow vCPU cannot starve the agent that has to kill it.
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    for fd in (ctl_fd, done_fd):
        os.set_inheritable(fd, False)
    _sandboxd_preload(preload)
    ctl = os.fdopen(ctl_fd, "rb")
    display, flush_figures = _sandboxd_rich(done_fd, ctl)
    builtins.display = display
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = [""]
    ns = main.__dict__
    cell = 0
    while True:
        line = ctl.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        status = 0
        if request.get("op") == "reseed":
            import random
            random.seed(bytes.fromhex(request["seed"]))
        else:
            cell += 1
            name = "<cell-%d>" % cell
            source = request["code"]
            linecache.cache[name] = (len(source), None, source.splitlines(True), name)
            try:
                _sandboxd_run_cell(source, name, ns, display)
            except SystemExit as exc:
                if exc.code is None:
                    status = 0
                elif isinstance(exc.code, int):
                    status = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    status = 1
            except BaseException:
                kind, value, tb = sys.exc_info()
                while tb is not None and (tb.tb_frame.f_code.co_name in _SANDBOXD_OWN
                                          or tb.tb_frame.f_code.co_filename == ast.__file__):
                    tb = tb.tb_next
                traceback.print_exception(kind, value, tb)
                status = 1
            try:
                flush_figures()
            except Exception:
                traceback.print_exc()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        os.write(done_fd, (json.dumps({"exit_code": status}) + "\n").encode())
_sandboxd_runner(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
"""

NODE_RUNNER = r"""
const fs = require('fs');
const vm = require('vm');
const ctlFd = parseInt(process.argv[1], 10);
const doneFd = parseInt(process.argv[2], 10);
process.argv.splice(1);
const report = (e) => {
  try { process.stderr.write(String(e && e.stack ? e.stack : e) + '\n'); } catch (_) {}
};
process.on('uncaughtException', report);
process.on('unhandledRejection', report);
process.on('SIGHUP', () => {});
try { fs.writeFileSync('/proc/self/oom_score_adj', '1000'); } catch (_) {}
const finish = (code) => fs.writeSync(doneFd, JSON.stringify({ exit_code: code }) + '\n');
// Like node's REPL: the completion value of the code is shown, as a rich output on the done pipe.
const show = (value) => {
  let text = require('util').inspect(value);
  if (text.length > 65536) text = text.slice(0, 65536) + '...';
  fs.writeSync(doneFd, JSON.stringify({ display: { 'text/plain': text } }) + '\n');
};
let cell = 0;
async function run(request) {
  let code = 0;
  if (request.op === 'run') {
    cell += 1;
    const filename = '<cell-' + cell + '>';
    try {
      let value;
      try {
        value = vm.runInThisContext(request.code, { filename });
      } catch (e) {
        // Top-level await is not valid in a script; run such code as an async function body.
        if (!(e instanceof SyntaxError) || !/await/.test(request.code)) throw e;
        value = vm.runInThisContext('(async () => {\n' + request.code + '\n})()', { filename });
        await value;
        value = undefined;
      }
      if (value && typeof value.then === 'function') value = await value;
      if (value !== undefined) show(value);
    } catch (e) {
      report(e);
      code = 1;
    }
  }
  finish(code);
}
let buffer = '';
let chain = Promise.resolve();
const input = fs.createReadStream(null, { fd: ctlFd, encoding: 'utf8' });
input.on('data', (chunk) => {
  buffer += chunk;
  let newline;
  while ((newline = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, newline);
    buffer = buffer.slice(newline + 1);
    if (!line) continue; // the agent's ack of a rich output
    const request = JSON.parse(line);
    chain = chain.then(() => run(request));
  }
});
input.on('end', () => process.exit(0));
"""

# bash keeps variables, functions and the working directory between executions. The code arrives
# as lines ended by a random terminator line; fds 3 and 4 are closed for the user's commands so a
# background job cannot hold the control pipes open.
SHELL_RUNNER = r"""
exec 3<&"$1" 4>&"$2"
[ "$1" -ne 3 ] && [ "$1" -ne 4 ] && eval "exec $1<&-"
[ "$2" -ne 3 ] && [ "$2" -ne 4 ] && eval "exec $2>&-"
shift 2
trap : HUP
{ echo 1000 > /proc/self/oom_score_adj; } 2>/dev/null
while IFS= read -r -u 3 __sandboxd_op; do
  IFS= read -r -u 3 __sandboxd_end || exit 0
  __sandboxd_code=
  while IFS= read -r -u 3 __sandboxd_line; do
    [ "$__sandboxd_line" = "$__sandboxd_end" ] && break
    __sandboxd_code+="$__sandboxd_line"$'\n'
  done
  if [ "$__sandboxd_op" = reseed ]; then
    RANDOM=${__sandboxd_code%$'\n'}
    __sandboxd_status=0
  else
    eval "$__sandboxd_code" 3<&- 4>&-
    __sandboxd_status=$?
  fi
  printf '{"exit_code": %d}\n' "$__sandboxd_status" >&4
done
"""

LANGUAGES = ("python", "javascript", "shell")

Sink = Callable[[str, str], None]
Send = Callable[[dict[str, Any]], None]
# (mtime_ns, size) of each regular file of the workspace by path, and whether the walk was cut.
Listing = tuple[dict[str, tuple[int, int]], bool]


def log(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"sandboxd-agent: {message}\n")
        sys.stderr.flush()


def exit_code_from_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Reaper:
    """Collects the exit status of every child, interpreters and orphans alike.

    Interpreters are spawned and registered under ``spawning()``, so the status of one that
    dies at once is still delivered to it, and the status of an orphan whose pid is later
    reused can never be mistaken for a new interpreter's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[Interpreter, subprocess.Popen[bytes]]] = {}
        thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        thread.start()

    def spawning(self) -> threading.Lock:
        return self._lock

    def watch(self, process: subprocess.Popen[bytes], interpreter: Interpreter) -> None:
        """Call while holding ``spawning()``."""
        self._watched[process.pid] = (interpreter, process)

    def _loop(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.05)
                continue
            except InterruptedError:
                continue
            with self._lock:
                watched = self._watched.pop(pid, None)
            if watched is not None:
                interpreter, process = watched
                try:
                    interpreter.exited(process, status)
                except Exception as exc:  # the reaper must outlive any bug
                    log(f"reaper: {exc!r}")


class OutputBuffer:
    """One stream's output: keeps the first ``limit`` bytes, drops and counts the rest."""

    def __init__(self, name: str, limit: int, sink: Sink | None) -> None:
        self.name = name
        self.limit = limit
        self.kept = bytearray()
        self.truncated = False
        self._sink = sink
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        room = self.limit - len(self.kept)
        if len(data) > room:
            self.truncated = True
            data = _cut_to_char_boundary(data[: max(room, 0)])
            self.limit = len(self.kept) + len(data)
        if not data:
            return
        self.kept += data
        if self._sink is not None:
            text = self._decoder.decode(data)
            if text:
                self._sink(self.name, text)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


def _cut_to_char_boundary(data: bytes) -> bytes:
    """Drop a UTF-8 sequence cut in half at the end, so truncation adds no replacement char."""
    end = len(data)
    back = 0
    while back < 4 and end - back - 1 >= 0 and (data[end - back - 1] & 0xC0) == 0x80:
        back += 1
    if end - back - 1 < 0:
        return data
    lead = data[end - back - 1]
    needed = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    if lead >= 0x80 and back + 1 < needed:
        return data[: end - back - 1]
    return data


RICH_MIME_TYPES = ("image/png", "image/svg+xml", "text/html", "text/markdown", "text/plain")
BINARY_MIME_TYPES = ("image/png",)
MAX_OUTPUTS = 32
MAX_OUTPUTS_BYTES = 8 * 1024 * 1024


class RichOutputs:
    """Rich outputs of one execution (displayed values, figures), in order, capped in number
    and total size; what does not fit is dropped and ``truncated`` says so."""

    def __init__(self, live: Callable[[dict[str, Any]], None] | None) -> None:
        self.items: list[dict[str, Any]] = []
        self.truncated = False
        self._size = 0
        self._live = live

    def add(self, bundle: object) -> None:
        if not isinstance(bundle, dict):
            return
        if bundle.get("truncated"):
            self.truncated = True
        for mime in RICH_MIME_TYPES:
            data = bundle.get(mime)
            if not isinstance(data, str):
                continue
            # Counted as encoded in the result frame (JSON escaping may grow text 6x), so the
            # host can bound the frame.
            cost = len(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if len(self.items) >= MAX_OUTPUTS or self._size + cost > MAX_OUTPUTS_BYTES:
                self.truncated = True
                continue
            self._size += cost
            encoding = "base64" if mime in BINARY_MIME_TYPES else "utf-8"
            item = {"mime_type": mime, "data": data, "encoding": encoding}
            self.items.append(item)
            if self._live is not None:
                with contextlib.suppress(HostGoneError):
                    self._live(item)


class Interpreter:
    """One long-lived interpreter process for one language."""

    def __init__(self, language: str, agent: Agent) -> None:
        self.language = language
        self._agent = agent
        self.process: subprocess.Popen[bytes] | None = None
        self.status: int | None = None
        self._status_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.ctl_w = -1
        self.done_r = -1
        # The read ends of this incarnation's pipes, registered once at start: a selector made
        # per execution cost an epoll instance and five registrations each time (under TCG a
        # noticeable part of a short execution).
        self._selector: selectors.BaseSelector | None = None
        self._quiet_selector: selectors.BaseSelector | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.status is None

    def argv(self, ctl: int, done: int) -> list[str]:
        if self.language == "python":
            # Only the first interpreter preloads: a restart after a timeout stays quick.
            preload, self._agent.preload = self._agent.preload, ""
            return ["python3", "-u", "-c", PYTHON_RUNNER, str(ctl), str(done), preload]
        if self.language == "javascript":
            return ["node", "-e", NODE_RUNNER, str(ctl), str(done)]
        return [
            "bash",
            "--norc",
            "--noprofile",
            "-c",
            SHELL_RUNNER,
            "sandboxd",
            str(ctl),
            str(done),
        ]

    def start(self) -> None:
        ctl_r, ctl_w = os.pipe()
        done_r, done_w = os.pipe()
        agent = self._agent
        self._drain_wake()
        try:
            with agent.reaper.spawning():
                process = subprocess.Popen(
                    self.argv(ctl_r, done_w),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(ctl_r, done_w),
                    cwd=agent.workdir,
                    env=agent.child_env,
                    start_new_session=True,
                    preexec_fn=agent.limit_processes,  # noqa: PLW1509 - only with --max-processes
                    user=agent.user_uid,
                    group=agent.user_gid,
                    extra_groups=[] if agent.user_uid is not None else None,
                )
                with self._status_lock:
                    self.process = process
                    self.status = None
                agent.reaper.watch(process, self)
        except BaseException:
            os.close(ctl_w)
            os.close(done_r)
            raise
        finally:
            os.close(ctl_r)
            os.close(done_w)
        self.ctl_w = ctl_w
        self.done_r = done_r
        assert process.stdout is not None and process.stderr is not None
        for fd in (ctl_w, done_r, process.stdout.fileno(), process.stderr.fileno()):
            os.set_blocking(fd, False)
        for fd in (process.stdout.fileno(), process.stderr.fileno()):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        self._selector = selectors.DefaultSelector()
        for fd in (process.stdout.fileno(), process.stderr.fileno(), done_r, self._wake_r):
            self._selector.register(fd, selectors.EVENT_READ)
        # For executions whose output is read by polling: the end and the death only.
        self._quiet_selector = selectors.DefaultSelector()
        for fd in (done_r, self._wake_r):
            self._quiet_selector.register(fd, selectors.EVENT_READ)

    def exited(self, process: subprocess.Popen[bytes], status: int) -> None:
        process.returncode = exit_code_from_status(status)
        with self._status_lock:
            if process is not self.process:
                return  # a previous incarnation, already given up on
            self.status = status
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 64):
                pass

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.status is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.status

    def kill(self) -> None:
        """Kill the interpreter and its process group; the agent's sweep gets everything else."""
        if self.process is None:
            return
        leader = self.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leader, signal.SIGKILL)
        self.wait_exit(KILL_GRACE_S)
        self.close()

    def close(self) -> None:
        for selector in (self._selector, self._quiet_selector):
            if selector is not None:
                selector.close()
        self._selector = self._quiet_selector = None
        for fd in (self.ctl_w, self.done_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.ctl_w = self.done_r = -1
        if self.process is not None:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.process = None

    def encode(self, op: str, payload: str) -> bytes:
        if self.language == "shell":
            end = "__sandboxd_end_" + os.urandom(16).hex()
            if payload and not payload.endswith("\n"):
                payload += "\n"
            return f"{op}\n{end}\n{payload}{end}\n".encode("utf-8", errors="replace")
        key = "seed" if op == "reseed" else "code"
        return (json.dumps({"op": op, key: payload}) + "\n").encode()

    # One select loop over the pipes keeps the agent single-threaded per execution.
    def run(  # noqa: PLR0912
        self,
        payload: bytes,
        deadline: float,
        stdout: OutputBuffer,
        stderr: OutputBuffer,
        on_display: Callable[[object], None] | None = None,
        live: bool = True,
    ) -> tuple[str, int | None]:
        """Feed one request and collect its output; returns ("done", code) / ("died", code) /
        ("timeout", None). ``live``: output is read as it is written (streamed executions);
        otherwise the pipes are polled (OUTPUT_POLL_*) and read to the end when it is over."""
        assert self.process is not None and self._selector is not None
        assert self._quiet_selector is not None
        assert self.process.stdout is not None and self.process.stderr is not None
        out_fd = self.process.stdout.fileno()
        err_fd = self.process.stderr.fileno()
        buffers = {out_fd: stdout, err_fd: stderr}
        selector = self._selector if live else self._quiet_selector
        poll = OUTPUT_POLL_FIRST_S
        next_poll = time.monotonic() + poll
        # Most requests fit the pipe: written at once, the control pipe is never watched.
        pending = self._write_some(memoryview(payload))
        if pending:
            selector.register(self.ctl_w, selectors.EVENT_WRITE)
        done_data = b""
        try:
            while True:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    if not live:
                        _read_some(buffers)
                    return "timeout", None
                if not live and now >= next_poll:
                    poll = (
                        OUTPUT_POLL_MIN_S
                        if _read_some(buffers)
                        else min(poll * 2, OUTPUT_POLL_MAX_S)
                    )
                    next_poll = now + poll
                wait = remaining if live else min(remaining, next_poll - now)
                for key, _ in selector.select(wait):
                    fd = key.fd
                    if fd == self.ctl_w:
                        pending = self._write_some(pending)
                        if not pending:
                            selector.unregister(fd)
                    elif fd in buffers:
                        data = _read(fd)
                        if data:
                            buffers[fd].feed(data)
                        elif data is not None:
                            selector.unregister(fd)
                    elif fd == self.done_r:
                        data = _read(fd)
                        if data:
                            done_data, code = self._done_lines(
                                done_data + data, buffers, on_display
                            )
                            if code is not None:
                                return "done", code
                        elif data is not None:
                            return self._died(buffers)
                    elif fd == self._wake_r:
                        self._drain_wake()
                        if self.status is not None:
                            return self._died(buffers)
        finally:
            # The selector outlives the execution: it must watch the read ends only. (A kill
            # on the way out of here, _died, has closed it already.)
            if pending and selector in (self._selector, self._quiet_selector):
                selector.unregister(self.ctl_w)

    def _write_some(self, pending: memoryview) -> memoryview:
        """Write what the control pipe takes now; what is left (nothing once the runner is
        gone: its death is seen on the other pipes)."""
        try:
            return pending[os.write(self.ctl_w, pending) :]
        except BlockingIOError:
            return pending
        except BrokenPipeError:
            return pending[len(pending) :]

    def _done_lines(
        self,
        done_data: bytes,
        buffers: dict[int, OutputBuffer],
        on_display: Callable[[object], None] | None,
    ) -> tuple[bytes, int | None]:
        """Handle the complete lines on the done pipe: rich outputs (which come only on this
        pipe, never from stdout, so printing cannot forge one) and the end of the execution."""
        while b"\n" in done_data:
            line, done_data = done_data.split(b"\n", 1)
            message = json.loads(line)
            if "display" in message:
                # Output printed before the display comes before it in a stream.
                self._drain(buffers)
                if on_display is not None:
                    on_display(message["display"])
                # The runner waits for this before it goes on (the pipe has room for it).
                with contextlib.suppress(OSError):
                    os.write(self.ctl_w, b"\n")
                continue
            # Whatever the code left running dies before its output is read to the end:
            # nothing writes into the pipes any more.
            self._agent.sweep()
            self._drain(buffers)
            return done_data, int(message["exit_code"])
        return done_data, None

    def _died(self, buffers: dict[int, OutputBuffer]) -> tuple[str, int | None]:
        status = self.wait_exit(KILL_GRACE_S)
        # Anything it started dies with it, so nothing keeps writing into a dead session.
        self._agent.sweep()
        self._drain(buffers)
        self.kill()
        return "died", exit_code_from_status(status) if status is not None else 137

    @staticmethod
    def _drain(buffers: dict[int, OutputBuffer]) -> None:
        # Everything written before the done line is already in the pipes: read until empty, but
        # not for ever: a background process of the code may still be writing into them.
        deadline = time.monotonic() + DRAIN_S
        for fd, buffer in buffers.items():
            while time.monotonic() < deadline:
                data = _read(fd)
                if not data:
                    break
                buffer.feed(data)


def _read_some(buffers: dict[int, OutputBuffer]) -> bool:
    """Read what the pipes hold now (at most POLL_READ_CHUNKS from each); True if any."""
    got = False
    for fd, buffer in buffers.items():
        for _ in range(POLL_READ_CHUNKS):
            data = _read(fd)
            if not data:
                break
            buffer.feed(data)
            got = True
    return got


def _read(fd: int) -> bytes | None:
    """Bytes read, b"" at end of file, None when nothing is there now."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.EBADF):
            return b""
        raise


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _strays(root: int, keep: set[int], sandbox_uid: int | None) -> list[tuple[int, bytes]]:
    """Live processes (pid, state) left by user code: everything but ``keep`` and the agent.

    With ``sandbox_uid`` (the agent is PID 1 of a sandbox of its own and user code has a uid of
    its own): every process with that uid, read from /proc/PID/status, so no change of parent,
    session or dumpability hides one. Otherwise (a local agent, the tests): the processes below
    ``root`` in the process tree; orphans are re-parented to the agent, a child subreaper.
    Zombies are left out: they are dead already, and the reaper collects them.
    """
    states: dict[int, bytes] = {}
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) < 2 or fields[0] in (b"Z", b"X") or pid in keep or pid == root:
                continue
            if sandbox_uid is not None:
                if _uids(pid) & {sandbox_uid}:
                    states[pid] = fields[0]
                continue
        except OSError:
            continue
        states[pid] = fields[0]
        children.setdefault(int(fields[1]), []).append(pid)
    if sandbox_uid is not None:
        return list(states.items())
    found: list[tuple[int, bytes]] = []
    stack = [root, *keep]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append((child, states[child]))
            stack.append(child)
    return found


class _Loadavg:
    """/proc/loadavg opened once and read with pread at offset 0 (the kernel renders it anew
    on every read from the start): one system call instead of open, fstat, read and close,
    read twice per execution (under TCG about 0.15 ms less each, several times that on a
    cold vCPU). Close-on-exec, so no interpreter inherits it."""

    fd: int | None = None

    @classmethod
    def last_pid(cls) -> int:
        """The last pid field; 0 when it cannot be read."""
        try:
            if cls.fd is None:
                cls.fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(cls.fd, 256, 0).split()[-1])
        except (OSError, IndexError, ValueError):
            return 0


def _pid_mark() -> tuple[bool, int]:
    """Where this pid namespace's id counter stands: (probed, id).

    Linux: /proc/loadavg's last pid, free to read. gVisor's /proc/loadavg always says 0 (and it
    has no ns_last_pid): there the id of a new thread tells it, since threads and processes
    draw their ids from one counter, in order (about 1 ms a probe).
    """
    last = _Loadavg.last_pid()
    if last:
        return False, last
    ids: list[int] = []
    probe = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
    try:
        probe.start()
    except RuntimeError:
        # No thread to spare: never quiet, so the sweep stops and kills until its deadline.
        return True, -2
    probe.join()
    return True, ids[0]


def _pid_max() -> int | None:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _raise_pid_max() -> None:
    """The largest pid space (the sweep's shortcut then holds for executions up to ~0.4 s)."""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/pid_max", "w") as f:
        f.write(str(PID_MAX_LIMIT))


def _no_pid_since(mark: tuple[bool, int]) -> bool:
    """No process or thread was created since ``mark``; a probe's own id does not count."""
    probed, before = mark
    _now_probed, now = _pid_mark()
    return now == before + 1 if probed else now == before


def _orphan_zombies(parent: int) -> int:
    """Zombies whose parent is ``parent`` (the agent: orphans the reaper has yet to collect)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            count += fields[0] == b"Z" and int(fields[1]) == parent
    return count


def _uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uid of a process."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                return {int(value) for value in line.split()[1:]}
    return set()


def _execute_arguments(
    frame: dict[str, Any], languages: dict[str, Interpreter]
) -> tuple[str, str, float, int]:
    language = frame.get("language", "python")
    code = frame.get("code")
    timeout_s = frame.get("timeout_s", 30.0)
    limit = frame.get("max_output_bytes", DEFAULT_MAX_OUTPUT)
    if not isinstance(language, str) or language not in languages:
        raise BadRequestError("unsupported_language", f"unsupported language {language!r}")
    if not isinstance(code, str):
        raise BadRequestError("bad_request", "code must be a string")
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise BadRequestError("bad_request", "timeout_s must be a positive number")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise BadRequestError("bad_request", "max_output_bytes must be a non-negative integer")
    return language, code, float(timeout_s), limit


# Built into the image (adapter.image.rootfs) and copied into a writable directory at start:
# matplotlib refuses a read-only MPLCONFIGDIR, and without a cache it scans the fonts (seconds)
# and writes ~/.cache and ~/.config, which would land in the user's /workspace.
MATPLOTLIB_TEMPLATE = "/opt/sandboxd/matplotlib"
CACHE_ROOT = "/tmp/.sandboxd"  # noqa: S108 - the sandbox's own /tmp


def _cache_dirs(uid: int | None, gid: int | None) -> dict[str, str]:
    """Cache and config directories outside the workspace, with the prebuilt font cache."""
    mpl = os.path.join(CACHE_ROOT, "matplotlib")
    env = {
        "MPLCONFIGDIR": mpl,
        "XDG_CACHE_HOME": os.path.join(CACHE_ROOT, "cache"),
        "XDG_CONFIG_HOME": os.path.join(CACHE_ROOT, "config"),
    }
    try:
        for directory in (CACHE_ROOT, mpl, env["XDG_CACHE_HOME"], env["XDG_CONFIG_HOME"]):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            if uid is not None:
                os.chown(directory, uid, gid if gid is not None else -1)
        if os.path.isdir(MATPLOTLIB_TEMPLATE):
            for name in os.listdir(MATPLOTLIB_TEMPLATE):
                target = os.path.join(mpl, name)
                with open(os.path.join(MATPLOTLIB_TEMPLATE, name), "rb") as source:
                    data = source.read()
                with open(target, "wb") as out:
                    out.write(data)
                if uid is not None:
                    os.chown(target, uid, gid if gid is not None else -1)
    except OSError as exc:
        log(f"cannot prepare cache directories: {exc}")
    return env


def _become_subreaper() -> None:
    """Outside PID 1, become the reaper of orphaned grandchildren (Linux prctl); best effort."""
    if os.getpid() != 1:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _user_ids(user: str) -> tuple[int, int]:
    """``NAME`` (from the passwd file) or numeric ``UID[:GID]`` (any image, no passwd entry)."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _as_file_user(uid: int | None, gid: int | None) -> Iterator[None]:
    """File accesses of this thread checked and owned as ``uid``:``gid`` (the sandbox user).

    The agent is root with only SETUID, SETGID and KILL: it may not write into the sandbox
    user's workspace as root, and must not (what it creates belongs to the user, and the user's
    permissions are the ones that apply). The file-system ids are per thread, so interpreters
    and the other threads keep theirs. Without root or a user to act as, a no-op.
    """
    if uid is None or os.geteuid() != 0:
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.setfsgid(gid if gid is not None else uid)
    libc.setfsuid(uid)
    if libc.setfsuid(uid) == uid:  # setfsuid answers the previous id, never an error
        try:
            yield
        finally:
            libc.setfsuid(0)
            libc.setfsgid(0)
        return
    # No per-thread file-system ids (gVisor does not implement them): the effective ids of the
    # whole agent instead, which is safe because only the request thread acts while they are
    # switched (the reaper only waits for children).
    libc.setfsuid(0)
    libc.setfsgid(0)
    os.setegid(gid if gid is not None else uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _protect_self() -> None:
    """Keep user code away from the agent's memory and from privileges it could gain.

    Not dumpable: its /proc/PID files (mem, environ, fd) belong to root and ptrace is refused,
    even for a process of the same uid. No new privileges: inherited by every interpreter and
    everything user code starts, so no setuid binary or file capability ever raises them (the
    agent itself never needs to gain any, and setuid() for the interpreters is not an exec).
    """
    if not _prctl(PR_SET_DUMPABLE, 0):
        log("cannot make the agent non-dumpable")
    if not _prctl(PR_SET_NO_NEW_PRIVS, 1):
        log("cannot set no_new_privs")


class Agent:
    def __init__(
        self, workdir: str, user: str | None, max_processes: int | None = None, preload: str = ""
    ) -> None:
        self.workdir = workdir if os.path.isdir(workdir) else "/"
        self.preload = preload
        self.max_processes = max_processes
        # RLIMIT_NPROC counts every process of a user, so it is only set when the interpreters
        # run as a user of their own (--user): in a microVM, that user's processes are the
        # sandbox's. Set in the child after the switch to that user (lowering needs no
        # privilege); the only case that pays for a preexec_fn.
        self.limit_processes: Callable[[], None] | None = None
        self.user_uid: int | None = None
        self.user_gid: int | None = None
        home = workdir
        if user and os.getuid() == 0:
            self.user_uid, self.user_gid = _user_ids(user)
        if max_processes and self.user_uid is not None:
            import resource

            def limit_processes() -> None:
                resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))

            self.limit_processes = limit_processes
        self.child_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TERM": "dumb",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "NODE_DISABLE_COLORS": "1",
            "NO_COLOR": "1",
            # Figures render off-screen into the result.
            "MPLBACKEND": "Agg",
        }
        # matplotlib's caches (prebuilt font cache) stay out of the workspace, whose changes
        # each result lists.
        self.child_env.update(_cache_dirs(self.user_uid, self.user_gid))
        # PID 1 with interpreters under a uid of their own: the whole sandbox is ours to sweep.
        self._sweep_uid = self.user_uid if os.getpid() == 1 else None
        self._pid_max = _pid_max()
        # The sweep's shortcut needs a known clean state: the first execution sweeps in full.
        self._clean = False
        self._running_since: tuple[tuple[bool, int], float] | None = None
        _become_subreaper()
        self.files = WorkspaceFiles(self.workdir, self.user_uid, self.user_gid)
        self.reaper = Reaper()
        self.interpreters = {language: Interpreter(language, self) for language in LANGUAGES}
        try:
            self._start("python")
        except OSError as exc:
            log(f"python is not available: {exc}")

    def _start(self, language: str) -> Interpreter:
        interpreter = self.interpreters[language]
        if not interpreter.alive:
            interpreter.close()
            interpreter.start()
        return interpreter

    # --- operations -------------------------------------------------------------------------

    def handle(self, frame: object, link: HostLink) -> None:
        send = link.send
        if not isinstance(frame, dict):
            send({"id": None, "type": "error", "code": "bad_request", "message": "not an object"})
            return
        request_id = frame.get("id")
        op = frame.get("op")
        try:
            if op == "ping":
                send({"id": request_id, "type": "pong", "version": VERSION})
            elif op == "execute":
                self._execute(request_id, frame, send)
            elif op == "reseed":
                send({"id": request_id, "type": "reseeded", "ok": self._reseed(frame)})
            elif isinstance(op, str) and op in FILE_OPS:
                self.files.handle(request_id, op, frame, link)
            else:
                raise BadRequestError("unknown_op", f"unknown op {op!r}")
        except BadRequestError as exc:
            send({"id": request_id, "type": "error", "code": exc.code, "message": str(exc)})
        except HostGoneError:
            raise
        except Exception as exc:
            # A bug in one request must not take the agent down with the sandbox's state.
            log(f"internal error in {op}: {exc!r}")
            send({"id": request_id, "type": "error", "code": "internal", "message": repr(exc)})

    def _execute(self, request_id: object, frame: dict[str, Any], send: Send) -> None:
        language, code, timeout_s, limit = _execute_arguments(frame, self.interpreters)
        host_gone = False

        def sink(stream: str, data: str) -> None:
            # If the host went away mid-run, let the code finish (its state is kept) and fail
            # on the result frame instead.
            nonlocal host_gone
            if not host_gone:
                try:
                    send({"id": request_id, "type": "output", "stream": stream, "data": data})
                except HostGoneError:
                    host_gone = True

        live_sink = sink if frame.get("stream") else None
        outputs = RichOutputs(
            (lambda item: send({"id": request_id, "type": "display", **item}))
            if frame.get("stream")
            else None
        )
        stdout = OutputBuffer("stdout", limit, live_sink)
        stderr = OutputBuffer("stderr", limit, live_sink)
        started = time.monotonic()
        before = self.files.before_execution()
        interpreter = self.interpreters[language]
        outcome: str
        exit_code: int | None
        try:
            self._start(language)
        except OSError as exc:
            # The sandbox is fine, it just lacks this interpreter: a result, like a shell's 127.
            stderr.feed(f"sandboxd: cannot start the {language} interpreter: {exc}\n".encode())
            outcome, exit_code = "done", 127
        else:
            # Where the pid counter stood when the code went in (the sweep's shortcut).
            self._running_since = _pid_mark(), time.monotonic()
            try:
                payload = interpreter.encode("run", code)
                outcome, exit_code = interpreter.run(
                    payload, started + timeout_s, stdout, stderr, outputs.add, live_sink is not None
                )
            finally:
                self._running_since = None
        state_lost = self._settle(interpreter, outcome)
        changed, changed_truncated = self.files.changed_since(before)
        send(
            {
                "id": request_id,
                "type": "result",
                "stdout": stdout.text(),
                "stderr": stderr.text(),
                "exit_code": exit_code,
                "duration_s": round(time.monotonic() - started, 6),
                "timed_out": outcome == "timeout",
                "stdout_truncated": stdout.truncated,
                "stderr_truncated": stderr.truncated,
                "state_lost": state_lost,
                "outputs": outputs.items,
                "outputs_truncated": outputs.truncated,
                "changed_files": changed,
                "changed_files_truncated": changed_truncated,
            }
        )
        if state_lost and language == "python":
            # Keep the next python execution as fast as the first one.
            with contextlib.suppress(OSError):
                self._start("python")

    def _settle(self, interpreter: Interpreter, outcome: str) -> bool:
        """Clean up after one execution; True when the interpreter's state is gone.

        Every process the execution started dies here, whatever it did to get away (setsid, a
        double fork, nohup): all descendants of the agent except the live interpreters. Orphans
        are re-parented to the agent (PID 1, or a child subreaper), so none is missed.
        """
        if outcome == "timeout":
            interpreter.kill()
            self.sweep()
        # "done" and "died" swept before reading the rest of the output (Interpreter.run).
        return outcome in ("timeout", "died")

    def sweep(self) -> None:
        """Kill every process user code left: all but the agent and the live interpreters.

        A fork bomb is a moving target: its processes fork and exit faster than /proc can be
        read (a listing under TCG can take seconds), so a listing that finds nothing proves
        nothing unless no process was created while it ran (the pid namespace's id counter did
        not move: _pid_mark). Everything found is stopped first: a stopped process
        cannot fork and keeps its slot under the process limit, so the bomb cannot refill what
        the sweep frees. Once a quiet listing finds nothing that still runs, SIGKILL ends them.

        Listing /proc reads a file per process, kernel threads included: about 50 files in an
        idle microVM, 40-200 ms under TCG on a loaded host, on every execution. So an execution
        that cannot have started a process skips it (_nothing_started).
        """
        if not self._nothing_started():
            self._clean = self._sweep()

    def _nothing_started(self) -> bool:
        """True when the execution running now left no process: the sweep before it left none,
        and no pid was handed out since the code went in (the counter did not move, and the
        execution was too short for it to have gone all the way round)."""
        running_since = self._running_since
        if running_since is None or not self._clean or self._pid_max is None:
            return False
        mark, began = running_since
        return (time.monotonic() - began) * MAX_PID_RATE < self._pid_max and _no_pid_since(mark)

    def _sweep(self) -> bool:
        """Sweep /proc; True when nothing of user code can be left (a quiet listing)."""
        keep = {
            interpreter.process.pid
            for interpreter in self.interpreters.values()
            if interpreter.alive and interpreter.process is not None
        }
        me = os.getpid()
        deadline = time.monotonic() + SWEEP_S
        quiet = False
        while True:
            mark = _pid_mark()
            strays = _strays(me, keep, self._sweep_uid)
            running = [pid for pid, state in strays if state not in (b"T", b"t")]
            if not running and _no_pid_since(mark):
                quiet = True
                break
            if time.monotonic() > deadline:
                break
            _signal_all(running, signal.SIGSTOP)
        if not strays:
            return quiet
        deadline = time.monotonic() + KILL_GRACE_S
        while strays:
            _signal_all([pid for pid, _state in strays], signal.SIGKILL)
            if time.monotonic() > deadline:
                log(f"{len(strays)} processes survived the sweep")
                return False
            time.sleep(0.001)
            strays = _strays(me, keep, self._sweep_uid)
        # The dead still count against the process limit until the reaper has collected them.
        while _orphan_zombies(me) and time.monotonic() < deadline:
            time.sleep(0.001)
        return quiet

    def _reseed(self, frame: dict[str, Any]) -> bool:
        try:
            entropy = base64.b64decode(frame.get("entropy") or "", validate=True)
        except (ValueError, TypeError) as exc:
            raise BadRequestError("bad_request", "entropy must be base64") from exc
        if not entropy:
            raise BadRequestError("bad_request", "entropy is empty")
        kernel = _add_kernel_entropy(entropy)
        _set_clock(frame.get("now"))
        seed = entropy[:64].hex()
        for interpreter in self.interpreters.values():
            if interpreter.alive and interpreter.language != "javascript":
                # The runner's RNG state was copied by the snapshot; re-seed it where we can.
                payload = (
                    str(int(seed[:8], 16) % 32768) if interpreter.language == "shell" else seed
                )
                sink_out = OutputBuffer("stdout", 0, None)
                sink_err = OutputBuffer("stderr", 0, None)
                interpreter.run(
                    interpreter.encode("reseed", payload), time.monotonic() + 5, sink_out, sink_err
                )
        return kernel


def _set_clock(now: object) -> None:
    """A restored microVM's clock stood still while it was a snapshot: take the host's (root)."""
    if isinstance(now, (int, float)) and not isinstance(now, bool) and os.geteuid() == 0:
        with contextlib.suppress(OSError, OverflowError, ValueError):
            time.clock_settime(time.CLOCK_REALTIME, float(now))


def _add_kernel_entropy(entropy: bytes) -> bool:
    """Credit the bytes to the kernel pool and reseed the CRNG from it (root with
    CAP_SYS_ADMIN); True only when both happened. Otherwise the bytes are just mixed in via
    /dev/urandom and the answer is False: the host treats that as a failed restore."""
    if os.geteuid() == 0:
        try:
            import fcntl
            import struct

            rndaddentropy = 0x40085203
            rndreseedcrng = 0x5207
            with open("/dev/random", "wb") as f:
                fcntl.ioctl(
                    f, rndaddentropy, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
                )
                # Reseed the CRNG from the pool now: VMs restored from one memory snapshot share
                # its CRNG state, and would otherwise keep giving the same bytes until the
                # kernel's next periodic reseed. Credit without the reseed is not enough.
                fcntl.ioctl(f, rndreseedcrng)
            return True
        except OSError as exc:
            log(f"reseed not credited by the kernel: {exc!r}")
    try:
        with open("/dev/urandom", "wb") as f:
            f.write(entropy)
    except OSError:
        return False
    return False


# --- workspace files --------------------------------------------------------------------------

FILE_OPS = ("file_write", "file_read", "file_list", "file_delete")
MUTATING_FILE_OPS = ("file_write", "file_delete")
# File content travels in binary data frames (see serve_stream): a header, then the raw bytes.
DATA_MAGIC = 0
DATA_HEADER = struct.Struct(">BQI")  # magic, request id, payload length
DATA_FRAME_MAX = 1024 * 1024
LIST_MAX_ENTRIES = 5000
LIST_MAX_SCANNED = 50000
# Changed files of an execution: a scan before and after, bounded on both counts.
CHANGED_MAX_SCANNED = 10000
CHANGED_MAX_REPORTED = 100
# Encoded bytes of a listing / of the changed files in a result (the host's frame caps).
LIST_MAX_BYTES = 4 * 1024 * 1024
CHANGED_MAX_BYTES = 256 * 1024
UPLOAD_PREFIX = ".sandboxd-upload-"
# 0 here would make every test of symlinks planted by user code fail: that is the point.
NOFOLLOW = os.O_NOFOLLOW


class FileRefusedError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkspacePaths:
    """The path policy: nothing outside the workspace is opened, created or listed.

    Paths are relative; every component is opened from its parent's directory fd with
    O_NOFOLLOW and compared with the entry itself, so symlinks planted by user code never lead
    out, whatever they point to.
    """

    def __init__(self, root: str, uid: int | None, gid: int | None) -> None:
        self.root = root
        self.uid, self.gid = uid, gid

    @staticmethod
    def check(path: object) -> str:
        if not isinstance(path, str) or not path or len(path) > 4096 or "\x00" in path:
            raise FileRefusedError("path_refused", "the path is empty, too long or has a NUL")
        if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
            raise FileRefusedError("path_refused", "the path must be relative, without '..'")
        return path

    def open_root(self) -> int:
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def parent(self, path: str, create: bool) -> tuple[int, str]:
        """An fd of the path's directory, reached without following any symlink, and the
        leaf name."""
        *parts, name = path.split("/")
        fd = self.open_root()
        try:
            for part in parts:
                flags = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | os.O_CLOEXEC
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise FileRefusedError("not_found", "no such file") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, flags, dir_fd=fd)
                    self.own(child)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise FileRefusedError(
                            "path_refused", "the path leads through a symlink or a file"
                        ) from exc
                    raise
                _same_entry_or_refuse(fd, part, child)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def open_leaf(self, dir_fd: int, name: str, flags: int) -> int:
        """A regular file in ``dir_fd``, never what a symlink there points to."""
        try:
            fd = os.open(name, flags | NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise FileRefusedError("not_found", "no such file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileRefusedError("path_refused", "the path is a symlink") from exc
            raise
        _same_entry_or_refuse(dir_fd, name, fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileRefusedError("not_found", "not a regular file")
        return fd

    def own(self, fd: int) -> None:
        """Files the agent makes belong to the sandbox user, as if user code had made them."""
        if self.uid is not None and os.geteuid() == 0:
            os.fchown(fd, self.uid, self.gid if self.gid is not None else -1)

    def walk(
        self,
        dir_fd: int,
        base: str,
        prefix: str,
        out: list[dict[str, Any]],
        budget: list[int],
        exact: bool = False,
    ) -> bool:
        """Regular files under ``dir_fd`` (closed here), symlinks not followed; True if cut."""
        try:
            with os.scandir(dir_fd) as scan:
                for entry in scan:
                    budget[0] -= 1
                    if budget[0] < 0 or (not exact and len(out) >= LIST_MAX_ENTRIES):
                        return True
                    path = base + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if not (prefix.startswith(path + "/") or path.startswith(prefix)):
                            continue
                        try:
                            child = os.open(
                                entry.name,
                                os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=dir_fd,
                            )
                        except OSError:
                            continue
                        if self.walk(child, path + "/", prefix, out, budget, exact):
                            return True
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and path.startswith(prefix)
                        and not entry.name.startswith(UPLOAD_PREFIX)
                    ):
                        info = entry.stat(follow_symlinks=False)
                        out.append(
                            {
                                "path": path,
                                "size": info.st_size,
                                "mtime": info.st_mtime,
                                "mtime_ns": info.st_mtime_ns,
                            }
                        )
        finally:
            os.close(dir_fd)
        return False


def _same_entry_or_refuse(dir_fd: int, name: str, opened: int) -> None:
    """Refuse (closing ``opened``) unless ``opened`` is the entry ``name`` itself, not what a
    symlink there points to. O_NOFOLLOW already refuses links where the kernel implements it;
    gVisor's does not for every open, so the entry is compared without following it."""
    try:
        entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        same = not stat.S_ISLNK(entry.st_mode) and (entry.st_dev, entry.st_ino) == (
            os.fstat(opened).st_dev,
            os.fstat(opened).st_ino,
        )
    except OSError:
        same = False
    if not same:
        os.close(opened)
        raise FileRefusedError("path_refused", "the path leads through a symlink")


class WorkspaceFiles:
    """The file operations and the changed-files scan, within WorkspacePaths' policy."""

    def __init__(self, root: str, uid: int | None, gid: int | None) -> None:
        self.paths = WorkspacePaths(root, uid, gid)
        self.uid, self.gid = uid, gid
        # One reused buffer for data frames: no allocation per MiB moved.
        self.buffer = bytearray(DATA_FRAME_MAX)
        # The listing the last execution ended with, which the next one starts from instead of
        # listing the workspace again (see before_execution); None when it must list afresh.
        self._after_last: Listing | None = None

    def handle(self, request_id: object, op: str, frame: dict[str, Any], link: HostLink) -> None:
        if op in MUTATING_FILE_OPS:
            # Dropped before the operation, so that even one that fails half-way is not taken
            # for a change the next execution made.
            self._after_last = None
        try:
            with _as_file_user(self.uid, self.gid):
                answer = getattr(self, op)(request_id, frame, link)
        except FileRefusedError as exc:
            answer = {"error": exc.code, "message": str(exc)}
        except OSError as exc:
            answer = {"error": _os_error_code(exc), "message": os.strerror(exc.errno or 0)}
        link.send({"id": request_id, "type": "file_ok", **answer})

    # Each operation returns the fields of its (last) file_ok answer.

    def file_write(
        self, request_id: object, frame: dict[str, Any], link: HostLink
    ) -> dict[str, Any]:
        """Answer "ready" (or a refusal), then take data frames until an empty one; the file
        is a temporary one in the target's directory until it is renamed over the target.
        A failure midway (too large, a full workspace) is answered after the last frame."""
        stream_id = _stream_id(request_id)
        path = self.paths.check(frame.get("path"))
        limit = frame.get("max_bytes")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BadRequestError("bad_request", "max_bytes must be a non-negative integer")
        dir_fd, name = self.paths.parent(path, create=True)
        temp = UPLOAD_PREFIX + os.urandom(8).hex()
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dir_fd,
            )
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            self.paths.own(fd)
            link.send({"id": request_id, "type": "file_ok"})
            size, digest, failure = self._receive(stream_id, fd, limit, link)
            if failure is not None:
                raise failure
            try:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError as exc:
                raise FileRefusedError("path_refused", "the path is a directory") from exc
            temp = ""
        finally:
            if temp:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
            os.close(fd)
            os.close(dir_fd)
        return {"path": path, "size": size, "sha256": digest}

    def _receive(
        self, stream_id: int, fd: int, limit: int, link: HostLink
    ) -> tuple[int, str, Exception | None]:
        """Write the data frames to ``fd`` up to the empty one; after a failure the rest is
        read and dropped, so that the stream stays in step with the host."""
        import hashlib

        digest = hashlib.sha256()
        size = 0
        failure: Exception | None = None
        view = memoryview(self.buffer)
        while length := link.receive_data(stream_id, view):
            chunk = view[:length]
            size += length
            if failure is not None:
                continue
            if size > limit:
                failure = FileRefusedError("too_large", f"the file is larger than {limit} bytes")
                continue
            try:
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
            except OSError as exc:
                failure = exc
                continue
            digest.update(view[:length])
        return size, digest.hexdigest(), failure

    def file_read(
        self, request_id: object, frame: dict[str, Any], link: HostLink
    ) -> dict[str, Any]:
        import hashlib

        stream_id = _stream_id(request_id)
        path = self.paths.check(frame.get("path"))
        dir_fd, name = self.paths.parent(path, create=False)
        try:
            fd = self.paths.open_leaf(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
        finally:
            os.close(dir_fd)
        digest = hashlib.sha256()
        size = 0
        view = memoryview(self.buffer)
        with os.fdopen(fd, "rb", buffering=0) as f:
            while length := f.readinto(view):
                chunk = view[:length]
                digest.update(chunk)
                size += length
                link.send_data(stream_id, chunk)
        return {"path": path, "size": size, "sha256": digest.hexdigest()}

    def file_list(self, _id: object, frame: dict[str, Any], _link: HostLink) -> dict[str, Any]:
        prefix = frame.get("prefix") or ""
        if not isinstance(prefix, str):
            raise BadRequestError("bad_request", "prefix must be a string")
        entries: list[dict[str, Any]] = []
        truncated = self.paths.walk(self.paths.open_root(), "", prefix, entries, [LIST_MAX_SCANNED])
        entries.sort(key=lambda entry: entry["path"])
        kept = _within_budget(
            [{"path": e["path"], "size": e["size"], "mtime": e["mtime"]} for e in entries],
            LIST_MAX_BYTES,
        )
        return {"entries": kept, "truncated": truncated or len(kept) < len(entries)}

    def file_delete(self, _id: object, frame: dict[str, Any], _link: HostLink) -> dict[str, Any]:
        path = self.paths.check(frame.get("path"))
        dir_fd, name = self.paths.parent(path, create=False)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                raise FileRefusedError("path_refused", "the path is a directory")
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return {}

    # --- files an execution created or changed ---

    def before_execution(self) -> Listing:
        """What an execution's changed files are measured against: the listing the previous
        execution ended with, or a new one after a file operation, a cut listing, or at first.

        Between executions nothing but the file operations (which drop it) writes into the
        workspace, save a thread that code left running in an interpreter: what such a thread
        writes between two executions is reported with the next one (a new listing here would
        hide it for good). Saves one walk of up to CHANGED_MAX_SCANNED entries per execution.
        """
        kept = self._after_last
        return kept if kept is not None else self.snapshot()

    def snapshot(self) -> Listing:
        """(mtime_ns, size) of the workspace's regular files (bounded) and whether it was cut."""
        entries: list[dict[str, Any]] = []
        try:
            root = self.paths.open_root()
            cut = self.paths.walk(root, "", "", entries, [CHANGED_MAX_SCANNED], exact=True)
        except OSError:
            return {}, True
        return {e["path"]: (e["mtime_ns"], e["size"]) for e in entries}, cut

    def changed_since(self, before: Listing) -> tuple[list[dict[str, Any]], bool]:
        old, old_cut = before
        new, new_cut = after = self.snapshot()
        # A cut listing is not kept: which entries it holds depends on the order of the walk.
        self._after_last = None if new_cut else after
        changed = [
            {"path": path, "size": size}
            for path, (mtime_ns, size) in sorted(new.items())
            if old.get(path) != (mtime_ns, size)
        ]
        reported = _within_budget(changed[:CHANGED_MAX_REPORTED], CHANGED_MAX_BYTES)
        return reported, old_cut or new_cut or len(reported) < len(changed)


def _os_error_code(exc: OSError) -> str:
    return "workspace_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "not_found"


def _stream_id(request_id: object) -> int:
    """Data frames name their request by a number: file transfers need an integer id."""
    if (
        not isinstance(request_id, int)
        or isinstance(request_id, bool)
        or not (0 <= request_id < 2**64)
    ):
        raise BadRequestError("bad_request", "a file transfer needs an unsigned integer id")
    return request_id


def _within_budget(entries: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The leading entries whose JSON fits in ``budget`` bytes (long, odd names are costly)."""
    kept = []
    for entry in entries:
        budget -= len(json.dumps(entry, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 2
        if budget < 0:
            break
        kept.append(entry)
    return kept


class HostGoneError(Exception):
    """Writing to the host failed: the connection is gone."""


class BadRequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- transports -------------------------------------------------------------------------------


def serve_stream(agent: Agent, link: HostLink) -> None:
    """Serve one host connection until end of file (or until it is handed over)."""
    while True:
        line = link.read_line()
        if not line:
            return
        if not line.endswith(b"\n") and len(line) >= MAX_REQUEST_BYTES:
            while line and not line.endswith(b"\n"):
                line = link.read_line()
            link.send(
                {"id": None, "type": "error", "code": "bad_request", "message": "frame too large"}
            )
            continue
        if not line.strip():
            continue
        try:
            frame = json.loads(line)
        except ValueError:
            link.send(
                {"id": None, "type": "error", "code": "bad_request", "message": "invalid JSON"}
            )
            continue
        agent.handle(frame, link)


class HostLink:
    """One host connection's frames: JSON lines, and binary data frames for file content.

    A data frame is DATA_HEADER (the byte 0, which no JSON line starts with; the request id,
    uint64; the payload length, uint32, at most DATA_FRAME_MAX; big-endian) and the payload.
    Data frames only come where the protocol says so (an upload after its "ready" answer);
    a forged one (another id, a length past the cap, not a data frame at all) or an end of
    file inside one ends the connection (HostGoneError): the stream cannot be trusted after.
    """

    def __init__(
        self,
        read_line: Callable[[], bytes],
        read_into: Callable[[memoryview], int],
        write: Callable[[Any], object],
    ) -> None:
        self.read_line = read_line
        self._read_into = read_into
        self._write = write
        self._header = bytearray(DATA_HEADER.size)

    def send(self, frame: dict[str, Any]) -> None:
        self._send((json.dumps(frame, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))

    def send_data(self, request_id: int, data: memoryview) -> None:
        self._send(DATA_HEADER.pack(DATA_MAGIC, request_id, len(data)))
        self._send(data)

    def receive_data(self, request_id: int, into: memoryview) -> int:
        """The next data frame's payload, into ``into``; its length (0: the last frame)."""
        self._fill(memoryview(self._header))
        magic, frame_id, length = DATA_HEADER.unpack(self._header)
        if magic != DATA_MAGIC or frame_id != request_id or length > min(len(into), DATA_FRAME_MAX):
            raise HostGoneError(f"a forged data frame (id {frame_id}, {length} bytes)")
        self._fill(into[:length])
        return int(length)

    def _fill(self, view: memoryview) -> None:
        while view:
            got = self._read_into(view)
            if not got:
                raise HostGoneError("the host's stream ended inside a data frame")
            view = view[got:]

    def _send(self, data: Any) -> None:
        try:
            self._write(data)
        except OSError as exc:
            raise HostGoneError(str(exc)) from exc


class HandOverError(Exception):
    """Another host connection is waiting while the current one is idle."""

    def __init__(self, waiting: socket.socket) -> None:
        super().__init__("handing over to a waiting connection")
        self.waiting = waiting


class PeerPolicy:
    """Who may talk to the agent on its socket: the host, never code in the sandbox.

    SO_PEERCRED gives the connecting process's uid and its pid as seen from the agent's pid
    namespace. Refused: the interpreters' uid (``--user``), and, when the agent is PID 1 (a
    container: its own pid namespace), any peer with a pid, because the host's processes live
    outside that namespace and show as pid 0. Under gVisor (runsc with --host-uds=create) a host
    connection is no task of the sandbox's kernel and shows as pid 1 uid 0, the agent's own
    credentials: accepted too, since the agent never connects to its own socket and nothing
    else in the sandbox is PID 1 (there, processes inside cannot connect to a host-backed socket
    at all: EPERM, even as root). A refused connection is closed at once, before it can send a
    byte or cost the host its own connection (no hand-over).
    """

    def __init__(self, sandbox_uid: int | None, host_outside_pid_namespace: bool) -> None:
        self.sandbox_uid = sandbox_uid
        self.host_outside_pid_namespace = host_outside_pid_namespace

    def refusal(self, connection: socket.socket) -> str | None:
        """Why the peer is refused, or None when it may be served."""
        try:
            creds = connection.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
        except OSError as exc:
            return f"no peer credentials: {exc}"
        pid, uid, _gid = struct.unpack("3i", creds)
        return self.judge(pid, uid)

    def judge(self, pid: int, uid: int) -> str | None:
        if self.sandbox_uid is not None and uid == self.sandbox_uid:
            return f"peer uid {uid} is the sandbox user"
        if self.host_outside_pid_namespace and pid not in (0, 1):
            return f"peer pid {pid} is inside the sandbox"
        return None

    def accept(self, server: socket.socket) -> socket.socket | None:
        connection, _ = server.accept()
        reason = self.refusal(connection)
        if reason is None:
            return connection
        log(f"refused a connection: {reason}")
        connection.close()
        return None


class ConnectionReader:
    """Lines from one host connection, watching the listening socket between requests.

    When a second host process connects (the next CLI call, another replica that now holds the
    chat's lock) while the current connection is idle, the current one is handed over: closed
    with no request in flight, so its owner can safely reconnect and resend. A connection in
    the middle of a request is never interrupted.
    """

    def __init__(
        self, connection: socket.socket, server: socket.socket, policy: PeerPolicy
    ) -> None:
        self._connection = connection
        self._server = server
        self._policy = policy
        self._buffer = bytearray()

    def read_into(self, view: memoryview) -> int:
        """Bytes of a data frame: what is buffered first, then straight from the socket (a
        request is in flight: no hand-over)."""
        if self._buffer:
            taken = min(len(view), len(self._buffer))
            view[:taken] = self._buffer[:taken]
            del self._buffer[:taken]
            return taken
        return self._connection.recv_into(view)

    def read_line(self) -> bytes:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0 or len(self._buffer) >= MAX_REQUEST_BYTES:
                end = newline + 1 if newline >= 0 else MAX_REQUEST_BYTES
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            watched = [self._connection] if self._buffer else [self._connection, self._server]
            readable, _, _ = select.select(watched, [], [])
            if self._connection in readable:
                data = self._connection.recv(READ_CHUNK)
                if not data:
                    rest = bytes(self._buffer)
                    self._buffer.clear()
                    return rest
                self._buffer += data
            elif self._server in readable:
                waiting = self._policy.accept(self._server)
                if waiting is not None:
                    raise HandOverError(waiting)


def listen(agent: Agent, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    _restrict_socket(path)
    server.listen(8)
    policy = PeerPolicy(agent.user_uid, host_outside_pid_namespace=os.getpid() == 1)
    log(f"listening on {path}")
    waiting: socket.socket | None = None
    while True:
        connection = waiting or policy.accept(server)
        waiting = None
        if connection is None:
            continue
        try:
            reader = ConnectionReader(connection, server, policy)
            serve_stream(agent, HostLink(reader.read_line, reader.read_into, connection.sendall))
        except HandOverError as handover:
            waiting = handover.waiting
        except (OSError, HostGoneError) as exc:
            log(f"connection lost: {exc}")
        finally:
            connection.close()


def _restrict_socket(path: str) -> None:
    """Only the owner of the channel directory (the host's service user) may connect.

    Best effort: gVisor refuses chmod on a socket bound on a host mount; the peer check and the
    directory's own permissions still hold there.
    """
    try:
        owner = os.stat(os.path.dirname(path) or ".")
        here = os.stat(path)
        if (here.st_uid, here.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path, owner.st_uid, owner.st_gid)
        os.chmod(path, 0o600)
    except OSError as exc:
        log(f"cannot restrict the socket's permissions: {exc}")


def serve_device(agent: Agent, path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    # Root's alone (devtmpfs makes it so; make sure): user code must never open the port.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    if os.isatty(fd):
        import termios
        import tty

        # A tty in cooked mode echoes the input back and mangles newlines: make it a byte pipe.
        tty.setraw(fd, termios.TCSANOW)
    reader = io.BufferedReader(io.FileIO(os.dup(fd), "rb"), READ_CHUNK)

    def write(data: Any) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    log(f"serving on {path}")
    while True:
        try:
            link = HostLink(
                functools.partial(reader.readline, MAX_REQUEST_BYTES), reader.readinto, write
            )
            serve_stream(agent, link)
        except (OSError, HostGoneError) as exc:
            log(f"device error: {exc}")
        # End of file: the host side is not connected; wait for it to come back.
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sandboxd guest agent")
    channel = parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--listen", metavar="PATH", help="Unix socket to listen on")
    channel.add_argument("--device", metavar="PATH", help="character device to serve on")
    parser.add_argument(
        "--user", help="run interpreters as this user, NAME or UID[:GID] (when started as root)"
    )
    parser.add_argument("--workdir", default="/workspace", help="interpreters' working directory")
    parser.add_argument(
        "--max-processes",
        type=int,
        help="with --user and no pids cgroup: RLIMIT_NPROC for the user's processes",
    )
    parser.add_argument(
        "--preload",
        default="",
        metavar="MOD,MOD",
        help="modules the first python interpreter imports before its first execution",
    )
    args = parser.parse_args(argv)
    # The host closing its end must never kill the agent.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _protect_self()
    if args.device and os.getpid() == 1:
        # PID 1 on a virtio port: the init of a microVM, whose kernel is the sandbox's alone
        # (never raised from a pid namespace: pid_max is the whole machine's).
        _raise_pid_max()
    agent = Agent(args.workdir, args.user, args.max_processes, args.preload)
    if args.listen:
        listen(agent, args.listen)
    else:
        serve_device(agent, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
