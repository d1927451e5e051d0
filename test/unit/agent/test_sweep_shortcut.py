"""The agent's sweep shortcut: an execution that started no process skips the /proc listing.

It holds only when the sweep before left nothing, the pid counter did not move while the code
ran, and the execution was too short for the counter to have gone all the way round.
"""

from __future__ import annotations

import subprocess
import time
from types import ModuleType
from typing import Any

import pytest

from testkit.agent import load_guest_agent

PID_MAX = 4 * 1024 * 1024


@pytest.fixture
def module() -> ModuleType:
    return load_guest_agent("sandbox_agent_sweep")


def agent_after(
    module: ModuleType, *, clean: bool = True, ran_s: float = 0.01, pid_max: int | None = PID_MAX
) -> Any:
    """The agent's sweep state during an execution that began ``ran_s`` ago (no interpreters
    are started: only the shortcut's inputs matter)."""
    agent = module.Agent.__new__(module.Agent)
    agent._clean = clean
    agent._pid_max = pid_max
    agent._running_since = (module._pid_mark(), time.monotonic() - ran_s)
    return agent


def counter_still(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # The host's pid namespace is shared with every process of the machine: fix the counter.
    monkeypatch.setattr(module, "_no_pid_since", lambda mark: True)


def test_a_short_execution_that_started_no_process_skips_the_listing(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_still(module, monkeypatch)
    assert agent_after(module)._nothing_started()


def test_a_process_started_during_the_execution_means_a_full_sweep(module: ModuleType) -> None:
    agent = agent_after(module)
    subprocess.run(["true"], check=True)
    assert not agent._nothing_started()


def test_the_pid_mark_rereads_one_kept_descriptor(module: ModuleType) -> None:
    # /proc/loadavg is opened once and read with pread: each read must render it anew.
    before = module._pid_mark()
    kept = module._Loadavg.fd
    subprocess.run(["true"], check=True)
    after = module._pid_mark()
    assert kept is not None and module._Loadavg.fd == kept
    assert after[1] != before[1]


@pytest.mark.parametrize(
    "state",
    [
        {"clean": False},  # the first execution, or a sweep that left survivors
        {"pid_max": None},  # pid_max unreadable
        {"ran_s": PID_MAX / 10_000_000 + 0.1},  # long enough to take the counter round
    ],
    ids=["not-clean-before", "no-pid-max", "counter-may-have-wrapped"],
)
def test_otherwise_the_sweep_lists_proc(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch, state: dict[str, Any]
) -> None:
    counter_still(module, monkeypatch)
    assert not agent_after(module, **state)._nothing_started()


def test_outside_an_execution_the_sweep_lists_proc(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_still(module, monkeypatch)
    agent = agent_after(module)
    agent._running_since = None  # the sweep after a timeout, or any other caller
    assert not agent._nothing_started()
