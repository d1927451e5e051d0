"""Warm pools: how many agent-ready sandboxes of one environment to keep started ahead of need.

Capacity follows OpenSandbox's pool API: ``buffer_min``..``buffer_max`` idle members are kept
ready, and the pool's total (idle + allocated to chats) never exceeds ``pool_max``; the pool
also starts members while its total is below ``pool_min``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain.environment import Environment, recorded_packages
from domain.errors import InvalidPoolError
from domain.execution import Language

# The most members a pool may be asked to start (bufferMin, bufferMax, poolMin) through the
# API, gRPC or CLI: beyond any one host's sandboxes, and small enough that a typo cannot ask
# for 100000. The host's cap (SANDBOXD_MAX_SANDBOXES) bounds what is really started anyway.
MAX_POOL_MEMBERS = 1000

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PoolCapacity:
    buffer_min: int
    buffer_max: int
    pool_min: int
    pool_max: int

    def __post_init__(self) -> None:
        for name in ("buffer_min", "buffer_max", "pool_min", "pool_max"):
            if getattr(self, name) < 0:
                raise InvalidPoolError(f"{name} must not be negative")
        if self.buffer_min > self.buffer_max:
            raise InvalidPoolError("bufferMin must not exceed bufferMax")
        if self.pool_min > self.pool_max:
            raise InvalidPoolError("poolMin must not exceed poolMax")

    def check_requestable(self) -> None:
        """Refuse a definition asking to start more than MAX_POOL_MEMBERS members (poolMax is
        a ceiling, not a start count: it may stay high)."""
        for name in ("buffer_min", "buffer_max", "pool_min"):
            if getattr(self, name) > MAX_POOL_MEMBERS:
                raise InvalidPoolError(f"{name} must not exceed {MAX_POOL_MEMBERS}")

    @classmethod
    def fixed(cls, size: int) -> PoolCapacity:
        """Keep ``size`` idle, refill as soon as one is claimed, unbounded allocation."""
        return cls(buffer_min=size, buffer_max=size, pool_min=0, pool_max=2**31 - 1)

    def wanted_idle(self, allocated: int) -> int:
        """How many idle members the pool should hold with ``allocated`` given out."""
        room = max(0, self.pool_max - allocated)
        wanted = max(self.buffer_max, self.pool_min - allocated)
        return min(wanted, room)

    def needs_refill(self, idle: int, allocated: int) -> bool:
        """True when idle fell below buffer_min, or the total below pool_min, and there is room."""
        if idle + allocated >= self.pool_max:
            return False
        return idle < self.buffer_min or idle + allocated < self.pool_min


@dataclass(frozen=True)
class PoolDefinition:
    """A named pool for one environment (language + package set; no packages = the base one).

    The language is stored by its canonical name and the packages normalised as in Environment
    (UnsupportedLanguageError, InvalidPackageError otherwise), so a pool matches a chat's request
    for the same set written another way.
    """

    name: str
    language: str
    packages: tuple[str, ...]
    capacity: PoolCapacity
    revision: int = 1

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name):
            raise InvalidPoolError(f"pool name {self.name!r} is not a DNS label")
        environment = Environment(Language.parse(self.language), tuple(self.packages))
        object.__setattr__(self, "language", environment.language.value)
        object.__setattr__(self, "packages", environment.packages)

    @property
    def environment(self) -> Environment:
        return Environment(Language(self.language), self.packages)

    @property
    def environment_key(self) -> tuple[str, ...]:
        """The packages a session started from this environment records: what a chat's request
        must equal to be served from this pool. Every base pool has the key ``()``: the base
        sandbox serves all languages."""
        return recorded_packages(self.environment)


@dataclass(frozen=True)
class PoolStatus:
    total: int
    allocated: int
    available: int
    revision: int


def pool_size_for(capacity: int, ratio: float) -> int:
    """Pool size as a share of the host's sandbox capacity; ratio 0 means no pool."""
    if ratio <= 0:
        return 0
    return max(1, int(capacity * ratio))
