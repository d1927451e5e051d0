"""Environments: a language plus a set of packages, built once and cached under one key.

The key follows exec-sandbox's snapshot manager:
``{language}-v{major.minor}-{image hash, 8 hex}-{crc64 of the packages, 16 hex}``, or
``{language}-v{major.minor}-{image hash, 8 hex}-base`` without packages. ``major.minor`` is the
service's version, so a new release never reuses environments built by an older one; the image
hash changes whenever the base sandbox image is rebuilt.

Two deliberate differences from exec-sandbox: the package hash is a true CRC-64/ECMA-182 (theirs
chains two CRC-32 passes), and the normalised requirements are joined with a newline before
hashing (theirs concatenates, so ``["ab", "c"]`` and ``["a", "bc"]`` collide).

Requirements are validated strictly, because they end up on a pip/npm command line on the host:
only registry names with an optional version constraint pass. URLs, paths, VCS specs, options
(``--index-url``, ``-e``), environment markers and any whitespace other than plain spaces are
refused with InvalidPackageError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from domain.errors import InvalidPackageError
from domain.execution import Language

MAX_PACKAGES = 64
MAX_REQUIREMENT_LENGTH = 200

# PEP 508 names: letters, digits, and . _ - inside, starting and ending alphanumeric.
_PY_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
# PEP 440 versions (with == wildcards): a conservative character set, nothing that pip could read
# as a path, URL or option.
_PY_VERSION = r"[0-9][0-9A-Za-z.!+]*(?:\.\*)?"
_PY_CLAUSE = rf"(?:~=|===|==|!=|<=|>=|<|>) ?{_PY_VERSION}"
_PY_REQUIREMENT = re.compile(
    rf"(?P<name>{_PY_NAME})"
    rf"(?: ?\[(?P<extras> ?{_PY_NAME}(?: ?, ?{_PY_NAME})* ?)\])?"
    rf"(?: ?(?P<spec>{_PY_CLAUSE}(?: ?, ?{_PY_CLAUSE})*))?"
)
_PY_CLAUSE_SPLIT = re.compile(r"(~=|===|==|!=|<=|>=|<|>)")

# npm names: optional @scope/, lowercase url-safe characters, not starting with . or _.
_NPM_PART = r"[a-z0-9][a-z0-9._~-]*"
# npm versions, ranges and tags without spaces: no ':' or '/', so no URLs, git specs or paths.
_NPM_REQUIREMENT = re.compile(
    rf"(?P<name>(?:@{_NPM_PART}/)?{_NPM_PART})(?:@(?P<version>[0-9A-Za-z.^~<>=*+-]+))?"
)
_NPM_NAME_MAX = 214


class ArtifactKind(StrEnum):
    """What an environment is stored as in the shared artifact store (L3)."""

    IMAGE = "image"  # a container image as tar
    SNAPSHOT = "snapshot"  # a microVM disk image (qcow2)

    @property
    def object_name_suffix(self) -> str:
        return ".tar.zst" if self is ArtifactKind.IMAGE else ".qcow2.zst"

    @property
    def prefix(self) -> str:
        return "images" if self is ArtifactKind.IMAGE else "snapshots"

    def object_key(self, cache_key: str) -> str:
        """``images/{key}.tar.zst`` or ``snapshots/{key}.qcow2.zst``."""
        if not is_cache_key(cache_key):
            raise ValueError(f"not an environment cache key: {cache_key!r}")
        return f"{self.prefix}/{cache_key}{self.object_name_suffix}"


@dataclass(frozen=True)
class Environment:
    """A language and its extra packages, normalised: the same set in any order is equal.

    ``packages`` is sorted and deduplicated; Python names are lowercased with runs of ``-_.``
    folded to ``-`` (PEP 503), version clauses sorted. Two different constraints for one
    package are refused rather than guessed between.
    """

    language: Language
    packages: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", normalise_packages(self.language, self.packages))

    @property
    def is_base(self) -> bool:
        return not self.packages

    @property
    def package_names(self) -> tuple[str, ...]:
        return tuple(_name_of(self.language, package) for package in self.packages)

    def cache_key(self, service_version: str, image_hash: str) -> str:
        """``{language}-v{major.minor}-{image8}-{crc64 16 hex}``, or ``...-base``."""
        parts = service_version.split(".")
        if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
            raise ValueError(f"service version must start with major.minor: {service_version!r}")
        if not re.fullmatch(r"[0-9a-f]{8,}", image_hash):
            raise ValueError(f"image hash must be 8+ lowercase hex digits: {image_hash!r}")
        prefix = f"{self.language.value}-v{parts[0]}.{parts[1]}-{image_hash[:8]}"
        if self.is_base:
            return f"{prefix}-base"
        return f"{prefix}-{crc64_ecma182(chr(10).join(self.packages).encode()):016x}"


_CACHE_KEY = re.compile(r"[a-z]+-v[0-9]+\.[0-9]+-[0-9a-f]{8}-(?:base|[0-9a-f]{16})")


def is_cache_key(value: str) -> bool:
    """True for strings of the cache-key shape (safe as a file name, image tag or object key)."""
    return _CACHE_KEY.fullmatch(value) is not None


def normalise_packages(language: Language, requirements: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise requirements; sorted, deduplicated. Raises InvalidPackageError."""
    if isinstance(requirements, str):  # a lone string would be iterated letter by letter
        raise InvalidPackageError(requirements, "packages must be a list of requirements")
    normalised: dict[str, str] = {}
    for requirement in requirements:
        one = normalise_requirement(language, requirement)
        name = _name_of(language, one)
        if normalised.get(name, one) != one:
            raise InvalidPackageError(requirement, f"{name} is listed with two constraints")
        normalised[name] = one
    if len(normalised) > MAX_PACKAGES:
        raise InvalidPackageError(
            f"{len(normalised)} packages", f"at most {MAX_PACKAGES} packages per environment"
        )
    return tuple(sorted(normalised.values()))


def normalise_requirement(language: Language, requirement: object) -> str:
    """One requirement in its canonical form, or InvalidPackageError."""
    if not isinstance(requirement, str):
        raise InvalidPackageError(repr(requirement), "a requirement must be a string")
    if len(requirement) > MAX_REQUIREMENT_LENGTH:
        raise InvalidPackageError(requirement[:40] + "...", "too long")
    if not requirement.isascii() or not requirement.isprintable():
        raise InvalidPackageError(requirement, "only printable ASCII is allowed")
    text = requirement.strip(" ")
    if language is Language.PYTHON:
        return _normalise_python(requirement, text)
    if language is Language.JAVASCRIPT:
        return _normalise_npm(requirement, text)
    raise InvalidPackageError(requirement, f"{language.value} environments take no packages")


def _normalise_python(original: str, text: str) -> str:
    match = _PY_REQUIREMENT.fullmatch(text)
    if match is None:
        raise InvalidPackageError(
            original, "expected a PyPI name with optional version specifiers, e.g. pandas>=2.0"
        )
    name = _pep503(match["name"])
    extras = ""
    if match["extras"]:
        names = sorted({_pep503(extra.strip(" ")) for extra in match["extras"].split(",")})
        extras = f"[{','.join(names)}]"
    spec = ""
    if match["spec"]:
        clauses = sorted(
            "".join(_PY_CLAUSE_SPLIT.split(clause.replace(" ", ""))[1:])
            for clause in match["spec"].split(",")
        )
        spec = ",".join(clauses)
    return f"{name}{extras}{spec}"


def _normalise_npm(original: str, text: str) -> str:
    match = _NPM_REQUIREMENT.fullmatch(text)
    if match is None or len(match["name"]) > _NPM_NAME_MAX:
        raise InvalidPackageError(
            original, "expected an npm name with an optional @version, e.g. lodash@4.17.21"
        )
    if match["name"] in {"node_modules", "favicon.ico"}:
        raise InvalidPackageError(original, "reserved npm name")
    return text


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name_of(language: Language, requirement: str) -> str:
    if language is Language.JAVASCRIPT:
        match = _NPM_REQUIREMENT.fullmatch(requirement)
    else:
        match = _PY_REQUIREMENT.fullmatch(requirement)
    assert match is not None  # only called on normalised requirements
    return match["name"]


# CRC-64/ECMA-182: polynomial 0x42F0E1EBA9EA3693, initial value 0, not reflected, no final XOR
# (check value for b"123456789": 0x6C40DF5F0B497347).
_CRC64_POLY = 0x42F0E1EBA9EA3693
_MASK64 = (1 << 64) - 1


def _crc64_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 56
        for _ in range(8):
            crc = ((crc << 1) ^ _CRC64_POLY) if crc & (1 << 63) else (crc << 1)
            crc &= _MASK64
        table.append(crc)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_ecma182(data: bytes) -> int:
    """CRC-64/ECMA-182 of ``data`` (a fingerprint for cache keys, not a security hash)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & _MASK64) ^ _CRC64_TABLE[((crc >> 56) ^ byte) & 0xFF]
    return crc


@dataclass(frozen=True)
class BuiltEnvironment:
    """An environment present in a local store (L2): ``reference`` is what a runtime starts from
    (a Docker image tag, a qcow2 path)."""

    key: str
    environment: Environment
    reference: str
    size_bytes: int


# -- the packages a session records -----------------------------------------------------------
# A sandbox may have packages of both languages (its environment's, plus any installed into it
# later). Sessions record them in one list: Python requirements as they are, npm ones prefixed
# with ``npm:`` (neither kind of validated requirement can contain a colon).

NPM_PREFIX = "npm:"


def recorded_packages(environment: Environment) -> tuple[str, ...]:
    """The environment's packages in the form sessions record them."""
    if environment.language is Language.JAVASCRIPT:
        return tuple(NPM_PREFIX + package for package in environment.packages)
    return environment.packages


def recorded_environment(recorded: Iterable[str], language: Language) -> Environment:
    """The recorded packages of one language, as an Environment."""
    if language is Language.JAVASCRIPT:
        packages = [p.removeprefix(NPM_PREFIX) for p in recorded if p.startswith(NPM_PREFIX)]
    elif language is Language.PYTHON:
        packages = [p for p in recorded if not p.startswith(NPM_PREFIX)]
    else:
        packages = []
    return Environment(language, tuple(packages))


PACKAGE_LANGUAGES = (Language.PYTHON, Language.JAVASCRIPT)


def merged_packages(recorded: Iterable[str], requested: Environment) -> tuple[str, ...]:
    """Recorded packages plus the requested ones; for a name in both, the request's constraint
    wins (it is what was installed last)."""
    recorded = tuple(recorded)
    merged: list[str] = []
    for language in PACKAGE_LANGUAGES:
        have = recorded_environment(recorded, language)
        if language is requested.language:
            replaced = set(requested.package_names)
            kept = [p for p, n in zip(have.packages, have.package_names, strict=True)
                    if n not in replaced]  # fmt: skip
            have = Environment(language, (*kept, *requested.packages))
        merged.extend(recorded_packages(have))
    return tuple(merged)


def missing_packages(recorded: Iterable[str], requested: Environment) -> Environment:
    """The requested packages a sandbox with these recorded packages does not have (exactly)."""
    have = set(recorded_environment(recorded, requested.language).packages)
    return Environment(requested.language, tuple(p for p in requested.packages if p not in have))
