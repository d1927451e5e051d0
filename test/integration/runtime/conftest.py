"""Fixtures of the runtime conformance suite, parametrized over every factory in
testkit/runtime.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.runtime import FACTORIES, MARKS, Sandbox, create_sandbox
from usecase.ports import SandboxRuntime


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(name, marks=[getattr(pytest.mark, mark) for mark in MARKS[name]])
        for name in sorted(FACTORIES)
    ],
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
