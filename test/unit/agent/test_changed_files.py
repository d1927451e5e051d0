"""An execution's changed files: measured against the listing the previous execution ended
with (one walk of the workspace per execution, not two), which a file operation drops."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from adapter.agent.client import AgentClient
from domain.execution import ExecutionRequest
from testkit.agent import AgentProcess, load_guest_agent


def run(agent: AgentClient, code: str) -> Any:
    return agent.execute(ExecutionRequest(code), 65536, None)


def changed(agent: AgentClient, code: str) -> list[tuple[str, int]]:
    return [(f.path, f.size) for f in run(agent, code).changed_files]


def test_an_upload_between_executions_is_not_taken_for_the_next_ones_change(
    agent: AgentClient,
) -> None:
    assert changed(agent, "open('made.txt', 'w').write('ab')") == [("made.txt", 2)]
    agent.write_file("up.txt", [b"uploaded"], 1024)
    assert changed(agent, "x = 1") == []
    assert changed(agent, "open('up.txt', 'a').write('!')") == [("up.txt", 9)]


def test_what_a_left_over_thread_writes_between_executions_comes_with_the_next(
    agent: AgentClient, agent_process: AgentProcess
) -> None:
    assert changed(agent, "x = 1") == []
    # As a thread the code left in its interpreter would, between two executions.
    (agent_process.workdir / "late.txt").write_text("late")
    assert changed(agent, "y = 2") == [("late.txt", 4)]
    assert changed(agent, "z = 3") == []


@pytest.fixture
def module() -> ModuleType:
    return load_guest_agent("sandbox_agent_changed_files")


class CountedWalks:
    def __init__(self, files: Any) -> None:
        self.count = 0
        self._walk = files.paths.walk
        files.paths.walk = self

    def __call__(self, *args: Any, **kwargs: Any) -> bool:
        self.count += 1
        result: bool = self._walk(*args, **kwargs)
        return result


class NoLink:
    def send(self, frame: dict[str, Any]) -> None:
        assert frame.get("error") is None, frame


def test_each_execution_after_the_first_walks_the_workspace_once(
    module: ModuleType, tmp_path: Path
) -> None:
    files = module.WorkspaceFiles(str(tmp_path), None, None)
    walks = CountedWalks(files)
    before = files.before_execution()
    (tmp_path / "a").write_text("a")
    assert files.changed_since(before) == ([{"path": "a", "size": 1}], False)
    assert walks.count == 2
    before = files.before_execution()
    (tmp_path / "b").write_text("bb")
    assert files.changed_since(before) == ([{"path": "b", "size": 2}], False)
    assert walks.count == 3


def test_a_file_operation_makes_the_next_execution_list_afresh(
    module: ModuleType, tmp_path: Path
) -> None:
    files = module.WorkspaceFiles(str(tmp_path), None, None)
    (tmp_path / "a").write_text("a")
    files.changed_since(files.before_execution())
    walks = CountedWalks(files)
    files.handle(1, "file_delete", {"path": "a"}, NoLink())
    assert files.changed_since(files.before_execution()) == ([], False)
    assert walks.count == 2


def test_a_cut_listing_is_not_kept(
    module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "CHANGED_MAX_SCANNED", 2)
    for name in "abc":
        (tmp_path / name).write_text(name)
    files = module.WorkspaceFiles(str(tmp_path), None, None)
    assert files.changed_since(files.before_execution())[1] is True
    walks = CountedWalks(files)
    files.changed_since(files.before_execution())
    assert walks.count == 2
