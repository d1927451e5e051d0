"""Exit codes past int32 are clamped by one rule (entrypoint.wire) on every API; the CLI's own
process status never wraps a failure to 0 (issue 11, item 8)."""

from __future__ import annotations

import json

import pytest

from entrypoint.cli import main
from entrypoint.wire import INT32_MAX, INT32_MIN, clamp_exit_code, process_exit_status
from testkit.container import make_container
from testkit.fakes import FakeRuntime

CHAT = "22222222-2222-2222-2222-222222222222"


@pytest.mark.parametrize(
    ("code", "clamped", "status"),
    [
        (0, 0, 0),
        (3, 3, 3),
        (255, 255, 255),
        (256, 256, 1),
        (2**40, INT32_MAX, 1),
        (-(2**40), INT32_MIN, 1),
        (-9, -9, 1),
    ],
)
def test_the_rule(code: int, clamped: int, status: int) -> None:
    assert clamp_exit_code(code) == clamped
    assert process_exit_status(code) == status


def test_none_stays_none() -> None:
    assert clamp_exit_code(None) is None


def test_the_cli_clamps_a_huge_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    container = make_container(FakeRuntime())

    status = main(["exec", "--json", "--chat-id", CHAT, f"exit:{2**40}"], container=container)
    shown = json.loads(capsys.readouterr().out)
    plain = main(["exec", "--chat-id", CHAT, f"exit:{2**40}"], container=container)

    assert shown["result"]["exit_code"] == INT32_MAX
    assert status == 1 and plain == 1  # 2**40 & 255 would be 0: "success"
