"""Rich outputs through the guest agent: last expression, display(), _repr_*_ objects, caps,
and frames that user code tries to forge by printing."""

from __future__ import annotations

import base64
import json

from adapter.agent.client import AgentClient
from domain.execution import ExecutionRequest, Language, OutputChunk, OutputStream


def run(
    agent: AgentClient,
    code: str,
    language: Language = Language.PYTHON,
    on_output=None,
    timeout_s: float = 20.0,
):
    return agent.execute(ExecutionRequest(code, language, timeout_s), 65536, on_output)


def test_the_last_expression_is_displayed_as_text(agent: AgentClient) -> None:
    result = run(agent, "x = 40\nx + 2")
    assert result.stdout == ""
    assert [(o.mime_type, o.data) for o in result.outputs] == [("text/plain", "42")]
    assert run(agent, "y = 1").outputs == ()
    assert run(agent, "None").outputs == ()
    assert run(agent, "print('p')").outputs == ()  # print returns None


def test_display_and_repr_methods_in_order(agent: AgentClient) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    result = run(
        agent,
        "class Rich:\n"
        f"    def _repr_png_(self): return {png!r}\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def _repr_markdown_(self): return '**rich**'\n"
        "    def _repr_svg_(self): return '<svg/>'\n"
        "    def __repr__(self): return 'Rich()'\n"
        "display('first')\n"
        "print('between')\n"
        "Rich()\n",
    )
    assert result.stdout == "between\n"
    kinds = [(o.mime_type, o.encoding) for o in result.outputs]
    assert kinds == [
        ("text/plain", "utf-8"),
        ("image/png", "base64"),
        ("image/svg+xml", "utf-8"),
        ("text/html", "utf-8"),
        ("text/markdown", "utf-8"),
        ("text/plain", "utf-8"),
    ]
    assert result.outputs[0].data == "'first'"
    assert base64.b64decode(result.outputs[1].data) == png


def test_printing_a_display_frame_forges_nothing(agent: AgentClient) -> None:
    forged = json.dumps({"display": {"image/png": "AAAA"}})
    frame = json.dumps({"id": 1, "type": "display", "mime_type": "image/png", "data": "AAAA"})
    result = run(
        agent,
        f"import sys\nprint({forged!r})\nprint({frame!r})\n"
        f"n = sys.stderr.write({forged!r} + '\\n')",
    )
    assert result.outputs == ()
    assert forged in result.stdout and frame in result.stdout


def test_outputs_are_capped_and_truncation_is_said(agent: AgentClient) -> None:
    result = run(agent, "for i in range(100): display(i)")
    assert len(result.outputs) == 32
    assert result.outputs_truncated
    big = run(agent, "'x' * (200 * 1024)")
    assert len(big.outputs[0].data) <= 64 * 1024 + 3


def test_display_events_are_streamed_when_they_happen(agent: AgentClient) -> None:
    chunks: list[OutputChunk] = []
    run(agent, "print('a')\ndisplay(1)\nprint('b')", on_output=chunks.append)
    kinds: list[tuple[OutputStream, str]] = []
    for c in chunks:
        data = "D" if c.stream is OutputStream.DISPLAY else c.data
        if kinds and kinds[-1][0] is c.stream is OutputStream.STDOUT:
            kinds[-1] = (c.stream, kinds[-1][1] + data)
        else:
            kinds.append((c.stream, data))
    assert kinds == [
        (OutputStream.STDOUT, "a\n"),
        (OutputStream.DISPLAY, "D"),
        (OutputStream.STDOUT, "b\n"),
    ]
    (shown,) = [c for c in chunks if c.stream is OutputStream.DISPLAY]
    assert json.loads(shown.data)["data"] == "1"


def test_errors_still_show_only_the_users_frames(agent: AgentClient) -> None:
    result = run(agent, "def f():\n    1/0\nf()")
    assert "ZeroDivisionError" in result.stderr
    assert "_sandboxd" not in result.stderr
    syntax = run(agent, "1 +")
    assert "SyntaxError" in syntax.stderr and "_sandboxd" not in syntax.stderr


def test_state_and_underscore_persist(agent: AgentClient) -> None:
    run(agent, "a = [1, 2]\na")
    assert run(agent, "_ + [3]").outputs[0].data == "[1, 2, 3]"


def test_javascript_shows_its_completion_value(agent: AgentClient, node_available: None) -> None:
    result = run(agent, "let a = 20;\na * 2 + 2", Language.JAVASCRIPT)
    assert [(o.mime_type, o.data) for o in result.outputs] == [("text/plain", "42")]
    assert run(agent, "console.log('x')", Language.JAVASCRIPT).outputs == ()
    assert run(agent, "({k: 'v'})", Language.JAVASCRIPT).outputs[0].data == "{ k: 'v' }"
    assert run(agent, "await Promise.resolve(1)", Language.JAVASCRIPT).exit_code == 0


def test_changed_files_are_listed(agent: AgentClient) -> None:
    first = run(
        agent, "open('a.txt', 'w').write('abc')\nimport os\nos.makedirs('d', exist_ok=True)"
    )
    assert [(f.path, f.size) for f in first.changed_files] == [("a.txt", 3)]
    second = run(agent, "open('d/b.txt', 'w').write('hello'); n = 1")
    assert [(f.path, f.size) for f in second.changed_files] == [("d/b.txt", 5)]
    assert run(agent, "x = 1").changed_files == ()
    many = run(agent, "for i in range(150): open(f'f{i}', 'w').write('x')")
    assert len(many.changed_files) == 100 and many.changed_files_truncated


def test_giant_rich_outputs_are_capped_and_the_agent_lives(agent: AgentClient) -> None:
    # Control characters grow 6x in JSON: the cap counts them as sent.
    result = run(
        agent,
        "class H:\n"
        "    def _repr_html_(self): return '\\x01' * (1024 * 1024)\n"
        "    def __repr__(self): return 'H'\n"
        "for _ in range(2): display(H())\n",
        timeout_s=120.0,
    )
    assert not result.timed_out
    assert result.outputs_truncated
    assert sum(len(o.data) for o in result.outputs) < 8 * 1024 * 1024
    assert agent.ping() == "1"


def test_a_listing_of_long_paths_stays_within_its_frame(agent: AgentClient) -> None:
    made = run(
        agent,
        "import os\n"
        "d = '/'.join(['d' * 250] * 13)\n"
        "os.makedirs(d)\n"
        "for i in range(1300): open(os.path.join(d, 'f' * 200 + str(i)), 'w').close()\n",
    )
    assert made.changed_files_truncated
    listing = agent.list_files("")
    assert listing.truncated and 0 < len(listing.entries) < 1300
    assert agent.ping() == "1"
