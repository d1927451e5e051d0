"""Composition root: the only module that wires adapters to use cases.

Tests swap providers with ``container.<provider>.override(...)``.
"""

from __future__ import annotations

from dependency_injector import containers, providers

from adapter.clock import SystemClock
from adapter.logging import StructlogLogger
from entrypoint.settings import Settings
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from usecase.execute import ExecuteCode, ExecutionLimits
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import (
    CleanupExpiredSandboxes,
    CreateSandbox,
    DestroySandbox,
    GetSandbox,
    ListSandboxes,
    RenewSandbox,
)


def _execution_limits(settings: Settings) -> ExecutionLimits:
    return ExecutionLimits(
        max_code_bytes=settings.max_code_bytes, max_timeout_s=settings.max_timeout_s
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)

    clock = providers.Singleton(SystemClock)
    logger = providers.Singleton(StructlogLogger)

    repository = providers.Singleton(InMemorySandboxSessionRepository)
    locker = providers.Singleton(ProcessLocalSandboxLifecycleLocker)

    runtime_kind = providers.Callable(lambda settings: settings.runtime, settings)
    runtime = providers.Selector(runtime_kind)

    ttl = providers.Callable(lambda settings: settings.ttl, settings)
    max_lifetime = providers.Callable(lambda settings: settings.max_lifetime, settings)

    create_sandbox = providers.Factory(
        CreateSandbox,
        repository=repository,
        locker=locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
        ttl=ttl,
        max_lifetime=max_lifetime,
    )
    execute_code = providers.Singleton(
        ExecuteCode,
        repository=repository,
        locker=locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
        ttl=ttl,
        max_lifetime=max_lifetime,
        limits=providers.Callable(_execution_limits, settings),
    )
    get_sandbox = providers.Factory(GetSandbox, repository=repository)
    list_sandboxes = providers.Factory(ListSandboxes, repository=repository)
    renew_sandbox = providers.Factory(
        RenewSandbox, repository=repository, locker=locker, clock=clock, logger=logger, ttl=ttl
    )
    destroy_sandbox = providers.Factory(
        DestroySandbox, repository=repository, locker=locker, runtime=runtime, logger=logger
    )
    cleanup_expired = providers.Factory(
        CleanupExpiredSandboxes,
        repository=repository,
        locker=locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
    )
    reconcile = providers.Factory(
        ReconcileSandboxes, repository=repository, locker=locker, runtime=runtime, logger=logger
    )
