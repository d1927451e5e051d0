from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from entrypoint.container import Container
from testkit.container import make_container
from testkit.fakes import FakeRuntime

# Starlette's TestClient still runs on httpx, and says so on import; nothing for us to act on.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    runtime = FakeRuntime()
    yield runtime
    runtime.gate.set()


@pytest.fixture
def container(runtime: FakeRuntime) -> Container:
    return make_container(runtime)


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(container.http_app(), raise_server_exceptions=False) as client:
        yield client
    container.api().close()
