from __future__ import annotations

import pytest

from testkit.world import World


@pytest.fixture
def world() -> World:
    return World.fresh()
