"""The ``sandboxd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from dependency_injector import providers

from domain.errors import SandboxServiceError
from domain.execution import ExecutionRequest, Language
from domain.sandbox import SandboxSession, SandboxStatus, parse_chat_id
from entrypoint.cli_files import add_files_parser
from entrypoint.container import Container
from entrypoint.errors import error_row
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
    execution = container.execute_code().execute(ExecuteCodeCommand(chat_id, request))
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
        "ensure": lambda: container.create_sandbox().execute(CreateSandboxCommand(chat_id)),
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
    run.add_argument("code", help="the code, or - to read it from standard input")
    run.set_defaults(handler=cmd_exec)

    add_files_parser(commands)

    sandbox = commands.add_parser("sandbox", help="one chat's sandbox")
    sandbox.add_argument("action", choices=["ensure", "get", "renew", "destroy"])
    sandbox.add_argument("--chat-id", required=True)
    sandbox.set_defaults(handler=cmd_sandbox)

    sandboxes = commands.add_parser("sandboxes", help="all sandboxes")
    sandboxes_commands = sandboxes.add_subparsers(dest="sandboxes_command", required=True)
    listing = sandboxes_commands.add_parser("list", help="list session records")
    listing.add_argument("--status", choices=[s.value for s in SandboxStatus])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(handler=cmd_sandboxes_list)

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
