"""The world of a use-case unit test: an in-memory store and fakes of every other port."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.fakes import FakeClock, FakeLogger, FakeRuntime, RecordingLocker
from usecase.sandbox import CreateSandbox

CHAT = UUID("11111111-1111-1111-1111-111111111111")
OTHER_CHAT = UUID("22222222-2222-2222-2222-222222222222")
TTL = timedelta(minutes=5)
MAX_LIFETIME = timedelta(minutes=12)


@dataclass
class World:
    repository: InMemorySandboxSessionRepository
    runtime: FakeRuntime
    clock: FakeClock
    logger: FakeLogger
    locker: RecordingLocker

    @classmethod
    def fresh(cls) -> World:
        return cls(
            repository=InMemorySandboxSessionRepository(),
            runtime=FakeRuntime(),
            clock=FakeClock(),
            logger=FakeLogger(),
            locker=RecordingLocker(),
        )

    def create_sandbox(self, ttl: timedelta = TTL, **options: Any) -> CreateSandbox:
        """CreateSandbox over this world's fakes; ``options`` as CreateSandbox takes them."""
        return CreateSandbox(
            self.repository, self.locker, self.runtime, self.clock, self.logger, ttl, **options
        )
