"""Service settings, grouped per concern, read from flat SANDBOXD_* environment variables.

Each group is a model of its own (``settings.docker.memory_mb``), but the environment stays
flat and unchanged: a field F of a group whose ``env_prefix`` is P reads ``SANDBOXD_<P><F>``,
so ``docker.memory_mb`` is SANDBOXD_DOCKER_MEMORY_MB and ``limits.max_code_bytes`` is
SANDBOXD_MAX_CODE_BYTES. A field whose variable does not follow that rule names it in the
group's ``env_names``. To add a setting, add a field to its group (with a comment saying what it
does); its variable follows from the rule. ``Settings(docker_memory_mb=...)`` with the flat name
works too (tests and scripts use it), as does ``Settings(docker=DockerSettings(...))``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from domain.pool import MAX_POOL_MEMBERS

ENV_PREFIX = "SANDBOXD_"
# Environment keys carry major.minor of it: a new release never reuses older environments.
SERVICE_VERSION = "0.1.0"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandboxd"


class SettingsGroup(BaseModel):
    """One concern's settings. Field F reads SANDBOXD_<env_prefix><F> unless env_names says."""

    model_config = ConfigDict(extra="forbid")

    env_prefix: ClassVar[str] = ""
    # Field name -> variable name (without SANDBOXD_), where the prefix rule does not hold.
    env_names: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def flat_names(cls) -> dict[str, str]:
        """Flat name (the variable without SANDBOXD_, lower case) -> field name."""
        return {cls.env_names.get(name, cls.env_prefix + name): name for name in cls.model_fields}


class LifetimeSettings(SettingsGroup):
    # A sandbox dies after ttl_seconds without a message (sliding), and in any case
    # max_lifetime_seconds after it was created.
    ttl_seconds: float = Field(default=900.0, gt=0)
    max_lifetime_seconds: float = Field(default=4 * 3600.0, gt=0)
    # A busy chat's record is rewritten about once per this fraction of the ttl rather than on
    # every message; an idle sandbox then lives up to ttl * (1 + fraction). 0: every message.
    renew_slack_fraction: float = Field(default=0.1, ge=0, le=1)

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)

    @property
    def renew_slack(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds * self.renew_slack_fraction)

    @property
    def max_lifetime(self) -> timedelta:
        return timedelta(seconds=self.max_lifetime_seconds)


class DatabaseSettings(SettingsGroup):
    env_prefix = "database_"
    env_names = {"sqlite_busy_timeout_seconds": "sqlite_busy_timeout_seconds"}

    # Empty means the embedded default: SQLite in data_dir (see Settings.effective_database_url).
    url: str = ""
    # Unset: SQLite migrates itself to head on start, PostgreSQL never does (run sandboxd migrate).
    auto_migrate: bool | None = None
    # PostgreSQL connections per replica: pool_size + max_overflow here, plus
    # locks.max_connections; the defaults (5 + 5 + 20 = 30) let 3 replicas share PostgreSQL's
    # default max_connections of 100 (97 for non-superusers).
    pool_size: int = Field(default=5, gt=0)
    max_overflow: int = Field(default=5, ge=0)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    sqlite_busy_timeout_seconds: float = Field(default=5.0, gt=0)


class LockSettings(SettingsGroup):
    env_prefix = "lock_"

    # How long a request waits for its chat's lock; above limits.max_timeout_s, so a message can
    # wait out the execution ahead of it.
    timeout_seconds: float = Field(default=360.0, gt=0)
    # PostgreSQL only: connections for chat-lock holders (one per chat being worked on, so at
    # most this many chats run at once per replica), a pool apart from the repository's so
    # that holders cannot starve it.
    max_connections: int = Field(default=20, gt=0)
    # How long the sweep waits for a chat's lock before skipping that chat this round (a long
    # execution holds it; the next round retries).
    sweep_wait_seconds: float = Field(default=0.5, gt=0)


class LimitSettings(SettingsGroup):
    max_code_bytes: int = Field(default=256 * 1024, gt=0)
    default_timeout_s: float = Field(default=30.0, gt=0)
    max_timeout_s: float = Field(default=300.0, gt=0)
    max_output_bytes: int = Field(default=1024 * 1024, gt=0)
    # Executions running at once across HTTP and gRPC; past it callers get 429 / RESOURCE_EXHAUSTED.
    max_inflight_executions: int = Field(default=64, gt=0)
    # Of those, one API key's at most, running or waiting behind its chat (unset: three
    # quarters of max_inflight_executions), so that one key's flood leaves slots for others.
    max_inflight_executions_per_key: int | None = Field(default=None, gt=0)
    # While other keys run executions (or did within the last second), each may run max(this,
    # the busiest other key's count) at once; its further ones wait, holding nothing. Unset:
    # half the host's CPUs (at least 1), so a flood leaves the other half to the other keys.
    fair_share_executions: int | None = Field(default=None, gt=0)
    # Live (running) sandboxes on this node; a new chat past it gets 429 sandbox_limit. Unset:
    # derived at start from the host's memory and the per-sandbox memory (logged).
    max_sandboxes: int | None = Field(default=None, gt=0)
    # Live sandboxes of one API key on this node (unset: no cap of its own).
    max_sandboxes_per_key: int | None = Field(default=None, gt=0)
    # Streamed output waiting for a client that does not read; past it the client is dropped
    # (the execution completes and is recorded).
    max_stream_buffer_chars: int = Field(default=1024 * 1024, gt=0)
    # One file of a chat's workspace (upload; 413 past it). The workspace's own size (its tmpfs)
    # bounds them all together (507 workspace_full).
    max_file_bytes: int = Field(default=100 * 1024 * 1024, gt=0)

    @property
    def effective_fair_share_executions(self) -> int:
        return self.fair_share_executions or max(1, (os.cpu_count() or 1) // 2)


class ServerSettings(SettingsGroup):
    """``sandboxd serve``. Loopback by default: exposing it is a deliberate choice."""

    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # Comma-separated bearer keys, each `name:secret` (a tenant: it sees only the chats it
    # created) or a bare secret (its name derived). Without any (nor admin_keys), serve refuses
    # to start unless insecure_dev is on.
    api_keys: str = ""
    # Same form; these keys see and manage every tenant's chats (operators, pools).
    admin_keys: str = ""
    insecure_dev: bool = False
    cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    # On shutdown, how long executions in flight may still finish.
    drain_seconds: float = Field(default=30.0, ge=0)
    # /readyz answers from a cache this old at most (probes never queue behind executions).
    readiness_cache_seconds: float = Field(default=1.0, ge=0)
    # gRPC message caps. A request is code (max_code_bytes) plus a little; a response carries
    # stdout and stderr (max_output_bytes each, UTF-8 may need up to 4 bytes per character).
    grpc_max_receive_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    grpc_max_send_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def admin_key_list(self) -> list[str]:
        return [key.strip() for key in self.admin_keys.split(",") if key.strip()]


class QemuSettings(SettingsGroup):
    """MicroVM runtime (runtime=qemu). accel "auto" probes KVM once and falls back to TCG."""

    env_prefix = "qemu_"

    # Guest memory, as the container's SANDBOXD_DOCKER_MEMORY_MB: user code keeps ~400 MiB beside
    # the preloaded interpreter (~110 MiB at 256). Guest pages never touched are never allocated
    # on the host: an idle VM restored from the snapshot costs about the same at 512 as at 256
    # (302 vs 296 MiB RSS, TCG, with the preload below); a busy one can use it all, so the
    # derived SANDBOXD_MAX_SANDBOXES (entrypoint.capacity) counts 512 per VM, half of 256's.
    memory_mb: int = Field(default=512, ge=64)
    vcpus: int = Field(default=1, ge=1, le=16)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    # Start sandboxes from a memory snapshot of a booted VM instead of cold-booting each one.
    snapshot: bool = True
    # Where `sandboxd image build --runtime qemu` builds and caches the root filesystem, kernel,
    # initramfs and base image; empty means data_dir. VM work dirs and snapshots always live
    # under data_dir.
    image_dir: Path | None = None
    # When the service runs as root, QEMU runs as this unprivileged user (scripts/setup.sh qemu
    # creates it); empty runs QEMU as the service's own user, which root may not do.
    user: str = "sandboxd-qemu"
    # Each VM's console and QEMU log files are capped at this size (one older file kept).
    log_max_bytes: int = Field(default=1024 * 1024, ge=4096)
    # Comma-separated modules the guest's python imports before the memory snapshot, outside the
    # user's namespace: a new chat's first `import pandas, matplotlib.pyplot` then answers at
    # once instead of taking 20-40 s under TCG, near the 30 s default timeout (and a fresh
    # interpreter with the files in the page cache still takes ~15-20 s: executing the modules
    # dominates, not reading them). The price: the snapshot grows from ~100 to ~210 MB and each
    # idle VM holds ~110 MiB more host RSS (186 -> 296 MiB at 256 MiB, TCG); a fork bomb now
    # forks a bigger interpreter, which the guest's process limit, nice 10 for user code and
    # 512 MiB contain (the conformance suite's bombs). Empty: nothing preloaded, denser VMs.
    preload: str = "numpy,pandas,matplotlib.pyplot"
    # qcow2 overlays kept ready per base image: max(1, int(host sandbox cap x ratio)); 0: off.
    overlay_pool_ratio: float = Field(default=0.0, ge=0, le=1)


class DockerSettings(SettingsGroup):
    """Container runtime (runtime=docker). The defaults are the hardened ones; each is a knob."""

    env_prefix = "docker_"

    # Empty base URL: DOCKER_HOST or /var/run/docker.sock.
    base_url: str = ""
    # Empty: the image `sandboxd image build` makes for this version (sandboxd-sandbox:<hash12>).
    # Any image with python3 and the agent at agent_path works.
    image: str = ""
    image_repository: str = "sandboxd-sandbox"
    agent_path: str = "/opt/sandboxd/agent.py"
    memory_mb: int = Field(default=512, ge=32)
    cpus: float = Field(default=1.0, gt=0)
    pids_limit: int = Field(default=128, ge=16)
    workspace_mb: int = Field(default=256, gt=0)
    tmp_mb: int = Field(default=16, gt=0)
    # Numeric uid:gid (the workspace tmpfs is created owned by it).
    user: str = Field(default="1000:1000", pattern=r"^\d+(:\d+)?$")
    network: str = "none"
    # The OCI runtime registered with dockerd: runc, or runsc (gVisor: a user-space kernel between
    # user code and the host; `scripts/setup.sh gvisor` registers it). Checked at start.
    runtime: str = Field(default="runc", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    read_only_root: bool = True
    drop_all_capabilities: bool = True
    no_new_privileges: bool = True
    start_timeout_s: float = Field(default=30.0, gt=0)


class EnvironmentSettings(SettingsGroup):
    """Package environments: the local cache (L2), the shared artifact store (L3, S3) and the
    allow-list. Variables: SANDBOXD_ENV_CACHE_MAX_MB, SANDBOXD_S3_*, SANDBOXD_PACKAGE_ALLOWLIST.
    S3 credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, ...) or boto's chain.
    """

    # Local environment images past this total are evicted least recently used first.
    env_cache_max_mb: int = Field(default=8192, gt=0)
    # Docker: environments are tagged <env_image_repository>:<key>.
    env_image_repository: str = "sandboxd-env"
    # Empty bucket: no L3, environments are only built and kept locally.
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_max_concurrent_uploads: int = Field(default=2, ge=1)
    # A file of package names, one per line (# comments); empty: any package is allowed.
    package_allowlist: Path | None = None


class PoolSettings(SettingsGroup):
    env_prefix = "pool_"

    # The default warm pool for the base environment (named "default", stored in the database
    # on start when absent): ``size`` idle sandboxes, or when size is 0, ratio x this host's
    # sandbox cap (limits.max_sandboxes, configured or derived from memory; at least 1).
    # Both 0 (the default): no default pool, every sandbox starts on demand.
    # At most MAX_POOL_MEMBERS (1000), as for pools defined through the API; members count
    # against SANDBOXD_MAX_SANDBOXES with the chats' sandboxes.
    size: int = Field(default=0, ge=0, le=MAX_POOL_MEMBERS)
    ratio: float = Field(default=0.0, ge=0, le=1)
    # The health loop pings idle members' agents every interval, each with this timeout; it
    # also picks up pool definitions changed by other replicas.
    health_interval_seconds: float = Field(default=10.0, gt=0)
    health_timeout_seconds: float = Field(default=1.0, gt=0)


class LogSettings(SettingsGroup):
    env_prefix = "log_"

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class _FlatEnvironment(PydanticBaseSettingsSource):
    """The SANDBOXD_* variables of the groups' fields, under their flat names.

    Settings folds them into the groups (``_fold_flat_names``), the same way as flat keyword
    arguments. Values stay strings; the group models parse them as the environment source would.
    """

    def __init__(self, settings_cls: type[BaseSettings], flat_names: set[str]) -> None:
        super().__init__(settings_cls)
        self._flat_names = flat_names

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Not used: __call__ reads the variables directly, as none maps to a single field.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in os.environ.items():
            key = name.lower()
            if key.startswith(ENV_PREFIX.lower()) and key[len(ENV_PREFIX) :] in self._flat_names:
                found[key[len(ENV_PREFIX) :]] = value
        return found


class Settings(BaseSettings):
    """Every knob of the service. Environment: SANDBOXD_<NAME>, e.g. SANDBOXD_TTL_SECONDS=600."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    runtime: Literal["docker", "qemu"] = "docker"
    # Labels every runtime object; reconciliation only touches objects of its own instance.
    # Empty: derived from data_dir (effective_instance_id), so two services with different
    # data directories on one Docker engine never remove each other's sandboxes.
    instance_id: str = ""
    # This host's name in session records: a chat's sandbox is served only by its node, and
    # reconciliation judges only its node's records. Empty: the hostname.
    node_id: str = ""

    lifetime: LifetimeSettings = Field(default_factory=LifetimeSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    locks: LockSettings = Field(default_factory=LockSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    qemu: QemuSettings = Field(default_factory=QemuSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    environments: EnvironmentSettings = Field(default_factory=EnvironmentSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    pools: PoolSettings = Field(default_factory=PoolSettings)

    @classmethod
    def groups(cls) -> dict[str, type[SettingsGroup]]:
        """Field name -> group model, for every group field."""
        return {
            name: field.annotation
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsGroup)
        }

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """Flat name (the variable without SANDBOXD_, lower case) -> (group, field)."""
        return {
            flat: (group_name, field_name)
            for group_name, group in cls.groups().items()
            for flat, field_name in group.flat_names().items()
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        flat_environment = _FlatEnvironment(settings_cls, set(cls.flat_names()))
        return init_settings, env_settings, flat_environment, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, values: Any) -> Any:
        """Move flat names (``docker_memory_mb``) into their group; a nested value given
        explicitly wins over a flat one."""
        if not isinstance(values, dict):
            return values
        folded = dict(values)
        for flat, (group_name, field_name) in cls.flat_names().items():
            if flat not in folded:
                continue
            value = folded.pop(flat)
            group = folded.get(group_name)
            if isinstance(group, SettingsGroup):
                group = group.model_dump(exclude_unset=True)
            group = dict(group or {})
            group.setdefault(field_name, value)
            folded[group_name] = group
        return folded

    @property
    def effective_instance_id(self) -> str:
        if self.instance_id:
            return self.instance_id
        digest = hashlib.sha256(str(self.data_dir.expanduser().absolute()).encode()).hexdigest()
        return f"sandboxd-{digest[:12]}"

    @property
    def effective_node_id(self) -> str:
        return self.node_id or socket.gethostname()

    @property
    def effective_database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'sandboxd.db'}"
