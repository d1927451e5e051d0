"""The ``sandboxd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from dependency_injector import providers

from domain.environment import Environment
from domain.errors import SandboxServiceError
from domain.execution import ExecutionRequest, Language
from domain.pool import PoolCapacity, PoolDefinition
from domain.sandbox import SandboxSession, SandboxStatus, parse_chat_id
from entrypoint.cli_files import add_files_parser
from entrypoint.container import Container
from entrypoint.errors import error_row
from entrypoint.http.pools import pool_json
from entrypoint.serve import serve
from entrypoint.wire import clamp_exit_code, process_exit_status
from usecase.execute import ExecuteCodeCommand
from usecase.sandbox import CreateSandboxCommand


def session_json(session: SandboxSession) -> dict[str, Any]:
    return {
        key: str(value) if value is not None else None for key, value in asdict(session).items()
    }


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_exec(container: Container, args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    settings = container.settings()
    request = ExecutionRequest(
        code=code,
        language=Language.parse(args.language),
        timeout_s=args.timeout if args.timeout is not None else settings.limits.default_timeout_s,
    )
    chat_id = parse_chat_id(args.chat_id)
    execution = container.execute_code().execute(
        ExecuteCodeCommand(chat_id, request, tuple(args.package))
    )
    result = execution.result
    if args.json:
        shown = {**asdict(result), "exit_code": clamp_exit_code(result.exit_code)}
        _print_json({"session": session_json(execution.session), "result": shown})
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        notes = [
            flag
            for flag, on in (
                ("timed out", result.timed_out),
                ("stdout truncated", result.stdout_truncated),
                ("stderr truncated", result.stderr_truncated),
                ("sandbox replaced, earlier state lost", result.sandbox_replaced),
                ("state lost", result.state_lost and not result.sandbox_replaced),
            )
            if on
        ]
        if notes:
            print(f"[sandboxd: {'; '.join(notes)}]", file=sys.stderr)
    if result.timed_out:
        return 124
    return process_exit_status(result.exit_code) if result.exit_code is not None else 1


def cmd_sandbox(container: Container, args: argparse.Namespace) -> int:
    chat_id = parse_chat_id(args.chat_id)
    actions: dict[str, Callable[[], SandboxSession | None]] = {
        "ensure": lambda: container.create_sandbox().execute(
            CreateSandboxCommand(chat_id, tuple(args.package), Language.parse(args.language))
        ),
        "get": lambda: container.get_sandbox().execute(chat_id),
        "renew": lambda: container.renew_sandbox().execute(chat_id),
        "destroy": lambda: container.destroy_sandbox().execute(chat_id),
    }
    session = actions[args.action]()
    _print_json(session_json(session) if session else None)
    return 0


def cmd_sandboxes_list(container: Container, args: argparse.Namespace) -> int:
    status = SandboxStatus(args.status) if args.status else None
    sessions = container.list_sandboxes().execute(
        status=status, limit=args.limit, offset=args.offset
    )
    _print_json([session_json(s) for s in sessions])
    return 0


def _capacity(args: argparse.Namespace) -> PoolCapacity:
    return PoolCapacity(
        buffer_min=args.buffer_min,
        buffer_max=args.buffer_max,
        pool_min=args.pool_min,
        pool_max=args.pool_max,
    )


def cmd_pools(container: Container, args: argparse.Namespace) -> int:
    """Pool definitions in the shared database; running services pick changes up."""
    manage = container.pool_admin()
    action = args.pools_command
    if action == "list":
        _print_json([pool_json(view) for view in manage.list()])
    elif action == "get":
        _print_json(pool_json(manage.get(args.name)))
    elif action == "create":
        definition = PoolDefinition(
            args.name, args.language, tuple(args.package or ()), _capacity(args)
        )
        _print_json(pool_json(manage.create(definition)))
    elif action == "update":
        _print_json(pool_json(manage.update(args.name, _capacity(args))))
    else:
        manage.delete(args.name)
        _print_json({"deleted": args.name})
    return 0


def cmd_cleanup(container: Container, args: argparse.Namespace) -> int:
    """One sweep, the same the service's worker runs (skipped when another sweeper leads)."""
    report = container.sweeper().run_once()
    _print_json(report.as_json())
    return 0


def cmd_serve(container: Container, args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("http_port", args.http_port),
            ("grpc_port", args.grpc_port),
        )
        if value is not None
    }
    if overrides:
        settings = container.settings()
        server = settings.server.model_copy(update=overrides)
        container.settings.override(
            providers.Object(settings.model_copy(update={"server": server}))
        )
    return serve(container)


def cmd_migrate(container: Container, args: argparse.Namespace) -> int:
    """Bring the database to the head revision (or only report, with --check)."""
    from repository.database import check_schema_current, head_revision, mask_url, migrate

    engine = container.database_engine()
    target = mask_url(engine.url)
    if args.check:
        check_schema_current(engine)
        print(f"database {target} is at head ({head_revision()})")
        return 0
    migrate(engine)
    print(f"database {target} migrated to head ({head_revision()})")
    return 0


def cmd_image_build(container: Container, args: argparse.Namespace) -> int:
    """Build the sandbox image for a runtime; steps whose inputs are unchanged are skipped."""
    from entrypoint.images import build_runtime_image, print_progress

    settings = container.settings()
    runtime = args.runtime or settings.runtime
    built = build_runtime_image(settings, runtime, container.qemu_runtime)
    print(built)
    if runtime == "docker" and settings.docker.image and settings.docker.image != built:
        print_progress(f"note: SANDBOXD_DOCKER_IMAGE={settings.docker.image} overrides {built}")
    return 0


def cmd_doctor(container: Container, args: argparse.Namespace) -> int:
    """Check this host for what the service needs; exit 1 when the configured runtime can't work."""
    from entrypoint.doctor import exit_status, run_checks

    results = run_checks(container.settings())
    if args.json:
        _print_json([result.as_json() for result in results])
    else:
        for result in results:
            print(result.line())
    return exit_status(results)


def cmd_bench(container: Container, args: argparse.Namespace) -> int:
    """Hand over to ``python -m bench`` (in the source tree; benchmarks are not installed)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "__main__.py").exists():
        print(f"sandboxd: no benchmarks here ({root / 'bench'} is missing)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args], cwd=root)


def cmd_env_build(container: Container, args: argparse.Namespace) -> int:
    store = container.environment_store()
    built = store.ensure(Environment(Language.parse(args.language), tuple(args.packages)))
    store.wait_for_uploads()  # the CLI exits right after: let the L3 upload finish
    _print_json(
        {
            "key": built.key,
            # A Docker image tag, or the QEMU environment's qcow2 disk.
            "reference": built.reference,
            "packages": list(built.environment.packages),
            "size_bytes": built.size_bytes,
            "l3": store.in_artifact_store(built.key),
        }
    )
    return 0


def cmd_env_list(container: Container, args: argparse.Namespace) -> int:
    """Local environments (L2), with whether S3 has them, then those only in S3 (L3)."""
    store = container.environment_store()
    in_s3 = store.artifact_keys()  # None: no bucket configured, or it cannot be reached
    rows: list[dict[str, Any]] = [
        {
            "key": built.key,
            "packages": list(built.environment.packages),
            "size_bytes": built.size_bytes,
            "last_used": (
                datetime.fromtimestamp(last_used, UTC).isoformat() if last_used else None
            ),
            "l2": True,
            "l3": None if in_s3 is None else built.key in in_s3,
        }
        for built, last_used in store.inventory()
    ]
    local = {row["key"] for row in rows}
    rows += [
        {
            "key": key,
            "packages": None,
            "size_bytes": None,
            "last_used": None,
            "l2": False,
            "l3": True,
        }
        for key in in_s3 or []
        if key not in local
    ]
    _print_json(rows)
    return 0


def cmd_env_prune(container: Container, args: argparse.Namespace) -> int:
    _print_json({"removed": container.environment_store().prune(remove_all=args.all)})
    return 0


def _add_env_commands(commands: Any) -> None:
    env = commands.add_parser(
        "env", help="package environments of the configured runtime (SANDBOXD_RUNTIME)"
    )
    env_commands = env.add_subparsers(dest="env_command", required=True)
    env_build = env_commands.add_parser("build", help="build (or find) an environment")
    env_build.add_argument("--language", default="python", help="python or javascript")
    env_build.add_argument("packages", nargs="+", metavar="PKG", help="requirements")
    env_build.set_defaults(handler=cmd_env_build)
    env_list = env_commands.add_parser("list", help="local environments (L2), and in S3 (L3)")
    env_list.set_defaults(handler=cmd_env_list)
    env_prune = env_commands.add_parser(
        "prune", help="evict past SANDBOXD_ENV_CACHE_MAX_MB, least recently used first"
    )
    env_prune.add_argument("--all", action="store_true", help="remove every local environment")
    env_prune.set_defaults(handler=cmd_env_prune)


def _add_pools_parser(commands: Any) -> None:
    pools = commands.add_parser("pools", help="warm pool definitions (shared by replicas)")
    pools_commands = pools.add_subparsers(dest="pools_command", required=True)
    pools_commands.add_parser("list", help="every pool").set_defaults(handler=cmd_pools)
    for name, text in (("get", "one pool"), ("delete", "remove a pool")):
        one = pools_commands.add_parser(name, help=text)
        one.add_argument("name")
        one.set_defaults(handler=cmd_pools)
    for name, text in (("create", "define a pool"), ("update", "change a pool's capacity")):
        spec = pools_commands.add_parser(name, help=text)
        spec.add_argument("name")
        if name == "create":
            spec.add_argument("--language", default="python")
            spec.add_argument("--package", action="append", help="repeat for each package")
        spec.add_argument("--buffer-min", type=int, required=True)
        spec.add_argument("--buffer-max", type=int, required=True)
        spec.add_argument("--pool-min", type=int, default=0)
        spec.add_argument("--pool-max", type=int, required=True)
        spec.set_defaults(handler=cmd_pools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandboxd",
        description="Chat-bound code sandboxes. Settings come from SANDBOXD_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("exec", help="run code in a chat's sandbox")
    run.add_argument("--chat-id", required=True, help="the chat's UUID")
    run.add_argument("--language", default="python", help="python, javascript or shell")
    run.add_argument("--timeout", type=float, default=None, help="seconds (default from settings)")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="REQ",
        help="a package the sandbox must have (repeatable): pandas>=2, or an npm name",
    )
    run.add_argument("code", help="the code, or - to read it from standard input")
    run.set_defaults(handler=cmd_exec)

    add_files_parser(commands)

    sandbox = commands.add_parser("sandbox", help="one chat's sandbox")
    sandbox.add_argument("action", choices=["ensure", "get", "renew", "destroy"])
    sandbox.add_argument("--chat-id", required=True)
    sandbox.add_argument(
        "--package", action="append", default=[], metavar="REQ", help="ensure: repeatable"
    )
    sandbox.add_argument("--language", default="python", help="ensure: the packages' language")
    sandbox.set_defaults(handler=cmd_sandbox)

    sandboxes = commands.add_parser("sandboxes", help="all sandboxes")
    sandboxes_commands = sandboxes.add_subparsers(dest="sandboxes_command", required=True)
    listing = sandboxes_commands.add_parser("list", help="list session records")
    listing.add_argument("--status", choices=[s.value for s in SandboxStatus])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(handler=cmd_sandboxes_list)

    _add_pools_parser(commands)

    cleanup = commands.add_parser("cleanup", help="stop expired sandboxes and reconcile")
    cleanup.add_argument("--once", action="store_true", required=True, help="one sweep (for cron)")
    cleanup.set_defaults(handler=cmd_cleanup)

    serve = commands.add_parser("serve", help="run the HTTP and gRPC service and the worker")
    serve.add_argument("--host", help="default: SANDBOXD_HOST (127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="default: SANDBOXD_HTTP_PORT (8080)")
    serve.add_argument("--grpc-port", type=int, help="default: SANDBOXD_GRPC_PORT (50051)")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="bring the database schema to head")
    migrate.add_argument(
        "--check", action="store_true", help="only check; exit 4 when the database is behind"
    )
    migrate.set_defaults(handler=cmd_migrate)

    image = commands.add_parser("image", help="the sandbox image")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    image_build = image_commands.add_parser(
        "build", help="build the root filesystem and the runtime's image (skips what is current)"
    )
    image_build.add_argument(
        "--runtime", choices=["docker", "qemu"], help="default: SANDBOXD_RUNTIME"
    )
    image_build.set_defaults(handler=cmd_image_build)

    doctor = commands.add_parser(
        "doctor", help="check Docker, gVisor, QEMU/KVM, images, database, disk, memory, S3"
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.set_defaults(handler=cmd_doctor)
    _add_env_commands(commands)

    # Its own prefix character, so that --quick, -h etc. all reach bench/run untouched.
    bench = commands.add_parser(
        "bench",
        help="run every benchmark and write a report (bench/run; --quick for a smoke run)",
        prefix_chars="+",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to bench/run")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None, container: Container | None = None) -> int:
    args = build_parser().parse_args(argv)
    container = container or Container()
    settings = container.settings()
    from adapter.logging import configure_logging

    configure_logging(settings.log.level, settings.log.format)
    handler: Callable[[Container, argparse.Namespace], int] = args.handler
    try:
        return handler(container, args)
    except SandboxServiceError as error:
        print(f"sandboxd: {type(error).__name__}: {error}", file=sys.stderr)
        return error_row(error).exit_code


if __name__ == "__main__":
    sys.exit(main())
