"""API keys: ``Authorization: Bearer KEY`` over HTTP, the same header in gRPC metadata."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from entrypoint.errors import UnauthenticatedError

_SCHEME = "bearer"


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the keys' lengths.
    return hashlib.sha256(value.encode("utf-8", errors="surrogatepass")).digest()


class ApiKeyAuthenticator:
    """Accepts a request when its bearer key equals one of the configured keys.

    Every configured key is compared, in constant time, whatever matches: the time taken says
    nothing about which key (or how much of one) was right. With no keys configured (only
    allowed with the explicit insecure development setting), every request is accepted.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check_header(self, authorization: str | None) -> None:
        """Raise UnauthenticatedError unless ``authorization`` carries a known bearer key."""
        if not self._digests:
            return
        if not authorization:
            raise UnauthenticatedError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != _SCHEME or not key.strip():
            raise UnauthenticatedError("malformed Authorization header: expected 'Bearer <key>'")
        given = _digest(key.strip())
        matched = False
        for expected in self._digests:
            matched |= hmac.compare_digest(given, expected)
        if not matched:
            raise UnauthenticatedError("unknown API key")
