"""Service settings, read from the environment with the SANDBOXD_ prefix."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandboxd"


class Settings(BaseSettings):
    """Every knob of the service. Environment: SANDBOXD_<NAME>, e.g. SANDBOXD_TTL_SECONDS=600."""

    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="ignore")

    # Lifetimes: a sandbox dies after ttl_seconds without a message (sliding), and in any case
    # max_lifetime_seconds after it was created.
    ttl_seconds: float = Field(900.0, gt=0)
    max_lifetime_seconds: float = Field(4 * 3600.0, gt=0)

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Empty means the embedded default: SQLite in data_dir.
    database_url: str = ""
    # Unset: SQLite migrates itself to head on start, PostgreSQL never does (run sandboxd migrate).
    database_auto_migrate: bool | None = None
    database_pool_size: int = Field(5, gt=0)
    database_max_overflow: int = Field(10, ge=0)
    database_pool_timeout_seconds: float = Field(10.0, gt=0)
    database_connect_timeout_seconds: float = Field(5.0, gt=0)
    sqlite_busy_timeout_seconds: float = Field(5.0, gt=0)
    # How long a request waits for its chat's lock; above max_timeout_s, so a message can wait
    # out the execution ahead of it.
    lock_timeout_seconds: float = Field(360.0, gt=0)
    # PostgreSQL only: connections for chat-lock holders (one per chat being worked on), a pool
    # apart from the repository's so that holders cannot starve it.
    lock_max_connections: int = Field(64, gt=0)

    runtime: Literal["docker", "qemu"] = "docker"
    # Labels every runtime object; reconciliation only touches objects of its own instance.
    instance_id: str = "sandboxd"

    max_code_bytes: int = Field(256 * 1024, gt=0)
    default_timeout_s: float = Field(30.0, gt=0)
    max_timeout_s: float = Field(300.0, gt=0)
    max_output_bytes: int = Field(1024 * 1024, gt=0)

    # Service (sandboxd serve). Loopback by default: exposing it is a deliberate choice.
    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535)
    # Comma-separated bearer keys. Without any, serve refuses to start unless insecure_dev is on.
    api_keys: str = ""
    insecure_dev: bool = False
    cleanup_interval_seconds: float = Field(60.0, gt=0)
    # Executions running at once across HTTP and gRPC; past it callers get 429 / RESOURCE_EXHAUSTED.
    max_inflight_executions: int = Field(64, gt=0)
    # On shutdown, how long executions in flight may still finish.
    drain_seconds: float = Field(30.0, ge=0)

    # MicroVM runtime (runtime=qemu). accel "auto" probes KVM once and falls back to TCG.
    qemu_memory_mb: int = Field(256, ge=64)
    qemu_vcpus: int = Field(1, ge=1, le=16)
    qemu_accel: Literal["auto", "kvm", "tcg"] = "auto"
    # Start sandboxes from a memory snapshot of a booted VM instead of cold-booting each one.
    qemu_snapshot: bool = True
    # Where `sandboxd image build --runtime qemu` builds and caches the root filesystem, kernel,
    # initramfs and base image; empty means data_dir. VM work dirs and snapshots always live
    # under data_dir.
    qemu_image_dir: Path | None = None

    # Container runtime (runtime=docker). The defaults are the hardened ones; each is a knob.
    # Empty base URL: DOCKER_HOST or /var/run/docker.sock.
    docker_base_url: str = ""
    # Empty: the image `sandboxd image build` makes for this version (sandboxd-sandbox:<hash12>).
    # Any image with python3 and the agent at docker_agent_path works.
    docker_image: str = ""
    docker_image_repository: str = "sandboxd-sandbox"
    docker_agent_path: str = "/opt/sandboxd/agent.py"
    docker_memory_mb: int = Field(512, ge=32)
    docker_cpus: float = Field(1.0, gt=0)
    docker_pids_limit: int = Field(128, ge=16)
    docker_workspace_mb: int = Field(256, gt=0)
    docker_tmp_mb: int = Field(16, gt=0)
    # Numeric uid:gid (the workspace tmpfs is created owned by it).
    docker_user: str = Field("1000:1000", pattern=r"^\d+(:\d+)?$")
    docker_network: str = "none"
    docker_read_only_root: bool = True
    docker_drop_all_capabilities: bool = True
    docker_no_new_privileges: bool = True
    docker_start_timeout_s: float = Field(30.0, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)

    @property
    def max_lifetime(self) -> timedelta:
        return timedelta(seconds=self.max_lifetime_seconds)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'sandboxd.db'}"
