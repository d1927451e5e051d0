"""The service facade both HTTP and gRPC call: use cases run off the event loop, with the bound
on executions in flight, the drain at shutdown, readiness checks and execution metrics.

Use cases are synchronous and may block for seconds (sandbox creation, code running), so each
call goes to a bounded thread pool. An execution's slot is held until its thread is done, not
until its caller stops waiting: a client that hangs up does not free capacity that is still used.

Admission, shared fairly between API keys:
- A chat with executions in flight holds one *slot* (``max_inflight_executions`` in all): its
  further messages wait behind its lock in a *queue* of the same size, and do not take slots
  of their own, so a chat's backlog cannot crowd out other chats.
- One key's executions (running and queued) are capped at ``max_inflight_per_key``: a key that
  floods gets 429s while the remaining slots stay free for the other keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar
from uuid import UUID

from domain.errors import TooManyExecutionsError
from domain.execution import ExecutionRequest, Language, OutputChunk
from domain.sandbox import SandboxSession, SandboxStatus
from domain.tenant import OPERATOR, Caller
from entrypoint.application.streaming import (
    STREAM_COALESCE_S,
    STREAM_FRAME_CHARS,
    ExecutionStream,
    OutputRelay,
)
from entrypoint.errors import ShuttingDownError
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

_COUNT_PAGE = 1000
# Other calls (ensure, get, destroy...) may run next to the executions; they get a few threads
# of their own so that a full house of executions cannot starve a DELETE.
_EXTRA_THREADS = 8


@dataclass(frozen=True)
class ReadinessReport:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


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
        self._repository = repository
        self._runtime = runtime
        self._metrics = metrics
        self._logger = logger
        self._max_inflight = max_inflight_executions
        self._max_per_key = max_inflight_per_key or max(1, max_inflight_executions * 3 // 4)
        self._default_timeout_s = default_timeout_s
        self._readiness_timeout_s = readiness_timeout_s
        self._readiness_cache_s = readiness_cache_s
        self._readiness_cache: tuple[float, ReadinessReport] | None = None
        self._readiness_probe: asyncio.Future[ReadinessReport] | None = None
        # Readiness probes never queue behind executions: they have threads of their own (two,
        # the database and the runtime, probed at once).
        self._probe_executor = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="sandboxd-ready"
        )
        self._stream_buffer_chars = stream_buffer_chars
        # Slots plus queue: a message waiting for its chat's lock waits in a thread.
        self._executor = ThreadPoolExecutor(
            max_workers=2 * max_inflight_executions + _EXTRA_THREADS, thread_name_prefix="sandboxd"
        )
        # Touched only on the event loop thread (admission and done callbacks run there).
        self._inflight = 0  # slots: chats with executions in flight
        self._queued = 0  # further executions waiting behind their chat's
        self._by_chat: Counter[UUID] = Counter()
        self._by_key: Counter[str] = Counter()
        self._draining = False
        self._idle: asyncio.Event | None = None
        metrics.on_scrape(self._count_sessions)

    # -- requests ------------------------------------------------------------------------------

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
        loop = asyncio.get_running_loop()
        self._admit(chat_id, caller.tenant)
        started = time.perf_counter()
        try:
            future = loop.run_in_executor(
                self._executor,
                partial(
                    self._execute_code.execute,
                    ExecuteCodeCommand(chat_id, request, packages, caller),
                    on_output,
                ),
            )
        except BaseException:
            self._release(chat_id, caller.tenant)
            raise

        def finished(done: asyncio.Future[CodeExecution]) -> None:
            self._release(chat_id, caller.tenant)
            self._metrics.execution_duration.labels(transport).observe(
                time.perf_counter() - started
            )
            error = None if done.cancelled() else done.exception()
            outcome = "failed" if error is not None else execution_outcome(done.result().result)
            self._metrics.executions.labels(outcome, transport).inc()

        future.add_done_callback(finished)
        return await asyncio.shield(future)

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

    async def readiness(self) -> ReadinessReport:
        """The session store and the runtime both answer within the readiness timeout.

        Answered from a cache of ``readiness_cache_s``, and probed on threads of its own (one
        probe at a time, shared by concurrent callers): a flood of /readyz costs nothing, and
        executions holding every worker thread cannot delay it.
        """
        cached = self._readiness_cache
        if cached is not None and time.monotonic() - cached[0] < self._readiness_cache_s:
            return cached[1]
        loop = asyncio.get_running_loop()
        probe = self._readiness_probe
        if probe is None or probe.done() or probe.get_loop() is not loop:
            probe = self._readiness_probe = asyncio.ensure_future(self._probe_readiness())
        return await asyncio.shield(probe)

    async def _probe_readiness(self) -> ReadinessReport:
        checks = await asyncio.gather(
            self._check(partial(self._repository.list_sessions, limit=1)),
            self._check(self._runtime.list_managed),
        )
        report = ReadinessReport({"database": checks[0], "runtime": checks[1]})
        self._readiness_cache = (time.monotonic(), report)
        return report

    async def render_metrics(self) -> bytes:
        return await self._call(self._metrics.render)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        """Executions admitted that wait behind their chat's running one."""
        return self._queued

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new executions and wait up to ``timeout_s`` for those in flight.

        True when none is left. Sandboxes are not touched: they live on until their TTL, so a
        restarted service (or another replica) picks the chats up again.
        """
        self._draining = True
        if self._inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            self._logger.warning("drain_timed_out", {"in_flight": self._inflight})
            return False
        return True

    def close(self) -> None:
        # Threads still running (past the drain) finish on their own; nothing waits for them.
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._probe_executor.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------------------------

    def _admit(self, chat_id: UUID, key: str) -> None:
        if self._draining:
            raise ShuttingDownError("the service is shutting down; retry on another replica")
        if self._by_key[key] >= self._max_per_key:
            raise TooManyExecutionsError(
                f"this API key has {self._by_key[key]} executions in flight, its limit is "
                f"{self._max_per_key}"
            )
        if self._by_chat[chat_id]:
            # Waits behind its chat's running execution: no slot of its own.
            if self._queued >= self._max_inflight:
                raise TooManyExecutionsError(
                    f"{self._queued} executions wait for their chat, the limit is "
                    f"{self._max_inflight}"
                )
            self._queued += 1
        else:
            if self._inflight >= self._max_inflight:
                raise TooManyExecutionsError(
                    f"{self._inflight} executions in flight, the limit is {self._max_inflight}"
                )
            self._inflight += 1
        self._by_chat[chat_id] += 1
        self._by_key[key] += 1
        self._metrics.executions_in_flight.set(self._inflight)

    def _release(self, chat_id: UUID, key: str) -> None:
        self._by_key[key] -= 1
        if self._by_key[key] <= 0:
            del self._by_key[key]
        self._by_chat[chat_id] -= 1
        if self._by_chat[chat_id] > 0:
            self._queued -= 1  # the next waiter of this chat inherits its slot
        else:
            del self._by_chat[chat_id]
            self._inflight -= 1
        self._metrics.executions_in_flight.set(self._inflight)
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    async def _check(self, probe: Callable[[], object]) -> str:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._probe_executor, probe),
                timeout=self._readiness_timeout_s,
            )
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    def _count_sessions(self) -> None:
        for status in SandboxStatus:
            total, offset = 0, 0
            try:
                while True:
                    page = self._repository.list_sessions(
                        status=status, limit=_COUNT_PAGE, offset=offset
                    )
                    total += len(page)
                    offset += len(page)
                    if len(page) < _COUNT_PAGE:
                        break
            except Exception as exc:
                # A scrape must not fail because the store is down; readiness reports that.
                self._logger.warning("metrics_count_failed", {"error": type(exc).__name__})
                return
            self._metrics.live_sandboxes.labels(status.value).set(total)
