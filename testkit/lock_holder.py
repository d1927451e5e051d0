"""A separate process that takes a chat lock or the sweep leadership and holds it.

    python -m testkit.lock_holder KIND SCOPE CHAT_ID|leader

KIND is file (SCOPE = lock directory) or postgres (SCOPE = database URL). Prints "held" once it
holds, then keeps holding until killed or its standard input closes.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from uuid import UUID

from repository.database import create_database_engine
from repository.file_lock import FileSandboxLifecycleLocker, FileSweepLeaderLock
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    PostgresAdvisorySweepLeaderLock,
)


def holding(kind: str, scope: str, what: str) -> AbstractContextManager[Any]:
    if kind == "file":
        if what == "leader":
            return FileSweepLeaderLock(Path(scope)).try_lead()
        return FileSandboxLifecycleLocker(Path(scope)).lock(UUID(what))
    engine = create_database_engine(scope)
    if what == "leader":
        return PostgresAdvisorySweepLeaderLock(engine).try_lead()
    return PostgresAdvisorySandboxLifecycleLocker(engine).lock(UUID(what))


def main() -> None:
    kind, scope, what = sys.argv[1:4]
    with holding(kind, scope, what) as result:
        print("held" if result is not False else "not leader", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
