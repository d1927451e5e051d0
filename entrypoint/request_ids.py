"""Request ids, shared by HTTP (``x-request-id`` header) and gRPC (``x-request-id`` metadata):
the id an error body names is the one the log holds the detail under."""

from __future__ import annotations

import itertools
import re
import uuid

# A caller's own id is echoed only when it is short and plain, so that it cannot forge log lines.
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Generated ids: a random per-process prefix and a counter, unique without a syscall per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id_or_new(given: str | None) -> str:
    """The caller's own id when it is plain, else a fresh one."""
    return given if given and SAFE_REQUEST_ID.match(given) else new_request_id()
