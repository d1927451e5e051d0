"""The real composition root wired with in-memory fakes, for API-level unit tests."""

from __future__ import annotations

from typing import Any

from dependency_injector import providers

from entrypoint.container import Container
from entrypoint.settings import Settings
from repository.pool_store import InMemoryPoolRepository
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from repository.sweep_leader import ProcessLocalSweepLeaderLock
from testkit.fakes import FakeFileStore, FakeLogger, FakeRuntime

API_KEY = "unit-test-key"
# An admin key (SANDBOXD_ADMIN_KEYS): pool management and every chat.
ADMIN_KEY = "unit-test-admin-key"


def make_container(runtime: FakeRuntime | None = None, **settings: Any) -> Container:
    """The real composition root, with the store, locks and runtime swapped for in-memory ones."""
    values: dict[str, Any] = {
        "api_keys": API_KEY,
        "admin_keys": ADMIN_KEY,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "drain_seconds": 5.0,
        "database_url": "sqlite://",
    }
    values.update(settings)
    container = Container()
    container.settings.override(providers.Object(Settings(**values)))
    container.repository.override(providers.Singleton(InMemorySandboxSessionRepository))
    container.pool_repository.override(providers.Singleton(InMemoryPoolRepository))
    container.locker.override(providers.Singleton(ProcessLocalSandboxLifecycleLocker))
    container.sweep_leader.override(providers.Singleton(ProcessLocalSweepLeaderLock))
    fake_runtime = runtime or FakeRuntime()
    container.runtime.override(providers.Object(fake_runtime))
    container.file_store.override(providers.Object(FakeFileStore(fake_runtime)))
    container.prepare_runtime.override(providers.Callable(lambda: None))
    container.logger.override(providers.Singleton(FakeLogger))
    container.access_logger.override(providers.Singleton(FakeLogger))
    return container


def recorded(logger: object) -> FakeLogger:
    """The FakeLogger that make_container wired in place of a logger, typed as such."""
    assert isinstance(logger, FakeLogger)
    return logger


AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
