"""Values as every API sends them, decided once for HTTP, gRPC and the CLI.

Exit codes: gRPC carries them as int32, and JSON clients (JavaScript's numbers, Go's int32
fields) may not hold more either, so every API clamps an exit code to [-2**31, 2**31 - 1]. User
code can report any integer (``sys.exit(2**40)`` in the interpreter the agent keeps alive); the
clamped value keeps its sign and says "huge", which is all a caller can act on.
"""

from __future__ import annotations

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def clamp_exit_code(exit_code: int | None) -> int | None:
    if exit_code is None:
        return None
    return max(INT32_MIN, min(INT32_MAX, exit_code))


def process_exit_status(exit_code: int) -> int:
    """The CLI's own exit status for the code's exit code: a process status has 8 bits, and a
    failure must never wrap to 0 (``2**40 & 255 == 0``), so codes outside 0..255 become 1."""
    clamped = clamp_exit_code(exit_code)
    assert clamped is not None
    return clamped if 0 <= clamped <= 255 else 1
