"""Composition root: the only module that wires adapters to use cases.

Tests swap providers with ``container.<provider>.override(...)``.
"""

from __future__ import annotations

from collections.abc import Callable

from dependency_injector import containers, providers

from adapter.agent.files import AgentHost, AgentSandboxFileStore
from adapter.clock import SystemClock
from adapter.docker.image import default_image_tag
from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.logging import StructlogLogger
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime
from entrypoint import persistence
from entrypoint.application.files_api import FilesApi
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.application.sweep import CleanupWorker, Sweeper
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.grpc.interceptor import ApiKeyInterceptor
from entrypoint.grpc.servicer import SandboxServicer
from entrypoint.http.app import create_app
from entrypoint.images import prepare_runtime_image
from entrypoint.metrics import ServiceMetrics
from entrypoint.settings import Settings
from usecase.execute import ExecuteCode, ExecutionLimits
from usecase.files import FileLimits, WorkspaceFiles
from usecase.ports import Clock, Logger, SandboxFileStore, SandboxRuntime
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import (
    CleanupExpiredSandboxes,
    CreateSandbox,
    DestroySandbox,
    GetSandbox,
    Lifetime,
    ListSandboxes,
    RenewSandbox,
)


def _clock() -> Clock:
    return SystemClock()


def _logger(component: str = "sandboxd") -> Logger:
    return StructlogLogger(component=component)


def _docker_runtime(settings: Settings, logger: Logger) -> SandboxRuntime:
    docker = settings.docker
    config = DockerSandboxConfig(
        image=docker.image or default_image_tag(docker.image_repository),
        instance_id=settings.instance_id,
        data_dir=settings.data_dir,
        memory_mb=docker.memory_mb,
        cpus=docker.cpus,
        pids_limit=docker.pids_limit,
        workspace_mb=docker.workspace_mb,
        tmp_mb=docker.tmp_mb,
        user=docker.user,
        network=docker.network,
        read_only_root=docker.read_only_root,
        drop_all_capabilities=docker.drop_all_capabilities,
        no_new_privileges=docker.no_new_privileges,
        max_output_bytes=settings.limits.max_output_bytes,
        start_timeout_s=docker.start_timeout_s,
        agent_command=("python3", docker.agent_path),
    )
    return DockerSandboxRuntime.from_base_url(docker.base_url, config, logger)


def _qemu_runtime(settings: Settings, logger: Logger) -> QemuSandboxRuntime:
    """The concrete class: image preparation also takes its memory snapshot."""
    qemu = settings.qemu
    config = QemuSandboxConfig(
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
        memory_mb=qemu.memory_mb,
        vcpus=qemu.vcpus,
        accel=qemu.accel,
        snapshot=qemu.snapshot,
        max_output_bytes=settings.limits.max_output_bytes,
        image_dir=qemu.image_dir,
        user=qemu.user or None,
        log_max_bytes=qemu.log_max_bytes,
    )
    return QemuSandboxRuntime(config, logger)


def _selected_runtime(
    kind: str, docker: Callable[[], SandboxRuntime], qemu: Callable[[], QemuSandboxRuntime]
) -> SandboxRuntime:
    """The configured runtime; only that one is built (the other's engine may be absent)."""
    return qemu() if kind == "qemu" else docker()


def _file_store(runtime: SandboxRuntime) -> SandboxFileStore:
    """Files go through the agent of whichever runtime is configured (both lend it)."""
    if not isinstance(runtime, AgentHost):
        raise TypeError(f"{type(runtime).__name__} cannot lend its agent for files")
    return AgentSandboxFileStore(runtime)


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)

    clock = providers.Singleton(_clock)
    logger = providers.Singleton(_logger)

    # Persistence follows Settings.effective_database_url (see entrypoint/persistence.py).
    # database_engine is unchecked (for `sandboxd migrate`); ready_database migrates or checks
    # the schema first and raises SchemaOutOfDateError / RepositoryUnavailableError.
    database_engine = providers.Singleton(persistence.database_engine, settings)
    ready_database = providers.Singleton(persistence.ready_engine, database_engine, settings)
    lock_engine = providers.Singleton(persistence.lock_engine, settings)
    repository = providers.Singleton(persistence.session_repository, ready_database)
    locker = providers.Singleton(persistence.chat_locker, settings, lock_engine.provider)
    sweep_leader = providers.Singleton(persistence.sweep_leader, settings, lock_engine.provider)

    docker_runtime = providers.Singleton(_docker_runtime, settings, logger)
    qemu_runtime = providers.Singleton(_qemu_runtime, settings, logger)
    runtime = providers.Callable(
        _selected_runtime,
        settings.provided.runtime,
        docker_runtime.provider,
        qemu_runtime.provider,
    )

    ttl = settings.provided.lifetime.ttl
    max_lifetime = settings.provided.lifetime.max_lifetime
    limits = settings.provided.limits

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
        limits=providers.Factory(
            ExecutionLimits,
            max_code_bytes=limits.max_code_bytes,
            max_timeout_s=limits.max_timeout_s,
        ),
    )
    file_store = providers.Singleton(_file_store, runtime)
    workspace_files = providers.Singleton(
        WorkspaceFiles,
        repository=repository,
        locker=locker,
        runtime=runtime,
        files=file_store,
        clock=clock,
        logger=logger,
        lifetime=providers.Factory(Lifetime, ttl=ttl, max_lifetime=max_lifetime),
        limits=providers.Factory(FileLimits, max_file_bytes=limits.max_file_bytes),
    )
    files_api = providers.Singleton(FilesApi, files=workspace_files)
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
    # `sandboxd cleanup --once`, and the worker that repeats it.
    metrics = providers.Singleton(ServiceMetrics)
    # Builds the sandbox image on first run (tests override it with a no-op).
    prepare_runtime = providers.Callable(prepare_runtime_image, settings, qemu_runtime.provider)
    access_logger = providers.Singleton(_logger, component="http")
    authenticator = providers.Singleton(
        ApiKeyAuthenticator, keys=settings.provided.server.api_key_list
    )
    sweeper = providers.Singleton(
        Sweeper,
        cleanup_expired=cleanup_expired,
        reconcile=reconcile,
        leader=sweep_leader,
        logger=logger,
        metrics=metrics,
    )
    # A new one per `serve` run: it belongs to that run's event loop.
    cleanup_worker = providers.Factory(
        CleanupWorker,
        sweeper=sweeper,
        interval_s=settings.provided.server.cleanup_interval_seconds,
        logger=logger,
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
        max_inflight_executions=limits.max_inflight_executions,
        default_timeout_s=limits.default_timeout_s,
        readiness_cache_s=settings.provided.server.readiness_cache_seconds,
        stream_buffer_chars=limits.max_stream_buffer_chars,
    )
    http_app = providers.Singleton(
        create_app,
        api=api,
        authenticator=authenticator,
        metrics=metrics,
        logger=logger,
        access_logger=access_logger,
        max_code_bytes=limits.max_code_bytes,
        files_api=files_api,
    )
    grpc_interceptor = providers.Singleton(
        ApiKeyInterceptor, authenticator=authenticator, metrics=metrics
    )
    grpc_servicer = providers.Singleton(
        SandboxServicer, api=api, metrics=metrics, logger=logger, files_api=files_api
    )
