"""Console and QEMU log output, drained from a pipe into files of bounded size.

A guest that floods its serial console (or makes QEMU print warnings in a loop) must not fill
the host's disk. QEMU writes to a pipe; a thread here copies it into ``<name>`` until that holds
``max_bytes``, then moves it to ``<name>.1`` (replacing the older one) and starts afresh, so at
most twice ``max_bytes`` stay on disk, always with the latest output. The pipe is drained even
when the file cannot be written (the work dir was removed), so QEMU never blocks on it. If the
service dies, QEMU's writes fail with EPIPE and the output is dropped.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import IO

_CHUNK = 65536


def follow_capped(pipe: IO[bytes], path: Path, max_bytes: int) -> threading.Thread:
    """Start a daemon thread that copies ``pipe`` into ``path`` (see the module docstring)."""
    thread = threading.Thread(
        target=_copy, args=(pipe, path, max_bytes), name=f"sandboxd-log-{path.name}", daemon=True
    )
    thread.start()
    return thread


def _copy(pipe: IO[bytes], path: Path, max_bytes: int) -> None:
    out: IO[bytes] | None = None
    written = 0
    try:
        out = path.open("ab")
        written = out.tell()
        while chunk := pipe.read1(_CHUNK):  # type: ignore[attr-defined]
            if out is None:
                continue  # keep draining
            try:
                if written + len(chunk) > max_bytes and written > 0:
                    out.close()
                    path.replace(path.with_name(path.name + ".1"))
                    out = path.open("ab")
                    written = 0
                chunk = chunk[:max_bytes]
                out.write(chunk)
                out.flush()
                written += len(chunk)
            except OSError:
                with contextlib.suppress(OSError):
                    out.close()
                out = None
    except OSError:
        while pipe.read1(_CHUNK):  # type: ignore[attr-defined]
            pass
    finally:
        with contextlib.suppress(OSError):
            pipe.close()
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()
