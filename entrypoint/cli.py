"""The ``sandboxd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from domain.errors import (
    InvalidInputError,
    LockTimeoutError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxNotFoundError,
    SandboxServiceError,
)
from domain.execution import ExecutionRequest, Language
from domain.sandbox import SandboxSession, SandboxStatus, parse_chat_id
from entrypoint.container import Container
from usecase.execute import ExecuteCodeCommand
from usecase.sandbox import CreateSandboxCommand

# One table from error to exit status; the first matching class wins.
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInputError, 2),
    (SandboxNotFoundError, 3),
    (RuntimeUnavailableError, 4),
    (RepositoryUnavailableError, 4),
    (SandboxGoneError, 5),
    (LockTimeoutError, 6),
    (SandboxServiceError, 1),
)


def exit_code_for(error: Exception) -> int:
    for error_type, code in EXIT_CODES:
        if isinstance(error, error_type):
            return code
    return 1


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
        timeout_s=args.timeout if args.timeout is not None else settings.default_timeout_s,
    )
    chat_id = parse_chat_id(args.chat_id)
    execution = container.execute_code().execute(ExecuteCodeCommand(chat_id, request))
    result = execution.result
    if args.json:
        _print_json({"session": session_json(execution.session), "result": asdict(result)})
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
    return result.exit_code if result.exit_code is not None else 1


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
    cleaned = container.cleanup_expired().execute()
    report = container.reconcile().execute()
    _print_json(
        {
            "cleaned": [str(s.session_id) for s in cleaned],
            "orphans_removed": report.removed_orphans,
            "marked_dead": [str(s.session_id) for s in report.marked_dead],
            "reconcile_failures": report.failures,
        }
    )
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None, container: Container | None = None) -> int:
    args = build_parser().parse_args(argv)
    container = container or Container()
    settings = container.settings()
    from adapter.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    handler: Callable[[Container, argparse.Namespace], int] = args.handler
    try:
        return handler(container, args)
    except SandboxServiceError as error:
        print(f"sandboxd: {type(error).__name__}: {error}", file=sys.stderr)
        return exit_code_for(error)


if __name__ == "__main__":
    sys.exit(main())
