"""What a chat asks to run and what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import UnsupportedLanguageError


class Language(StrEnum):
    """Languages the guest agent keeps an interpreter for; state persists per language per chat."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    SHELL = "shell"

    @classmethod
    def accepted_names(cls) -> list[str]:
        """Every name ``parse`` accepts (in lower case): the languages and their aliases."""
        return sorted([*(member.value for member in cls), *_ALIASES])

    @classmethod
    def parse(cls, value: str) -> Language:
        normalized = value.strip().lower()
        normalized = _ALIASES.get(normalized, normalized)
        try:
            return cls(normalized)
        except ValueError as exc:
            supported = ", ".join(member.value for member in cls)
            raise UnsupportedLanguageError(
                f"unsupported language {value!r}; supported: {supported}"
            ) from exc


_ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "node": "javascript",
    "sh": "shell",
    "bash": "shell",
}


@dataclass(frozen=True)
class ExecutionRequest:
    """Code to run in a chat's sandbox. Limits are validated by the ExecuteCode use case."""

    code: str
    language: Language = Language.PYTHON
    timeout_s: float = 30.0


class OutputStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    # A rich output as it is displayed: the chunk's data is the RichOutput as JSON. Never merged
    # with other chunks or split.
    DISPLAY = "display"


@dataclass(frozen=True)
class RichOutput:
    """A displayed value of an execution, as a notebook shows it: the last expression's value,
    a matplotlib figure, a DataFrame's table. ``encoding`` is "base64" for binary types
    (image/png), "utf-8" for text ones."""

    mime_type: str
    data: str
    encoding: str = "utf-8"


@dataclass(frozen=True)
class ChangedFile:
    """A workspace file that an execution created or changed."""

    path: str
    size: int


@dataclass(frozen=True)
class OutputChunk:
    """A piece of output streamed while the code runs."""

    stream: OutputStream
    data: str


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one execution.

    exit_code: the interpreter's status for this piece of code (0 ok, 1 uncaught error, the shell's
      own status for shell); None when the code did not finish (timed out).
    timed_out: the code ran past its timeout and was killed; the agent restarted that language's
      interpreter, so ``state_lost`` is set too.
    stdout_truncated / stderr_truncated: output passed the cap; what fit is kept.
    sandbox_replaced: the chat's sandbox was found dead and replaced before this ran.
    state_lost: variables and files from earlier messages are gone (replaced sandbox or restarted
      interpreter).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    sandbox_replaced: bool = False
    state_lost: bool = False
    # Rich outputs in display order, capped in number and total size (truncated: some dropped).
    outputs: tuple[RichOutput, ...] = ()
    outputs_truncated: bool = False
    # Workspace files this execution created or changed (bounded; truncated: more were).
    changed_files: tuple[ChangedFile, ...] = ()
    changed_files_truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out
