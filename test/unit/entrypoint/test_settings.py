"""Settings are grouped per concern, but every SANDBOXD_* variable keeps its name and meaning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from adapter.qemu.config import QemuSandboxConfig
from entrypoint.settings import DockerSettings, QemuSettings, Settings

ROOT = Path(__file__).resolve().parents[3]

# Variable -> (where it lands, a raw value, the parsed value). The names are published (README,
# deployments): a new setting adds a row, a renamed one must not silently lose its variable.
VARIABLES: dict[str, tuple[str, str, Any]] = {
    "SANDBOXD_DATA_DIR": ("data_dir", "/srv/sandboxd", Path("/srv/sandboxd")),
    "SANDBOXD_RUNTIME": ("runtime", "qemu", "qemu"),
    "SANDBOXD_INSTANCE_ID": ("instance_id", "replica-a", "replica-a"),
    "SANDBOXD_NODE_ID": ("node_id", "node-b", "node-b"),
    "SANDBOXD_TTL_SECONDS": ("lifetime.ttl_seconds", "600", 600.0),
    "SANDBOXD_MAX_LIFETIME_SECONDS": ("lifetime.max_lifetime_seconds", "7200", 7200.0),
    "SANDBOXD_RENEW_SLACK_FRACTION": ("lifetime.renew_slack_fraction", "0.25", 0.25),
    "SANDBOXD_DATABASE_URL": ("database.url", "sqlite://", "sqlite://"),
    "SANDBOXD_DATABASE_AUTO_MIGRATE": ("database.auto_migrate", "false", False),
    "SANDBOXD_DATABASE_POOL_SIZE": ("database.pool_size", "7", 7),
    "SANDBOXD_DATABASE_MAX_OVERFLOW": ("database.max_overflow", "3", 3),
    "SANDBOXD_DATABASE_POOL_TIMEOUT_SECONDS": ("database.pool_timeout_seconds", "2.5", 2.5),
    "SANDBOXD_DATABASE_CONNECT_TIMEOUT_SECONDS": ("database.connect_timeout_seconds", "4", 4.0),
    "SANDBOXD_SQLITE_BUSY_TIMEOUT_SECONDS": ("database.sqlite_busy_timeout_seconds", "9", 9.0),
    "SANDBOXD_LOCK_TIMEOUT_SECONDS": ("locks.timeout_seconds", "120", 120.0),
    "SANDBOXD_LOCK_MAX_CONNECTIONS": ("locks.max_connections", "16", 16),
    "SANDBOXD_LOCK_SWEEP_WAIT_SECONDS": ("locks.sweep_wait_seconds", "2", 2.0),
    "SANDBOXD_MAX_CODE_BYTES": ("limits.max_code_bytes", "1000", 1000),
    "SANDBOXD_DEFAULT_TIMEOUT_S": ("limits.default_timeout_s", "12", 12.0),
    "SANDBOXD_MAX_TIMEOUT_S": ("limits.max_timeout_s", "60", 60.0),
    "SANDBOXD_MAX_OUTPUT_BYTES": ("limits.max_output_bytes", "2048", 2048),
    "SANDBOXD_MAX_INFLIGHT_EXECUTIONS": ("limits.max_inflight_executions", "8", 8),
    "SANDBOXD_MAX_INFLIGHT_EXECUTIONS_PER_KEY": ("limits.max_inflight_executions_per_key", "3", 3),
    "SANDBOXD_MAX_SANDBOXES": ("limits.max_sandboxes", "20", 20),
    "SANDBOXD_MAX_SANDBOXES_PER_KEY": ("limits.max_sandboxes_per_key", "5", 5),
    "SANDBOXD_FAIR_SHARE_EXECUTIONS": ("limits.fair_share_executions", "6", 6),
    "SANDBOXD_MAX_STREAM_BUFFER_CHARS": ("limits.max_stream_buffer_chars", "4096", 4096),
    "SANDBOXD_MAX_FILE_BYTES": ("limits.max_file_bytes", "2048", 2048),
    "SANDBOXD_HOST": ("server.host", "0.0.0.0", "0.0.0.0"),
    "SANDBOXD_HTTP_PORT": ("server.http_port", "8081", 8081),
    "SANDBOXD_GRPC_PORT": ("server.grpc_port", "50052", 50052),
    "SANDBOXD_API_KEYS": ("server.api_keys", "a,b", "a,b"),
    "SANDBOXD_ADMIN_KEYS": ("server.admin_keys", "ops:s3cret", "ops:s3cret"),
    "SANDBOXD_INSECURE_DEV": ("server.insecure_dev", "true", True),
    "SANDBOXD_CLEANUP_INTERVAL_SECONDS": ("server.cleanup_interval_seconds", "5", 5.0),
    "SANDBOXD_DRAIN_SECONDS": ("server.drain_seconds", "1.5", 1.5),
    "SANDBOXD_READINESS_CACHE_SECONDS": ("server.readiness_cache_seconds", "2", 2.0),
    "SANDBOXD_GRPC_MAX_RECEIVE_MESSAGE_BYTES": (
        "server.grpc_max_receive_message_bytes",
        "65536",
        65536,
    ),
    "SANDBOXD_GRPC_MAX_SEND_MESSAGE_BYTES": ("server.grpc_max_send_message_bytes", "65536", 65536),
    "SANDBOXD_QEMU_MEMORY_MB": ("qemu.memory_mb", "128", 128),
    "SANDBOXD_QEMU_VCPUS": ("qemu.vcpus", "2", 2),
    "SANDBOXD_QEMU_ACCEL": ("qemu.accel", "tcg", "tcg"),
    "SANDBOXD_QEMU_SNAPSHOT": ("qemu.snapshot", "false", False),
    "SANDBOXD_QEMU_IMAGE_DIR": ("qemu.image_dir", "/srv/images", Path("/srv/images")),
    "SANDBOXD_QEMU_USER": ("qemu.user", "qemu-runner", "qemu-runner"),
    "SANDBOXD_QEMU_LOG_MAX_BYTES": ("qemu.log_max_bytes", "65536", 65536),
    "SANDBOXD_QEMU_PRELOAD": ("qemu.preload", "numpy,pandas", "numpy,pandas"),
    "SANDBOXD_DOCKER_BASE_URL": ("docker.base_url", "tcp://h:2375", "tcp://h:2375"),
    "SANDBOXD_DOCKER_IMAGE": ("docker.image", "img:1", "img:1"),
    "SANDBOXD_DOCKER_IMAGE_REPOSITORY": ("docker.image_repository", "repo", "repo"),
    "SANDBOXD_DOCKER_AGENT_PATH": ("docker.agent_path", "/agent.py", "/agent.py"),
    "SANDBOXD_DOCKER_MEMORY_MB": ("docker.memory_mb", "300", 300),
    "SANDBOXD_DOCKER_CPUS": ("docker.cpus", "0.5", 0.5),
    "SANDBOXD_DOCKER_PIDS_LIMIT": ("docker.pids_limit", "64", 64),
    "SANDBOXD_DOCKER_WORKSPACE_MB": ("docker.workspace_mb", "100", 100),
    "SANDBOXD_DOCKER_TMP_MB": ("docker.tmp_mb", "8", 8),
    "SANDBOXD_DOCKER_USER": ("docker.user", "2000:2000", "2000:2000"),
    "SANDBOXD_DOCKER_NETWORK": ("docker.network", "bridge", "bridge"),
    "SANDBOXD_DOCKER_RUNTIME": ("docker.runtime", "runsc", "runsc"),
    "SANDBOXD_DOCKER_READ_ONLY_ROOT": ("docker.read_only_root", "false", False),
    "SANDBOXD_DOCKER_DROP_ALL_CAPABILITIES": ("docker.drop_all_capabilities", "false", False),
    "SANDBOXD_DOCKER_NO_NEW_PRIVILEGES": ("docker.no_new_privileges", "false", False),
    "SANDBOXD_DOCKER_START_TIMEOUT_S": ("docker.start_timeout_s", "10", 10.0),
    "SANDBOXD_LOG_LEVEL": ("log.level", "debug", "debug"),
    "SANDBOXD_LOG_FORMAT": ("log.format", "json", "json"),
    "SANDBOXD_ENV_CACHE_MAX_MB": ("environments.env_cache_max_mb", "512", 512),
    "SANDBOXD_ENV_IMAGE_REPOSITORY": ("environments.env_image_repository", "envs", "envs"),
    "SANDBOXD_S3_BUCKET": ("environments.s3_bucket", "envs", "envs"),
    "SANDBOXD_S3_ENDPOINT_URL": (
        "environments.s3_endpoint_url",
        "http://127.0.0.1:9000",
        "http://127.0.0.1:9000",
    ),
    "SANDBOXD_S3_REGION": ("environments.s3_region", "eu-west-1", "eu-west-1"),
    "SANDBOXD_S3_MAX_CONCURRENT_UPLOADS": ("environments.s3_max_concurrent_uploads", "4", 4),
    "SANDBOXD_PACKAGE_ALLOWLIST": (
        "environments.package_allowlist",
        "/etc/sandboxd/allow.txt",
        Path("/etc/sandboxd/allow.txt"),
    ),
    "SANDBOXD_POOL_SIZE": ("pools.size", "4", 4),
    "SANDBOXD_QEMU_OVERLAY_POOL_RATIO": ("qemu.overlay_pool_ratio", "0.5", 0.5),
    "SANDBOXD_POOL_RATIO": ("pools.ratio", "0.25", 0.25),
    "SANDBOXD_POOL_HEALTH_INTERVAL_SECONDS": ("pools.health_interval_seconds", "3", 3.0),
    "SANDBOXD_POOL_HEALTH_TIMEOUT_SECONDS": ("pools.health_timeout_seconds", "0.5", 0.5),
}


def _read(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _all_fields() -> set[str]:
    top = {name for name in Settings.model_fields if name not in Settings.groups()}
    nested = {
        f"{group_name}.{field}"
        for group_name, group in Settings.groups().items()
        for field in group.model_fields
    }
    return top | nested


@pytest.fixture(autouse=True)
def _no_outside_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_each_variable_lands_in_its_field(variable: str, monkeypatch) -> None:
    path, raw, parsed = VARIABLES[variable]
    default = _read(Settings(), path)
    assert default != parsed, "the sample must differ from the default, or the test proves nothing"
    monkeypatch.setenv(variable, raw)
    assert _read(Settings(), path) == parsed


def test_every_field_has_its_variable_in_the_table() -> None:
    assert sorted(_all_fields() - {path for path, _, _ in VARIABLES.values()}) == []


def test_the_groups_flat_names_are_the_variables() -> None:
    flat = {f"SANDBOXD_{name.upper()}" for name in Settings.flat_names()}
    top = {f"SANDBOXD_{name.upper()}" for name in Settings.model_fields} - {
        f"SANDBOXD_{name.upper()}" for name in Settings.groups()
    }
    assert flat | top == set(VARIABLES)
    assert len(Settings.flat_names()) + len(top) == len(VARIABLES)  # no two fields share one


def test_every_variable_the_readme_names_is_a_setting() -> None:
    named = set(
        re.findall(r"SANDBOXD_[A-Z0-9_]*[A-Z0-9]\b(?![_*])", (ROOT / "README.md").read_text())
    )
    named -= {"SANDBOXD_TEST_POSTGRES_URL"}  # the test suite's, not the service's
    assert sorted(named - set(VARIABLES)) == []


def test_flat_keyword_arguments_land_in_their_group() -> None:
    settings = Settings(docker_memory_mb=300, host="0.0.0.0", sqlite_busy_timeout_seconds=9)
    assert settings.docker.memory_mb == 300
    assert settings.server.host == "0.0.0.0"
    assert settings.database.sqlite_busy_timeout_seconds == 9.0


def test_keyword_arguments_win_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SANDBOXD_DOCKER_MEMORY_MB", "300")
    monkeypatch.setenv("SANDBOXD_DOCKER_CPUS", "0.5")
    assert Settings(docker_memory_mb=400).docker.memory_mb == 400
    nested = Settings(docker=DockerSettings(memory_mb=500))
    assert (nested.docker.memory_mb, nested.docker.cpus) == (500, 0.5)


def test_invalid_values_are_refused_as_before(monkeypatch) -> None:
    monkeypatch.setenv("SANDBOXD_DOCKER_USER", "root")
    with pytest.raises(ValueError, match=r"docker\.user"):
        Settings()


def test_the_qemu_runtime_defaults_are_the_services() -> None:
    """Code that builds a QemuSandboxConfig without settings (tests, benchmarks) gets what a
    service with no settings runs: the preloaded modules and the guest memory."""
    config = QemuSandboxConfig(data_dir=Path("/d"), instance_id="i")
    settings = QemuSettings()
    assert ",".join(config.preload) == settings.preload == "numpy,pandas,matplotlib.pyplot"
    assert config.memory_mb == settings.memory_mb
