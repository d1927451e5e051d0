"""The service facade both HTTP and gRPC call: use cases run off the event loop, behind the
admission of executions (``admission.py``), with the drain at shutdown, readiness
(``readiness.py``) and execution metrics.

Use cases are synchronous and may block for seconds (sandbox creation, code running), so each
call goes to a bounded thread pool. An execution's slot is held until its thread is done, not
until its caller stops waiting: a client that hangs up does not free capacity that is still used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar
from uuid import UUID

from domain.execution import ExecutionRequest, Language, OutputChunk
from domain.sandbox import SandboxSession, SandboxStatus
from domain.tenant import OPERATOR, Caller
from entrypoint.application.admission import ExecutionAdmission
from entrypoint.application.fair_share import ChatTurns, FairShare
from entrypoint.application.readiness import ReadinessReport, ServiceHealth
from entrypoint.application.streaming import (
    STREAM_COALESCE_S,
    STREAM_FRAME_CHARS,
    ExecutionStream,
    OutputRelay,
)
from entrypoint.application.threads import WorkerThreads
from entrypoint.metrics import ServiceMetrics, execution_outcome
from usecase.execute import CodeExecution, ExecuteCode, ExecuteCodeCommand
from usecase.ports import Logger, SandboxRuntime, SandboxSessionRepository
from usecase.sandbox import (
    CreateSandbox,
    CreateSandboxCommand,
    DestroySandbox,
    GetSandbox,
    ListSandboxes,
    RenewSandbox,
)

T = TypeVar("T")

# Other calls (ensure, get, destroy...) may run next to the executions; they get a few threads
# of their own so that a full house of executions cannot starve a DELETE.
_EXTRA_THREADS = 8


class SandboxApi:
    def __init__(
        self,
        *,
        execute_code: ExecuteCode,
        create_sandbox: CreateSandbox,
        get_sandbox: GetSandbox,
        renew_sandbox: RenewSandbox,
        destroy_sandbox: DestroySandbox,
        list_sandboxes: ListSandboxes,
        repository: SandboxSessionRepository,
        runtime: SandboxRuntime,
        metrics: ServiceMetrics,
        logger: Logger,
        max_inflight_executions: int,
        default_timeout_s: float,
        max_inflight_per_key: int | None = None,
        fair_share_floor: int = 2,
        readiness_timeout_s: float = 5.0,
        readiness_cache_s: float = 1.0,
        stream_buffer_chars: int = 1024 * 1024,
    ) -> None:
        self._execute_code = execute_code
        self._create_sandbox = create_sandbox
        self._get_sandbox = get_sandbox
        self._renew_sandbox = renew_sandbox
        self._destroy_sandbox = destroy_sandbox
        self._list_sandboxes = list_sandboxes
        self._metrics = metrics
        self._logger = logger
        self._default_timeout_s = default_timeout_s
        self._stream_buffer_chars = stream_buffer_chars
        self._admission = ExecutionAdmission(
            max_inflight_executions, max_inflight_per_key, metrics, logger
        )
        self._turns = ChatTurns()
        self._fair = FairShare(fair_share_floor)
        self._health = ServiceHealth(
            repository, runtime, metrics, logger, readiness_timeout_s, readiness_cache_s
        )
        # Slots plus queue: a message waiting for its chat's lock waits in a thread.
        self._threads = WorkerThreads(2 * max_inflight_executions + _EXTRA_THREADS, "sandboxd")

    # -- executions ----------------------------------------------------------------------------

    def build_request(
        self, code: str, language: str | None = None, timeout_s: float | None = None
    ) -> ExecutionRequest:
        """Parse what a transport received; limits are checked by the ExecuteCode use case."""
        return ExecutionRequest(
            code=code,
            language=Language.parse(language) if language else Language.PYTHON,
            timeout_s=self._default_timeout_s if timeout_s is None else timeout_s,
        )

    async def execute(
        self,
        chat_id: UUID,
        request: ExecutionRequest,
        transport: str,
        on_output: Callable[[OutputChunk], None] | None = None,
        packages: tuple[str, ...] = (),
        caller: Caller = OPERATOR,
    ) -> CodeExecution:
        """Run one execution; ``on_output`` is called from a worker thread."""
        admission = self._admission
        key = caller.tenant
        admission.admit(chat_id, key)
        started = time.perf_counter()
        work = partial(
            self._execute_code.execute,
            ExecuteCodeCommand(chat_id, request, packages, caller),
            on_output,
        )
        # Its chat's turn, then a fair running place between keys (fair_share.py); at once when
        # both are free, else waited for on the loop, holding no thread, lock or slot.
        turn = self._turns.try_take(chat_id)
        fast = turn is not None and self._fair.try_acquire(key)
        if turn is not None and not fast:
            self._turns.leave(chat_id, turn)  # nobody can step in before the wait below
        try:
            if fast:
                future = self._threads.submit(work)
            else:
                future = asyncio.ensure_future(self._when_fair(chat_id, key, work))
        except BaseException:
            admission.release(chat_id, key)
            if fast:
                self._leave_fast(chat_id, key, turn)
            raise

        def finished(done: asyncio.Future[CodeExecution]) -> None:
            if fast:
                self._leave_fast(chat_id, key, turn)
            admission.release(chat_id, key)
            self._metrics.execution_duration.labels(transport).observe(
                time.perf_counter() - started
            )
            error = True if done.cancelled() else done.exception() is not None
            outcome = "failed" if error else execution_outcome(done.result().result)
            self._metrics.executions.labels(outcome, transport).inc()

        future.add_done_callback(finished)
        return await asyncio.shield(future)

    async def _when_fair(
        self, chat_id: UUID, key: str, work: Callable[[], CodeExecution]
    ) -> CodeExecution:
        async with self._turns.turn(chat_id), self._fair.place(key):
            return await self._threads.submit(work)

    def _leave_fast(self, chat_id: UUID, key: str, turn: object) -> None:
        self._fair.release(key)
        self._turns.leave(chat_id, turn)

    def execute_stream(
        self,
        chat_id: UUID,
        request: ExecutionRequest,
        transport: str,
        packages: tuple[str, ...] = (),
        caller: Caller = OPERATOR,
    ) -> ExecutionStream:
        """Output frames as they come (coalesced, bounded), then the CodeExecution; errors are
        raised in place. Call on the event loop."""
        loop = asyncio.get_running_loop()
        relay = OutputRelay(
            loop,
            max_buffered_chars=self._stream_buffer_chars,
            max_frame_chars=STREAM_FRAME_CHARS,
            coalesce_s=STREAM_COALESCE_S,
        )
        task = asyncio.ensure_future(
            self.execute(chat_id, request, transport, relay.put, packages=packages, caller=caller)
        )
        # Output is put by the worker thread before the thread's future resolves, so closing
        # on completion never cuts off the last frames.
        task.add_done_callback(lambda _: relay.close())
        return ExecutionStream(relay, task, self._logger, transport, chat_id)

    # -- sandbox lifecycle ---------------------------------------------------------------------

    async def ensure_sandbox(
        self,
        chat_id: UUID,
        packages: tuple[str, ...] = (),
        language: str | None = None,
        caller: Caller = OPERATOR,
    ) -> SandboxSession:
        command = CreateSandboxCommand(
            chat_id, packages, Language.parse(language) if language else Language.PYTHON, caller
        )
        return await self._call(self._create_sandbox.execute, command)

    async def get_sandbox(self, chat_id: UUID, caller: Caller = OPERATOR) -> SandboxSession:
        return await self._call(self._get_sandbox.execute, chat_id, caller)

    async def renew_sandbox(self, chat_id: UUID, caller: Caller = OPERATOR) -> SandboxSession:
        return await self._call(self._renew_sandbox.execute, chat_id, caller)

    async def destroy_sandbox(
        self, chat_id: UUID, caller: Caller = OPERATOR
    ) -> SandboxSession | None:
        return await self._call(self._destroy_sandbox.execute, chat_id, caller)

    async def list_sandboxes(
        self, status: SandboxStatus | None, limit: int, offset: int, caller: Caller = OPERATOR
    ) -> list[SandboxSession]:
        return await self._call(
            partial(
                self._list_sandboxes.execute,
                status=status,
                limit=limit,
                offset=offset,
                caller=caller,
            )
        )

    # -- health and lifecycle of the service ---------------------------------------------------

    async def readiness(self) -> ReadinessReport:
        return await self._health.readiness()

    async def render_metrics(self) -> bytes:
        return await self._call(self._metrics.render)

    @property
    def inflight(self) -> int:
        return self._admission.inflight

    @property
    def queued(self) -> int:
        """Executions admitted that wait behind their chat's running one."""
        return self._admission.queued

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new executions and wait up to ``timeout_s`` for those in flight.

        True when none is left. Sandboxes are not touched: they live on until their TTL, so a
        restarted service (or another replica) picks the chats up again.
        """
        return await self._admission.drain(timeout_s)

    def close(self) -> None:
        # Threads still running (past the drain) finish on their own; nothing waits for them.
        self._threads.close()
        self._health.close()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await self._threads.submit(partial(fn, *args))
