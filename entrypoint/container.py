"""Composition root: the only module that wires adapters to use cases.

Tests swap providers with ``container.<provider>.override(...)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dependency_injector import containers, providers

from adapter.agent.files import AgentHost, AgentSandboxFileStore
from adapter.clock import SystemClock
from adapter.docker.image import default_image_tag
from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.environment.docker_images import DockerEnvironmentConfig
from adapter.environment.docker_store import DockerEnvironmentStore
from adapter.environment.host_fetch import HostFetchConfig
from adapter.environment.live_install import DockerEnvironmentRuntime
from adapter.logging import ServiceLogger
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.environment import QemuEnvironmentConfig, QemuEnvironmentStore
from adapter.qemu.environment_runtime import QemuEnvironmentRuntime
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from domain.errors import InvalidInputError
from domain.pool import pool_size_for
from entrypoint import persistence
from entrypoint.application.files_api import FilesApi
from entrypoint.application.pools import PoolWorker
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.application.sweep import CleanupWorker, Sweeper
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.capacity import placement, sandbox_capacity
from entrypoint.grpc.interceptor import ApiKeyInterceptor
from entrypoint.grpc.pools import PoolServicer
from entrypoint.grpc.servicer import SandboxServicer
from entrypoint.http.app import create_app
from entrypoint.images import prepare_runtime_image
from entrypoint.metrics import ServiceMetrics
from entrypoint.settings import SERVICE_VERSION, Settings
from repository.pool_store import SqlAlchemyPoolRepository
from usecase.environment import EnvironmentProvisioning, PackageAllowList
from usecase.execute import ExecuteCode, ExecutionLimits
from usecase.files import FileLimits, WorkspaceFiles
from usecase.pool import WarmPools
from usecase.pool_admin import ManagePools
from usecase.ports import (
    Clock,
    Logger,
    SandboxFileStore,
    SandboxHealthProbe,
    SandboxRebinder,
    SandboxRuntime,
)
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import (
    CleanupExpiredSandboxes,
    CreateSandbox,
    DestroySandbox,
    GetSandbox,
    Lifetime,
    ListSandboxes,
    RenewSandbox,
    SandboxProvisioner,
)

# Expired sandboxes the sweep stops at once, at most: each holds a lock connection for its chat
# (and waits on the database, not the CPU, so more at once is faster: measured 1,000 records
# swept in 2.7-3.0 s with 32 against 3.6-5.7 s with 16).
SWEEP_PARALLELISM = 32
# Lock connections the sweep leaves to executions (the default 20 leaves the sweep 16 at once).
_LOCK_CONNECTIONS_NOT_SWEPT = 4


def _sweep_parallelism(settings: Settings) -> int:
    return max(
        1, min(SWEEP_PARALLELISM, settings.locks.max_connections - _LOCK_CONNECTIONS_NOT_SWEPT)
    )


def _clock() -> Clock:
    return SystemClock()


def _logger(component: str = "sandboxd") -> Logger:
    return ServiceLogger(component=component)


def _docker_runtime(settings: Settings, logger: Logger) -> SandboxRuntime:
    docker = settings.docker
    config = DockerSandboxConfig(
        image=docker.image or default_image_tag(docker.image_repository),
        instance_id=settings.effective_instance_id,
        data_dir=settings.data_dir,
        memory_mb=docker.memory_mb,
        cpus=docker.cpus,
        pids_limit=docker.pids_limit,
        workspace_mb=docker.workspace_mb,
        tmp_mb=docker.tmp_mb,
        user=docker.user,
        network=docker.network,
        runtime=docker.runtime,
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
        instance_id=settings.effective_instance_id,
        memory_mb=qemu.memory_mb,
        vcpus=qemu.vcpus,
        accel=qemu.accel,
        snapshot=qemu.snapshot,
        max_output_bytes=settings.limits.max_output_bytes,
        image_dir=qemu.image_dir,
        user=qemu.user or None,
        log_max_bytes=qemu.log_max_bytes,
        preload=tuple(name.strip() for name in qemu.preload.split(",") if name.strip()),
        overlay_pool_size=pool_size_for(sandbox_capacity(settings) or 1, qemu.overlay_pool_ratio),
    )
    return QemuSandboxRuntime(config, logger)


def _artifact_store(settings: Settings, logger: Logger) -> S3ArtifactStore:
    """L3; off (``enabled`` False) without a bucket. Credentials: boto's chain (AWS_* ...)."""
    env = settings.environments
    return S3ArtifactStore(
        S3ArtifactConfig(
            bucket=env.s3_bucket or None,
            endpoint_url=env.s3_endpoint_url or None,
            region=env.s3_region,
            max_concurrent_uploads=env.s3_max_concurrent_uploads,
        ),
        logger,
    )


def _environment_store(
    settings: Settings,
    clock: Clock,
    logger: Logger,
    artifacts: S3ArtifactStore,
    metrics: ServiceMetrics,
    runtime: Callable[[], SandboxRuntime],
) -> DockerEnvironmentStore | QemuEnvironmentStore:
    """L2 of the configured runtime (QEMU disks for a QEMU runtime, Docker images otherwise),
    with L3 behind it when a bucket is configured."""
    env = settings.environments
    selected = runtime()
    if isinstance(selected, QemuSandboxRuntime):
        return QemuEnvironmentStore(
            selected,
            QemuEnvironmentConfig(
                service_version=SERVICE_VERSION,
                max_total_mb=env.env_cache_max_mb,
                snapshot=settings.qemu.snapshot,
                max_concurrent_uploads=env.s3_max_concurrent_uploads,
            ),
            logger,
            artifacts=artifacts,
            observer=metrics,
        )
    import docker as docker_sdk  # only when environments are used: the engine may be absent

    config = settings.docker
    client = (
        docker_sdk.APIClient(base_url=config.base_url, version="auto", timeout=60)
        if config.base_url
        else docker_sdk.APIClient(version="auto", timeout=60, **docker_sdk.utils.kwargs_from_env())
    )
    return DockerEnvironmentStore(
        client,
        DockerEnvironmentConfig(
            base_image=config.image or default_image_tag(config.image_repository),
            data_dir=settings.data_dir,
            service_version=SERVICE_VERSION,
            max_total_mb=env.env_cache_max_mb,
            repository=env.env_image_repository,
            max_concurrent_uploads=env.s3_max_concurrent_uploads,
            fetch=HostFetchConfig(),
        ),
        clock,
        logger,
        artifacts=artifacts,
        observer=metrics,
    )


def _allow_list(settings: Settings) -> PackageAllowList:
    path = settings.environments.package_allowlist
    if path is None:
        return PackageAllowList()
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"SANDBOXD_PACKAGE_ALLOWLIST: cannot read {path}: {exc}") from exc
    names = set()
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            # Python names in PEP 503 form; npm names are lowercase already.
            names.add(name if name.startswith("@") else re.sub(r"[-_.]+", "-", name).lower())
    return PackageAllowList(frozenset(names))


def _environments(
    settings: Settings,
    runtime: Callable[[], SandboxRuntime],
    store: Callable[[], DockerEnvironmentStore | QemuEnvironmentStore],
    logger: Logger,
) -> EnvironmentProvisioning | None:
    """Package environments of the configured runtime: Docker images or QEMU disks, each with
    the S3 tier behind. A runtime swapped in by a test gets none."""
    selected = runtime()
    environment_runtime: DockerEnvironmentRuntime | QemuEnvironmentRuntime
    if isinstance(selected, DockerSandboxRuntime):
        environment_runtime = DockerEnvironmentRuntime(selected, HostFetchConfig(), logger)
    elif isinstance(selected, QemuSandboxRuntime):
        environment_runtime = QemuEnvironmentRuntime(selected, HostFetchConfig(), logger)
    else:
        return None
    return EnvironmentProvisioning(
        store=store(), runtime=environment_runtime, allow_list=_allow_list(settings)
    )


def _upload_retrier(
    settings: Settings, store: Callable[[], DockerEnvironmentStore | QemuEnvironmentStore]
) -> Callable[[], int] | None:
    """The sweep's retry of failed environment uploads (only with a bucket)."""
    if not settings.environments.s3_bucket:
        return None
    return lambda: store().retry_uploads()


def _selected_runtime(
    kind: str, docker: Callable[[], SandboxRuntime], qemu: Callable[[], QemuSandboxRuntime]
) -> SandboxRuntime:
    """The configured runtime; only that one is built (the other's engine may be absent)."""
    return qemu() if kind == "qemu" else docker()


def _health_probe(runtime: SandboxRuntime) -> SandboxHealthProbe | None:
    """Both real runtimes ping their agents (fakes in tests have no probe: no checks then)."""
    return runtime if isinstance(runtime, DockerSandboxRuntime | QemuSandboxRuntime) else None


def _rebinder(runtime: SandboxRuntime) -> SandboxRebinder | None:
    """QEMU rewrites vm.json and reseeds a claimed VM; Docker's binding is the session record
    (labels cannot change), so it needs no handover."""
    return runtime if isinstance(runtime, QemuSandboxRuntime) else None


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
    locker = providers.Singleton(persistence.chat_locker, settings, lock_engine.provider)
    # The sweep's view of the same locks: a busy chat is skipped after a short wait.
    sweep_locker = providers.Singleton(
        persistence.short_wait_locker, locker, settings.provided.locks.sweep_wait_seconds
    )
    repository = providers.Singleton(persistence.session_repository, ready_database, locker)
    sweep_leader = providers.Singleton(persistence.sweep_leader, settings, lock_engine.provider)

    docker_runtime = providers.Singleton(_docker_runtime, settings, logger)
    qemu_runtime = providers.Singleton(_qemu_runtime, settings, logger)
    runtime = providers.Callable(
        _selected_runtime,
        settings.provided.runtime,
        docker_runtime.provider,
        qemu_runtime.provider,
    )

    metrics = providers.Singleton(ServiceMetrics)
    artifact_store = providers.Singleton(_artifact_store, settings, logger)
    environment_store = providers.Singleton(
        _environment_store, settings, clock, logger, artifact_store, metrics, runtime.provider
    )
    environments = providers.Singleton(
        _environments, settings, runtime.provider, environment_store.provider, logger
    )
    # Warm pools: empty unless a pool is defined (SANDBOXD_POOL_SIZE/RATIO or /v1/pools), so
    # without one every sandbox is created on demand exactly as before. Package pools start
    # their members from the same environment store and runtime as the provisioner.
    pool_repository = providers.Singleton(SqlAlchemyPoolRepository, ready_database)
    # Where new sandboxes go and how many fit (logged once, when first built); pool members
    # count against the same cap as the chats' sandboxes.
    placement = providers.Singleton(placement, settings, logger)
    warm_pools = providers.Singleton(
        WarmPools,
        runtime=runtime,
        repository=repository,
        clock=clock,
        logger=logger,
        health=providers.Callable(_health_probe, runtime),
        health_timeout_s=settings.provided.pools.health_timeout_seconds,
        rebinder=providers.Callable(_rebinder, runtime),
        environments=environments,
        node=placement.provided.node,
        max_sandboxes=placement.provided.max_sandboxes,
    )
    manage_pools = providers.Singleton(
        ManagePools, repository=pool_repository, pools=warm_pools, logger=logger
    )
    # The CLI edits the shared definitions only: it runs no pools of its own.
    pool_admin = providers.Factory(
        ManagePools, repository=pool_repository, pools=None, logger=logger
    )
    pool_worker = providers.Factory(
        PoolWorker,
        manage=manage_pools,
        pools=warm_pools,
        settings=settings.provided.pools,
        logger=logger,
        host_capacity=placement.provided.max_sandboxes,
    )

    node = settings.provided.effective_node_id

    ttl = settings.provided.lifetime.ttl
    max_lifetime = settings.provided.lifetime.max_lifetime
    limits = settings.provided.limits

    # One provisioner (ensure, create from the pool or an environment, replace) for every use
    # case that gives a chat its sandbox.
    provisioner = providers.Singleton(
        SandboxProvisioner,
        repository=repository,
        runtime=runtime,
        clock=clock,
        logger=logger,
        lifetime=providers.Factory(
            Lifetime,
            ttl=ttl,
            max_lifetime=max_lifetime,
            renew_slack=settings.provided.lifetime.renew_slack,
        ),
        environments=environments,
        warm=warm_pools,
        placement=placement,
    )
    create_sandbox = providers.Factory(
        CreateSandbox,
        repository=repository,
        locker=locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
        ttl=ttl,
        provisioner=provisioner,
    )
    execute_code = providers.Singleton(
        ExecuteCode,
        repository=repository,
        locker=locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
        ttl=ttl,
        limits=providers.Factory(
            ExecutionLimits,
            max_code_bytes=limits.max_code_bytes,
            max_timeout_s=limits.max_timeout_s,
        ),
        renew_slack=settings.provided.lifetime.renew_slack,
        provisioner=provisioner,
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
        provisioner=provisioner,
    )
    files_api = providers.Singleton(FilesApi, files=workspace_files)
    get_sandbox = providers.Factory(GetSandbox, repository=repository)
    list_sandboxes = providers.Factory(ListSandboxes, repository=repository)
    renew_sandbox = providers.Factory(
        RenewSandbox, repository=repository, locker=locker, clock=clock, logger=logger, ttl=ttl
    )
    destroy_sandbox = providers.Factory(
        DestroySandbox,
        repository=repository,
        locker=locker,
        runtime=runtime,
        logger=logger,
        node=node,
    )
    # The sweep stops this many expired sandboxes at once (each under its chat's lock): a
    # backlog of a thousand takes seconds, not the sum of a thousand stops.
    sweep_executor = providers.Singleton(
        ThreadPoolExecutor,
        max_workers=providers.Callable(_sweep_parallelism, settings),
        thread_name_prefix="sandboxd-sweep",
    )
    cleanup_expired = providers.Factory(
        CleanupExpiredSandboxes,
        repository=repository,
        locker=sweep_locker,
        runtime=runtime,
        clock=clock,
        logger=logger,
        executor=sweep_executor,
        node=node,
    )
    reconcile = providers.Factory(
        ReconcileSandboxes,
        repository=repository,
        locker=sweep_locker,
        runtime=runtime,
        logger=logger,
        pools=warm_pools,
        node=node,
    )

    # The service (sandboxd serve): one facade for HTTP and gRPC, the sweep shared with
    # `sandboxd cleanup --once`, and the worker that repeats it.
    # Builds the sandbox image on first run (tests override it with a no-op).
    prepare_runtime = providers.Callable(prepare_runtime_image, settings, qemu_runtime.provider)
    access_logger = providers.Singleton(_logger, component="http")
    authenticator = providers.Singleton(
        ApiKeyAuthenticator,
        keys=settings.provided.server.api_key_list,
        admin_keys=settings.provided.server.admin_key_list,
    )
    sweeper = providers.Singleton(
        Sweeper,
        cleanup_expired=cleanup_expired,
        reconcile=reconcile,
        leader=sweep_leader,
        logger=logger,
        metrics=metrics,
        retry_uploads=providers.Callable(_upload_retrier, settings, environment_store.provider),
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
        max_inflight_per_key=limits.max_inflight_executions_per_key,
        fair_share_floor=limits.effective_fair_share_executions,
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
        pools=manage_pools.provider,
        files_api=files_api,
    )
    grpc_interceptor = providers.Singleton(
        ApiKeyInterceptor, authenticator=authenticator, metrics=metrics
    )
    grpc_servicer = providers.Singleton(
        SandboxServicer,
        api=api,
        metrics=metrics,
        logger=logger,
        authenticator=authenticator,
        files_api=files_api,
    )
    grpc_pool_servicer = providers.Singleton(
        PoolServicer,
        manage=manage_pools.provider,
        metrics=metrics,
        logger=logger,
        authenticator=authenticator,
    )
