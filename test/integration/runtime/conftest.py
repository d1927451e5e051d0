"""Fixtures of the runtime conformance suite, parametrized over every factory in factories.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.execution import ExecutionRequest, ExecutionResult, Language
from domain.sandbox import SandboxSession
from test.integration.runtime.factories import FACTORIES
from usecase.ports import OutputSink, SandboxRuntime

# Fixed times: the runtime only records them.
CREATED_AT = datetime(2030, 1, 1, tzinfo=UTC)
EXPIRES_AT = CREATED_AT + timedelta(minutes=15)


@dataclass
class Sandbox:
    runtime: SandboxRuntime
    session: SandboxSession

    @property
    def id(self) -> str:
        return self.session.container_id

    def run(
        self,
        code: str,
        language: Language = Language.PYTHON,
        timeout_s: float = 20.0,
        on_output: OutputSink | None = None,
    ) -> ExecutionResult:
        return self.runtime.execute(self.id, ExecutionRequest(code, language, timeout_s), on_output)


def create_sandbox(runtime: SandboxRuntime) -> Sandbox:
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=CREATED_AT, expires_at=EXPIRES_AT
    )
    return Sandbox(runtime, session)


@pytest.fixture(
    scope="session",
    params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in sorted(FACTORIES)],
)
def runtime(request: pytest.FixtureRequest) -> Iterator[SandboxRuntime]:
    with FACTORIES[request.param]() as made:
        yield made


@pytest.fixture
def sandbox(runtime: SandboxRuntime) -> Iterator[Sandbox]:
    """A fresh sandbox for one test, stopped after it."""
    made = create_sandbox(runtime)
    try:
        yield made
    finally:
        runtime.stop(made.id)


@pytest.fixture(scope="session")
def bystander(runtime: SandboxRuntime) -> Iterator[Sandbox]:
    """A sandbox that lives through every abuse test and must keep working."""
    made = create_sandbox(runtime)
    made.run("bystander_state = 'intact'")
    try:
        yield made
    finally:
        runtime.stop(made.id)
