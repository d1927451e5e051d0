"""How many sandboxes this node takes: SANDBOXD_MAX_SANDBOXES, or a default from its memory."""

from __future__ import annotations

from pathlib import Path

from entrypoint.settings import Settings
from usecase.ports import Logger
from usecase.sandbox import Placement

# Memory kept for the host itself, the service and the engine when deriving the default.
HOST_RESERVE_FRACTION = 0.2


def per_sandbox_mb(settings: Settings) -> int:
    """What one sandbox may hold in RAM: the container's limit plus its RAM-backed workspace
    and /tmp (tmpfs counts against the host, not the container), or the microVM's memory."""
    if settings.runtime == "qemu":
        return settings.qemu.memory_mb
    docker = settings.docker
    return docker.memory_mb + docker.workspace_mb + docker.tmp_mb


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_max_sandboxes(settings: Settings, total_bytes: int | None) -> int | None:
    """Sandboxes that fit in the host's memory less a reserve, all at their limit; None when the
    host's memory cannot be read (no cap then, and the start log says so)."""
    if total_bytes is None:
        return None
    usable_mb = total_bytes * (1 - HOST_RESERVE_FRACTION) / (1024 * 1024)
    return max(1, int(usable_mb // per_sandbox_mb(settings)))


def sandbox_capacity(settings: Settings) -> int | None:
    """This host's sandbox cap: SANDBOXD_MAX_SANDBOXES, else derived from its memory; None
    when that cannot be read. Pool ratios (SANDBOXD_POOL_RATIO, SANDBOXD_QEMU_OVERLAY_POOL_RATIO)
    are taken of it."""
    return settings.limits.max_sandboxes or default_max_sandboxes(settings, host_memory_bytes())


def placement(settings: Settings, logger: Logger) -> Placement:
    limits = settings.limits
    total = host_memory_bytes()
    cap = sandbox_capacity(settings)
    logger.info(
        "sandbox_capacity",
        {
            "node": settings.effective_node_id,
            "max_sandboxes": -1 if cap is None else cap,
            "derived": limits.max_sandboxes is None,
            "per_sandbox_mb": per_sandbox_mb(settings),
            "host_memory_mb": -1 if total is None else total // (1024 * 1024),
            "max_sandboxes_per_key": limits.max_sandboxes_per_key or -1,
        },
    )
    return Placement(
        node=settings.effective_node_id,
        max_sandboxes=cap,
        max_per_owner=limits.max_sandboxes_per_key,
    )
