"""Helpers shared by the benchmarks of bench/run: statistics, memory readings, a service process.

Every script here prints one JSON object on stdout and cleans up what it started (service
processes, containers and VMs by their own instance id), also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
INSTANCE_LABEL = "sandboxd.instance"
# Raw samples kept in the JSON for the charts; more adds size, not information.
MAX_SAMPLES = 2000


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile, the same rule the other benchmark scripts use."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of samples given in seconds, in milliseconds."""
    if not samples_s:
        return {"n": 0}
    return {
        "n": len(samples_s),
        "p50": round(percentile(samples_s, 0.50) * 1000, 3),
        "p90": round(percentile(samples_s, 0.90) * 1000, 3),
        "p99": round(percentile(samples_s, 0.99) * 1000, 3),
        "max": round(max(samples_s) * 1000, 3),
        "mean": round(statistics.fmean(samples_s) * 1000, 3),
    }


def kept_samples_ms(samples_s: list[float]) -> list[float]:
    """An evenly thinned copy (at most MAX_SAMPLES) for the latency-distribution chart."""
    step = max(1, len(samples_s) // MAX_SAMPLES)
    return [round(value * 1000, 3) for value in samples_s[::step]]


def emit(report: dict[str, Any]) -> None:
    json.dump(report, sys.stdout, indent=2)
    print()
    sys.stdout.flush()


def sigterm_as_interrupt() -> None:
    """SIGTERM (the runner's timeout) unwinds like Ctrl-C, so every ``finally`` cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def proc_memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS splits shared pages among their users."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def mem_total_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_usage(pid: int) -> dict[str, tuple[float, int]]:
    """CPU seconds and voluntary context switches so far, per group of the process's threads.

    Groups: ``loop`` (the main thread: the event loop), the worker threads by their name
    without its number (``sandboxd``, named by WorkerThreads), grpc's C threads by theirs
    (``event_engine``...), and ``python`` for other Python threads (grpc.aio's completion queue
    poller among them). A thread that ended since an earlier reading takes its share with it.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    usage: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        group = "loop" if task.name == str(pid) else name.rstrip("0123456789").rstrip("_-")
        switches = int(status.split("voluntary_ctxt_switches:", 1)[1].split()[0])
        cpu, count = usage.get(group, (0.0, 0))
        usage[group] = (cpu + (int(fields[11]) + int(fields[12])) / ticks, count + switches)
    return usage


def thread_usage_per_execute(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], executes: int
) -> dict[str, dict[str, float]]:
    """Between two thread_usage readings: CPU ms and voluntary context switches per execute,
    per thread group. Every such switch is a sleep and a wake-up, the price of each hand-off
    between threads (about 40-70 us of CPU on the 2-vCPU VMs these figures come from)."""
    per: dict[str, dict[str, float]] = {}
    for group, (cpu, switches) in sorted(after.items()):
        cpu_then, switches_then = before.get(group, (0.0, 0))
        if switches > switches_then or cpu > cpu_then:
            per[group] = {
                "cpu_ms": round((cpu - cpu_then) / max(1, executes) * 1000, 3),
                "switches": round((switches - switches_then) / max(1, executes), 2),
            }
    return per


def remove_containers_of(instance_id: str) -> int:
    """Remove every container labelled with this instance id (ours only); returns how many."""
    ids = subprocess.run(
        [DOCKER, "ps", "-aq", "--filter", f"label={INSTANCE_LABEL}={instance_id}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for start in range(0, len(ids), 100):
        subprocess.run(
            [DOCKER, "rm", "-f", *ids[start : start + 100]], capture_output=True, check=False
        )
    return len(ids)


def remove_vms_left_by(service: Any) -> list[int]:
    """Kill the QEMU processes of the service's own VMs that outlived its graceful stop; returns
    their pids. Found by their command line, which names a disk in the service's (throwaway)
    data directory, so a VM whose work dir is gone is found too. A VM left behind is a finding,
    not routine: it is said on stderr (the step's log) with the tail of the service's log."""
    marker = f"{service.data_dir}/vms/".encode()
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command_line = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        program = command_line.split(b"\0", 1)[0]
        if b"qemu-system" in program and marker in command_line:
            left.append(int(proc.name))
    if left:
        print(
            f"WARNING: {len(left)} VM process(es) of {service.instance_id} outlived its stop "
            f"(pids {left}); killing them. The service's log ends:\n{service.log_tail(60)}",
            file=sys.stderr,
        )
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@contextmanager
def running_service(prefix: str, store: str = "postgresql", **settings: str) -> Iterator[Any]:
    """A real ``sandboxd serve`` on free loopback ports with a throwaway PostgreSQL database
    (``store="sqlite"``: the embedded SQLite file in its data directory).

    Yields the ServiceProcess of testkit/service.py (ports, api key, instance id). At the end
    the process is stopped, its containers are removed by its instance label, and the database
    and data directory are dropped.
    """
    from testkit.pg import temporary_database
    from testkit.service import ServiceProcess

    with (
        (
            temporary_database(f"sandboxd_{prefix}")
            if store == "postgresql"
            else contextlib.nullcontext("")
        ) as database_url,
        tempfile.TemporaryDirectory(prefix=f"sandboxd-{prefix}-") as data_dir,
    ):
        if database_url:
            settings = {**settings, "database_url": database_url}
        service = ServiceProcess(Path(data_dir), **settings)  # type: ignore[arg-type]
        service.instance_id = f"bench-{prefix}-{os.urandom(5).hex()}"
        try:
            subprocess.run(
                [sys.executable, "-m", "entrypoint.cli", "migrate"],
                cwd=ROOT,
                env=service.environment(),
                check=True,
                capture_output=True,
            )
            service.start()
            yield service
        finally:
            service.stop()
            remove_containers_of(service.instance_id)
            remove_vms_left_by(service)


def qemu_unavailable(image_dir: Path) -> str | None:
    """Why the QEMU benchmarks cannot run on this machine, or None when they can."""
    from adapter.qemu.image import load_qemu_image

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    if load_qemu_image(image_dir) is None:
        return (
            f"no QEMU image set in {image_dir} "
            "(build it with `uv run sandboxd image build --runtime qemu`)"
        )
    return None


class KeepAliveConnection:
    """A minimal HTTP/1.1 keep-alive client connection: POST with a bearer key, read the answer.

    httpx costs more client CPU per request than the service spends on it; on a 2-core machine
    the load generator would measure itself.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, api_key: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._head = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\n"
        )

    @classmethod
    async def open(cls, port: int, api_key: str) -> KeepAliveConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port, api_key)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        self._writer.write(head.encode() + body)
        status_line = await self._reader.readuntil(b"\r\n")
        headers = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()
