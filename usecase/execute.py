"""ExecuteCode: run one message's code in its chat's sandbox."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from uuid import UUID

from domain.environment import Environment
from domain.errors import CodeTooLargeError, InvalidTimeoutError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from domain.sandbox import SandboxSession
from domain.tenant import OPERATOR, Caller
from usecase.environment import EnvironmentProvisioning
from usecase.ports import (
    Clock,
    Logger,
    OutputSink,
    SandboxLifecycleLocker,
    SandboxRuntime,
    SandboxSessionRepository,
    WarmSandboxSource,
)
from usecase.sandbox import (
    NO_ENVIRONMENTS,
    Lifetime,
    Placement,
    SandboxProvisioner,
    session_attrs,
)


@dataclass(frozen=True)
class ExecutionLimits:
    """Bounds checked before anything is touched; a request past them changes nothing."""

    max_code_bytes: int = 256 * 1024
    max_timeout_s: float = 300.0


@dataclass(frozen=True)
class ExecuteCodeCommand:
    """``packages``: requirements for the request's language the sandbox must have."""

    chat_id: UUID
    request: ExecutionRequest
    packages: tuple[str, ...] = ()
    caller: Caller = OPERATOR


@dataclass(frozen=True)
class CodeExecution:
    """The result and the session it ran in, with its renewed deadline."""

    session: SandboxSession
    result: ExecutionResult


class ExecuteCode:
    """Run code in the chat's sandbox, creating or replacing the sandbox as CreateSandbox does.

    Rules:
    - Input is validated first (code size in UTF-8 bytes, timeout in (0, max]); invalid input
      raises an InvalidInputError and touches nothing.
    - Everything happens under the chat's lock, so one chat's messages run one at a time, in
      arrival order where the locker is fair.
    - If the runtime reports the sandbox gone (SandboxGoneError), it is replaced once and the code
      runs again; a second SandboxGoneError propagates (no replacement loop). The result then says
      ``sandbox_replaced`` and ``state_lost``; so it does when a DEAD session was replaced.
    - After the run the idle deadline slides to now + ttl, capped by the maximum lifetime, and
      ``last_activity_at`` is set.
    - Renewal slack (``renew_slack``, 0 by default: a write per message): so that a busy chat
      does not cost a database write per message, the record is written only when its stored
      deadline falls short of now + ttl, and then with now + ttl + renew_slack (capped). So the
      stored deadline is never earlier than the exact one: every reader on every replica (the
      sweep's list_expired and its re-read under the chat lock, reuse, GET) compares against the
      stored record, and none sees a sandbox as expired within ttl of its last message. An idle
      sandbox lives at most ttl + renew_slack after its last message; a busy chat is written
      about once per renew_slack; ``last_activity_at`` is as of the last write. A crash loses
      nothing: what was skipped was already covered by the stored deadline.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        clock: Clock,
        logger: Logger,
        ttl: timedelta,
        max_lifetime: timedelta | None = None,
        limits: ExecutionLimits | None = None,
        environments: EnvironmentProvisioning | None = None,
        no_environments_reason: str = NO_ENVIRONMENTS,
        warm: WarmSandboxSource | None = None,
        renew_slack: timedelta = timedelta(0),
        placement: Placement | None = None,
        provisioner: SandboxProvisioner | None = None,
    ) -> None:
        if renew_slack < timedelta(0):
            raise ValueError("renew_slack must not be negative")
        self._repository = repository
        self._renew_slack = renew_slack
        self._locker = locker
        self._runtime = runtime
        self._clock = clock
        self._logger = logger
        self._ttl = ttl
        self._limits = limits or ExecutionLimits()
        # The composition root hands in the one provisioner it wires; built here otherwise.
        self._provisioner = provisioner or SandboxProvisioner(
            repository,
            runtime,
            clock,
            logger,
            Lifetime(ttl, max_lifetime, renew_slack),
            environments,
            no_environments_reason,
            warm,
            placement,
        )

    def execute(
        self, command: ExecuteCodeCommand, on_output: OutputSink | None = None
    ) -> CodeExecution:
        self._validate(command.request)
        environment = Environment(command.request.language, command.packages)
        self._provisioner.check(environment)
        with self._locker.lock(command.chat_id):
            # Reuse is every message's normal case and code_executed names the session: reuse
            # is logged at debug level then, one info event per message.
            ensured = self._provisioner.ensure(
                command.chat_id, environment, command.caller, running_code=True
            )
            session, replaced = ensured.session, ensured.replaced_dead
            try:
                result = self._runtime.execute(session.container_id, command.request, on_output)
            except SandboxGoneError:
                self._logger.warning("sandbox_found_dead", session_attrs(session))
                session = self._provisioner.replace(session, environment, running_code=True)
                result = self._runtime.execute(session.container_id, command.request, on_output)
                replaced = True
            if replaced:
                result = replace(result, sandbox_replaced=True, state_lost=True)
            session = self._renewed(session)
        self._logger.info(
            "code_executed",
            {
                **session_attrs(session),
                "language": command.request.language.value,
                "exit_code": -1 if result.exit_code is None else result.exit_code,
                "duration_s": round(result.duration_s, 6),
                "timed_out": result.timed_out,
                "sandbox_replaced": result.sandbox_replaced,
            },
        )
        return CodeExecution(session=session, result=result)

    def _renewed(self, stored: SandboxSession) -> SandboxSession:
        """The session with its idle deadline slid (see the class rules), written if needed."""
        now = self._clock.now()
        exact = stored.renewed(now, self._ttl)
        if self._renew_slack and stored.expires_at >= exact.expires_at:
            return stored
        session = stored.renewed(now, self._ttl + self._renew_slack) if self._renew_slack else exact
        self._repository.save(session)
        return session

    def _validate(self, request: ExecutionRequest) -> None:
        size = len(request.code.encode("utf-8", errors="surrogatepass"))
        if size > self._limits.max_code_bytes:
            raise CodeTooLargeError(
                f"code is {size} bytes; the limit is {self._limits.max_code_bytes}"
            )
        if not 0 < request.timeout_s <= self._limits.max_timeout_s:
            raise InvalidTimeoutError(
                f"timeout_s must be in (0, {self._limits.max_timeout_s:g}]; "
                f"got {request.timeout_s:g}"
            )
