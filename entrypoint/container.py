"""Composition root: the only module that wires adapters to use cases.

Tests swap providers with ``container.<provider>.override(...)``.
"""

from __future__ import annotations

from dependency_injector import containers, providers

from adapter.clock import SystemClock
from adapter.docker.image import default_image_tag
from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.logging import StructlogLogger
from adapter.qemu.runtime import QemuSandboxRuntime
from entrypoint import persistence
from entrypoint.api import SandboxApi
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.grpc.servicer import SandboxServicer
from entrypoint.http.app import create_app
from entrypoint.images import prepare_runtime_image
from entrypoint.metrics import ServiceMetrics
from entrypoint.settings import Settings
from entrypoint.worker import Sweeper
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository
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


def _docker_runtime(settings: Settings, logger: StructlogLogger) -> DockerSandboxRuntime:
    config = DockerSandboxConfig(
        image=settings.docker_image or default_image_tag(settings.docker_image_repository),
        instance_id=settings.instance_id,
        data_dir=settings.data_dir,
        memory_mb=settings.docker_memory_mb,
        cpus=settings.docker_cpus,
        pids_limit=settings.docker_pids_limit,
        workspace_mb=settings.docker_workspace_mb,
        tmp_mb=settings.docker_tmp_mb,
        user=settings.docker_user,
        network=settings.docker_network,
        read_only_root=settings.docker_read_only_root,
        drop_all_capabilities=settings.docker_drop_all_capabilities,
        no_new_privileges=settings.docker_no_new_privileges,
        max_output_bytes=settings.max_output_bytes,
        start_timeout_s=settings.docker_start_timeout_s,
        agent_command=("python3", settings.docker_agent_path),
    )
    return DockerSandboxRuntime.from_base_url(settings.docker_base_url, config, logger)


def _qemu_runtime(settings: Settings, logger: StructlogLogger) -> QemuSandboxRuntime:
    from adapter.qemu.config import QemuSandboxConfig

    config = QemuSandboxConfig(
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
        memory_mb=settings.qemu_memory_mb,
        vcpus=settings.qemu_vcpus,
        accel=settings.qemu_accel,
        snapshot=settings.qemu_snapshot,
        max_output_bytes=settings.max_output_bytes,
        image_dir=settings.qemu_image_dir,
    )
    return QemuSandboxRuntime(config, logger)


def _execution_limits(settings: Settings) -> ExecutionLimits:
    return ExecutionLimits(
        max_code_bytes=settings.max_code_bytes, max_timeout_s=settings.max_timeout_s
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)

    clock = providers.Singleton(SystemClock)
    logger = providers.Singleton(StructlogLogger)

    # Persistence follows Settings.effective_database_url (see entrypoint/persistence.py).
    # database_engine is unchecked (for `sandboxd migrate`); ready_database migrates or checks
    # the schema first and raises SchemaOutOfDateError / RepositoryUnavailableError.
    database_engine = providers.Singleton(persistence.database_engine, settings)
    ready_database = providers.Singleton(persistence.ready_engine, database_engine, settings)
    lock_engine = providers.Singleton(persistence.lock_engine, settings)
    repository = providers.Singleton(SqlAlchemySandboxSessionRepository, engine=ready_database)
    locker = providers.Singleton(persistence.chat_locker, settings, lock_engine.provider)
    sweep_leader = providers.Singleton(persistence.sweep_leader, settings, lock_engine.provider)

    runtime_kind = providers.Callable(lambda settings: settings.runtime, settings)
    docker_runtime = providers.Singleton(_docker_runtime, settings, logger)
    qemu_runtime = providers.Singleton(_qemu_runtime, settings, logger)
    runtime = providers.Selector(runtime_kind, docker=docker_runtime, qemu=qemu_runtime)

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

    # The service (sandboxd serve): one facade for HTTP and gRPC, the sweep shared with
    # `sandboxd cleanup --once`.
    metrics = providers.Singleton(ServiceMetrics)
    # Builds the sandbox image on first run (tests override it with a no-op).
    prepare_runtime = providers.Callable(prepare_runtime_image, settings, qemu_runtime.provider)
    access_logger = providers.Singleton(StructlogLogger, component="http")
    authenticator = providers.Singleton(
        ApiKeyAuthenticator, keys=providers.Callable(lambda s: s.api_key_list, settings)
    )
    sweeper = providers.Singleton(
        Sweeper,
        cleanup_expired=cleanup_expired,
        reconcile=reconcile,
        leader=sweep_leader,
        logger=logger,
        metrics=metrics,
    )
    api = providers.Singleton(
        SandboxApi,
        execute_code=execute_code,
        create_sandbox=create_sandbox,
        get_sandbox=get_sandbox,
        renew_sandbox=renew_sandbox,
        destroy_sandbox=destroy_sandbox,
        list_sandboxes=list_sandboxes,
        repository=repository,
        runtime=runtime,
        metrics=metrics,
        logger=logger,
        max_inflight_executions=providers.Callable(lambda s: s.max_inflight_executions, settings),
        default_timeout_s=providers.Callable(lambda s: s.default_timeout_s, settings),
    )
    http_app = providers.Singleton(
        create_app,
        api=api,
        authenticator=authenticator,
        metrics=metrics,
        logger=logger,
        access_logger=access_logger,
        max_code_bytes=providers.Callable(lambda s: s.max_code_bytes, settings),
    )
    grpc_servicer = providers.Singleton(
        SandboxServicer, api=api, authenticator=authenticator, metrics=metrics, logger=logger
    )
