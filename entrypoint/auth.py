"""API keys: ``Authorization: Bearer KEY`` over HTTP, the same header in gRPC metadata.

Each key is a tenant. SANDBOXD_API_KEYS and SANDBOXD_ADMIN_KEYS list entries ``name:secret``
(the name identifies the tenant: it owns the chats the key creates) or, the older form, a bare
``secret``, whose tenant name is derived from it (``key-`` and 12 hex digits of its SHA-256, so
the secret itself never appears in records or logs). A name is letters, digits, ``.``, ``_``,
``-`` (at most 64); an entry whose part before the first ``:`` is not such a name is a bare
secret. Admin keys see every chat.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from domain.tenant import Caller
from entrypoint.errors import InsecureConfigurationError, UnauthenticatedError

_SCHEME = "bearer"
# Distinct accepted Authorization headers remembered (see ApiKeyAuthenticator).
_ACCEPTED_MAX = 256
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# With no keys configured (the explicit insecure development mode) every caller is this one.
ANONYMOUS = Caller("anonymous")


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the keys' lengths.
    return hashlib.sha256(value.encode("utf-8", errors="surrogatepass")).digest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str


def parse_key(entry: str) -> ApiKey:
    """``name:secret`` or a bare secret (its name derived from its hash)."""
    entry = entry.strip()
    name, sep, secret = entry.partition(":")
    if sep and _NAME.fullmatch(name) and secret.strip():
        return ApiKey(name, secret.strip())
    return ApiKey("key-" + hashlib.sha256(entry.encode()).hexdigest()[:12], entry)


def parse_keys(entries: str) -> list[ApiKey]:
    return [parse_key(entry) for entry in entries.split(",") if entry.strip()]


class ApiKeyAuthenticator:
    """Accepts a request when its bearer key equals one of the configured keys, and says which
    tenant it is.

    Every configured key is compared, in constant time, whatever matches: the time taken says
    nothing about which key (or how much of one) was right. With no keys configured (only
    allowed with the explicit insecure development setting), every request is accepted as
    ANONYMOUS.
    """

    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        callers: list[tuple[bytes, Caller]] = []
        for entries, admin in ((keys, False), (admin_keys, True)):
            for entry in entries:
                if not entry.strip():
                    continue
                key = parse_key(entry)
                callers.append((_digest(key.secret), Caller(key.name, admin=admin)))
        names = [caller.tenant for _, caller in callers]
        if len(set(names)) != len(names):
            raise InsecureConfigurationError(
                "two API keys share one name: each key is its own tenant"
            )
        self._callers = callers
        # Headers already found valid -> their caller: every request of a client presents the
        # same header, and hashing it and comparing every key costs more than the rest of
        # reading the request. Only accepted headers enter (unknown keys cannot grow it), and
        # the few spellings of the configured keys fit; it is emptied if ever it fills.
        self._accepted: dict[str, Caller] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._callers)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller ``authorization`` identifies; UnauthenticatedError when none."""
        if not self._callers:
            return ANONYMOUS
        known = self._accepted.get(authorization) if authorization else None
        if known is not None:
            return known
        if not authorization:
            raise UnauthenticatedError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != _SCHEME or not key.strip():
            raise UnauthenticatedError("malformed Authorization header: expected 'Bearer <key>'")
        given = _digest(key.strip())
        found: Caller | None = None
        for expected, caller in self._callers:
            if hmac.compare_digest(given, expected):
                found = caller
        if found is None:
            raise UnauthenticatedError("unknown API key")
        if len(self._accepted) >= _ACCEPTED_MAX:
            self._accepted.clear()
        self._accepted[authorization] = found
        return found
