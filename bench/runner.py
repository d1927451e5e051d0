"""Runs every benchmark in one go and writes the report (``python -m bench``, ``bench/run``).

    bench/run [--quick] [--only STEP,...] [--skip STEP,...] [--wait-quiet SECONDS] [--strict]

Each benchmark is its own module printing one JSON object; they run one after another as
subprocesses, ``python -m bench.<module>`` from the project root, each in its own process group,
so a timeout or Ctrl-C reaches all of it and its ``finally`` blocks remove what it started.
Results land in bench/results/<time>-<mode>/:
raw/<step>.json and raw/<step>.log per step, report.json, report.md and chart.png;
bench/results/latest points at the newest run.

Exit status: 1 when a step that ran failed (an error, a lost result, a crash, a timeout), 0
otherwise. A part that cannot run here (the QEMU image set not built) is reported as
UNAVAILABLE, loudly, and does not fail the run. ``--strict`` also fails on a figure over target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report as report_module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GRACE_S = 90.0  # after SIGINT, how long a step may take to clean up before it is killed


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    timeout_s: float = 300.0
    needs_qemu: bool = False


STEPS = [
    Step("persistence", "bench.bench_persistence",
         ["--iterations", "2000", "--rows", "100000"], ["--iterations", "200", "--rows", "10000"],
         timeout_s=420),
    Step("floors", "bench.floors",
         ["--runs", "10", "--execs", "40", "--qemu-boots", "2"],
         ["--runs", "3", "--execs", "10", "--qemu-boots", "1"], timeout_s=300),
    Step("docker_runtime", "bench.bench_docker_runtime",
         ["--executes", "1000", "--starts", "15"], ["--executes", "100", "--starts", "3"]),
    Step("gvisor", "bench.bench_gvisor",
         ["--executes", "300", "--starts", "5"], ["--executes", "50", "--starts", "2"],
         timeout_s=420),
    Step("qemu_runtime", "bench.bench_qemu_runtime",
         ["--cold", "3", "--restores", "20", "--round-trips", "500", "--idle-vms", "3"],
         ["--cold", "1", "--restores", "3", "--round-trips", "50", "--idle-vms", "1"],
         timeout_s=420, needs_qemu=True),
    Step("http", "bench.bench_http", ["--seconds", "10"], ["--seconds", "2", "--warmup", "2"]),
    Step("grpc", "bench.grpc_bench", ["--seconds", "10"],
         ["--seconds", "2", "--serial", "50", "--warmup", "1"]),
    # The embedded store: its service CPU per execute next to PostgreSQL's.
    Step("http_sqlite", "bench.bench_http", ["--seconds", "10", "--store", "sqlite"],
         ["--seconds", "2", "--warmup", "2", "--store", "sqlite"]),
    Step("grpc_sqlite", "bench.grpc_bench", ["--seconds", "10", "--store", "sqlite"],
         ["--seconds", "2", "--serial", "50", "--warmup", "1", "--store", "sqlite"]),
    Step("load", "bench.load",
         ["--chats", "32", "--executes", "30", "--levels", "1,2,4,8,16,32,64"],
         ["--chats", "8", "--executes", "5", "--levels", "1,4,16"]),
    Step("cleanup", "bench.cleanup_bench", ["--sessions", "1000", "--running", "16"],
         ["--sessions", "100", "--running", "3"]),
    Step("density", "bench.density", ["--docker", "8", "--qemu", "3"],
         ["--docker", "2", "--qemu", "1"]),
    # Warm pools, one step per runtime so that one run reports both (the Pools issue).
    Step("pools_docker", "bench.bench_pools", ["--runtime", "docker", "--size", "3",
         "--samples", "8"], ["--runtime", "docker", "--size", "2", "--samples", "3"],
         timeout_s=420),
    Step("pools_qemu", "bench.bench_pools", ["--runtime", "qemu", "--size", "3",
         "--samples", "8"], ["--runtime", "qemu", "--size", "2", "--samples", "3"],
         timeout_s=600, needs_qemu=True),
]  # fmt: skip


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object a script printed; tolerates log lines before it."""
    text = stdout.strip()
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    found = None
    for index, char in enumerate(text):
        if char == "{" and (index == 0 or text[index - 1] == "\n"):
            try:
                value, _ = decoder.raw_decode(text[index:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found = value
    return found


def run_process(command: list[str], log_path: Path, timeout_s: float) -> tuple[int | None, str]:
    """Run in its own process group; SIGINT on timeout (cleanup runs), SIGKILL after GRACE_S.

    Returns (exit status or None on timeout, stdout)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout_s)
            return process.returncode, stdout
        except subprocess.TimeoutExpired:
            log(f"timed out after {timeout_s:.0f} s; interrupting it so that it cleans up")
            return None, _interrupt(process)
        except KeyboardInterrupt:
            log("interrupted; letting the running step clean up")
            _interrupt(process)
            raise


def _interrupt(process: subprocess.Popen[str]) -> str:
    try:
        os.killpg(process.pid, signal.SIGINT)
        stdout, _ = process.communicate(timeout=GRACE_S)
        return stdout or ""
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        return stdout or ""
    except ProcessLookupError:
        return ""


def qemu_unavailable() -> str | None:
    """Why the QEMU runtime cannot be measured here, or None when it can."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/setup.sh installs it)"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from entrypoint.settings import Settings; from adapter.qemu.image import "
            "load_qemu_image; s = Settings(); d = s.qemu.image_dir or s.data_dir; "
            "print('ok' if load_qemu_image(d) else d)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"the QEMU runtime does not load: {probe.stderr.strip()[-300:]}"
    if probe.stdout.strip() != "ok":
        return (
            f"no QEMU image set in {probe.stdout.strip()} "
            "(build it with `uv run sandboxd image build --runtime qemu`)"
        )
    return None


def foreign_activity() -> list[str]:
    """Other people's test runs and VMs that would disturb the figures."""
    found = []
    for pattern in ("qemu-system-x86_64", "pytest"):
        result = subprocess.run(
            ["pgrep", "-fa", pattern], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            pid = int(line.split()[0])
            if pid != os.getpid() and "pgrep" not in line:
                found.append(line[:160])
    return found


def wait_until_quiet(limit_s: float) -> tuple[bool, str]:
    deadline = time.monotonic() + limit_s
    while True:
        busy = foreign_activity()
        if not busy:
            return True, ""
        if time.monotonic() >= deadline:
            return False, f"({len(busy)} foreign processes: {'; '.join(busy[:3])})"
        log(f"waiting for a quiet machine: {len(busy)} qemu/pytest processes running")
        time.sleep(30)


def machine() -> dict[str, Any]:
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    mem_total = free.splitlines()[1].split()[1] if free else "?"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total": mem_total,
        "free_h": free.rstrip(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


def bench_container_ids() -> set[str]:
    """Ids of containers of any bench-* instance (every benchmark names its instance so)."""
    return {line.split()[0] for line in leaked_bench_containers()}


def leaked_bench_containers() -> list[str]:
    """Containers of any bench-* instance still there (reported, never removed: not ours)."""
    result = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=sandboxd.instance", "--format",
         '{{.ID}} {{.Label "sandboxd.instance"}}'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return [line for line in result.stdout.splitlines() if " bench-" in line]


def run_step(step: Step, args: argparse.Namespace, raw: Path, qemu_reason: str | None) -> dict:
    if step.needs_qemu and qemu_reason:
        log(f"{step.name}: UNAVAILABLE: {qemu_reason}")
        return {"status": "unavailable", "error": qemu_reason, "seconds": 0}
    command = [sys.executable, "-m", step.module, *(step.quick if args.quick else step.full)]
    log(f"{step.name}: {' '.join(command[1:])}")
    started = time.monotonic()
    before = bench_container_ids()
    returncode, stdout = run_process(command, raw / f"{step.name}.log", step.timeout_s)
    seconds = round(time.monotonic() - started, 1)
    # A step must remove what it started; what it left behind (new since it began) is removed
    # here, and the step fails for it.
    leaked = sorted(bench_container_ids() - before)
    if leaked:
        subprocess.run(["docker", "rm", "-f", *leaked], capture_output=True, check=False)
    data = parse_json(stdout)
    result: dict[str, Any] = {"status": "ok", "seconds": seconds, "command": command[1:]}
    if data is not None:
        result["data"] = data
    if returncode is None:
        result.update(status="failed", error=f"timed out after {step.timeout_s:.0f} s")
    elif returncode != 0:
        tail = (raw / f"{step.name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        result.update(status="failed", error=f"exit {returncode}: {' | '.join(tail)[-400:]}")
    elif data is None:
        result.update(status="failed", error="printed no JSON object")
    elif leaked:
        result.update(status="failed", error=f"left {len(leaked)} containers behind")
    if leaked:
        result["leaked_containers_removed"] = len(leaked)
        log(f"{step.name}: LEAKED {len(leaked)} containers; removed them")
    log(f"{step.name}: {result['status']} in {seconds} s {result.get('error', '')}".rstrip())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Run every sandboxd benchmark and report."
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: a minute or two")
    parser.add_argument("--only", default="", help="comma-separated steps to run")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long until no qemu or pytest process runs (polls every 30 s)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on a figure over target")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/<time>")
    args = parser.parse_args()
    names = [step.name for step in STEPS]
    only = [name for name in args.only.split(",") if name]
    skip = [name for name in args.skip.split(",") if name]
    unknown = [name for name in only + skip if name not in names]
    if unknown:
        parser.error(f"unknown steps {unknown}; steps are {names}")

    started_at = datetime.now(UTC)
    mode = "quick" if args.quick else "full"
    run_dir = args.out or RESULTS / f"{started_at:%Y%m%dT%H%M%SZ}-{mode}"
    raw = run_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    quiet, quiet_note = wait_until_quiet(args.wait_quiet)
    log(f"results in {run_dir}; machine quiet: {quiet} {quiet_note}".rstrip())
    meta: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "mode": mode,
        "command": "bench/run " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "quiet": quiet,
        "quiet_note": quiet_note,
        "waited_for_quiet_s": round((datetime.now(UTC) - started_at).total_seconds()),
        "load_before": round(os.getloadavg()[0], 2),
    }
    clock = time.monotonic()
    steps: dict[str, dict[str, Any]] = {}
    image = run_process([sys.executable, "-m", "entrypoint.cli", "image", "build"],
                        raw / "image.log", 900)  # fmt: skip
    if image[0] != 0:
        log("the Docker sandbox image does not build; see raw/image.log")
        steps["image"] = {"status": "failed", "error": "sandboxd image build failed"}
    qemu_reason = qemu_unavailable()
    if qemu_reason:
        log(f"QEMU RUNTIME UNAVAILABLE: {qemu_reason}")
    interrupted = False
    try:
        for step in STEPS:
            if (only and step.name not in only) or step.name in skip:
                continue
            steps[step.name] = {"status": "failed", "error": "interrupted (Ctrl-C)"}
            steps[step.name] = run_step(step, args, raw, qemu_reason)
            (raw / f"{step.name}.json").write_text(json.dumps(steps[step.name], indent=2))
    except KeyboardInterrupt:
        interrupted = True
    meta["seconds"] = round(time.monotonic() - clock, 1)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    leaks = leaked_bench_containers()
    if leaks:
        meta["leaked_bench_containers"] = leaks
        log(f"WARNING: {len(leaks)} bench-* containers still exist: {leaks[:5]}")
    report = report_module.build_report(steps, meta)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    chart = None
    try:
        from bench.chart import draw

        chart = draw(steps, run_dir / "chart.png")
    except Exception as exc:  # a chart failure must not lose the report
        log(f"chart failed: {type(exc).__name__}: {exc}")
    (run_dir / "report.md").write_text(report_module.render_markdown(report, chart))
    latest = RESULTS / "latest"
    if run_dir.parent == RESULTS:
        latest.unlink(missing_ok=True)
        latest.symlink_to(run_dir.name)
    print((run_dir / "report.md").read_text())
    log(f"report: {run_dir / 'report.md'}")
    if report["unavailable"]:
        log(f"UNAVAILABLE (not measured): {', '.join(report['unavailable'])}")
    failed = list(report["failed"])
    if failed:
        log(f"FAILED: {', '.join(failed)}")
    if interrupted:
        return 130
    if failed or (args.strict and report["over_target"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
