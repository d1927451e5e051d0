from __future__ import annotations

import pytest

from domain.environment import (
    ArtifactKind,
    Environment,
    crc64_ecma182,
    is_cache_key,
    normalise_requirement,
)
from domain.errors import InvalidInputError, InvalidPackageError
from domain.execution import Language

PY = Language.PYTHON
JS = Language.JAVASCRIPT
VERSION = "0.1.0"
IMAGE = "0123456789abcdef" * 4


def key(language: Language, *packages: str, version: str = VERSION, image: str = IMAGE) -> str:
    return Environment(language, packages).cache_key(version, image)


def test_crc64_is_ecma_182() -> None:
    assert crc64_ecma182(b"123456789") == 0x6C40DF5F0B497347
    assert crc64_ecma182(b"") == 0
    assert crc64_ecma182(b"a") != crc64_ecma182(b"b")


def test_base_key_has_language_version_and_image() -> None:
    assert key(PY) == "python-v0.1-01234567-base"
    assert key(JS, version="2.13.7") == "javascript-v2.13-01234567-base"


def test_key_with_packages_ends_in_16_hex_of_crc64() -> None:
    made = key(PY, "tabulate==0.9.0")
    expected = crc64_ecma182(b"tabulate==0.9.0")
    assert made == f"python-v0.1-01234567-{expected:016x}"
    assert is_cache_key(made)


def test_same_set_in_any_order_or_spelling_gives_the_same_key() -> None:
    one = key(PY, "pandas>=2.0,<3", "tabulate==0.9.0", "Scikit_Learn")
    assert one == key(PY, "scikit-learn", "tabulate == 0.9.0", "PANDAS < 3, >= 2.0")
    assert one == key(PY, "tabulate==0.9.0", "scikit.learn", "pandas<3,>=2.0", "tabulate==0.9.0")


def test_different_sets_languages_versions_or_images_differ() -> None:
    keys = {
        key(PY),
        key(JS),
        key(PY, "tabulate"),
        key(PY, "tabulate==0.9.0"),
        key(PY, "tabulate", "six"),
        key(JS, "tabulate"),
        key(PY, "tabulate", version="0.2.0"),
        key(PY, "tabulate", image="fedcba98" + "0" * 56),
    }
    assert len(keys) == 8


def test_separator_keeps_concatenations_apart() -> None:
    # exec-sandbox joins with "" so these two collide there.
    assert key(PY, "ab", "c") != key(PY, "a", "bc")


def test_environment_is_a_value() -> None:
    assert Environment(PY, ("b", "a")) == Environment(PY, ("a", "b"))
    assert Environment(PY, ("a", "b")).packages == ("a", "b")
    assert Environment(PY).is_base
    assert Environment(PY, ("Pandas[Excel]>=2",)).package_names == ("pandas",)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("numpy", "numpy"),
        ("  numpy ", "numpy"),
        ("Zope.Interface", "zope-interface"),
        ("pandas==2.2.*", "pandas==2.2.*"),
        ("pandas ~= 2.1", "pandas~=2.1"),
        ("requests[socks, security]", "requests[security,socks]"),
        ("pkg===1.0+local", "pkg===1.0+local"),
        ("pkg!=1.0rc1,>0.9.post1", "pkg!=1.0rc1,>0.9.post1"),
    ],
)
def test_python_requirements_are_normalised(raw: str, normal: str) -> None:
    assert normalise_requirement(PY, raw) == normal


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("lodash", "lodash"),
        ("lodash@4.17.21", "lodash@4.17.21"),
        ("@types/node@^20", "@types/node@^20"),
    ],
)
def test_npm_requirements_pass(raw: str, normal: str) -> None:
    assert normalise_requirement(JS, raw) == normal


HOSTILE_PYTHON = [
    "",
    " ",
    "--index-url=https://evil.example/simple",
    "--extra-index-url https://evil.example",
    "-e .",
    "-e git+https://github.com/x/y",
    "-r requirements.txt",
    "./local_pkg",
    "../../etc/passwd",
    "/tmp/x.whl",
    "file:///tmp/x.whl",
    "https://evil.example/x.tar.gz",
    "pkg @ https://evil.example/pkg.whl",
    "pkg@git+https://github.com/x/y",
    "git+https://github.com/x/y",
    "pandas; os_name == 'posix'",
    "pandas\n--index-url=https://evil.example",
    "pandas\t==1.0",
    "pandas\r",
    "pandas\x00",
    "pandas\u00a0==1.0",  # no-break space
    "p\u0430ndas",  # Cyrillic a
    "pandas==1.0 --hash=sha256:00",
    "pandas==1.0;",
    "pandas==",
    "pandas==../x",
    "pandas==1.0/x",
    "pandas==$(id)",
    "pandas`id`",
    "-pandas",
    "pandas-",
    "x" * 300,
]


@pytest.mark.parametrize("raw", HOSTILE_PYTHON)
def test_hostile_python_requirements_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPackageError) as caught:
        Environment(PY, (raw,))
    assert isinstance(caught.value, InvalidInputError)


HOSTILE_NPM = [
    "",
    "--registry=https://evil.example",
    "-g",
    "lodash@file:../x",
    "file:../x",
    "./x",
    "../x",
    "/tmp/x.tgz",
    "git+https://github.com/x/y",
    "github:x/y",
    "x/y",
    "lodash@https://evil.example/x.tgz",
    "lodash@github:x/y",
    "lodash@npm:evil",
    "lodash@1.0 || 2.0",
    "lodash @1.0",
    "Lodash",
    ".hidden",
    "_private",
    "@scope/../x",
    "node_modules",
    "lodash\n--registry=x",
    "lodash@$(id)",
]


@pytest.mark.parametrize("raw", HOSTILE_NPM)
def test_hostile_npm_requirements_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPackageError):
        Environment(JS, (raw,))


def test_the_error_names_the_requirement() -> None:
    with pytest.raises(InvalidPackageError) as caught:
        Environment(PY, ("numpy", "--index-url=x"))
    assert caught.value.requirement == "--index-url=x"
    assert "--index-url=x" in str(caught.value)


def test_two_constraints_for_one_package_are_refused() -> None:
    with pytest.raises(InvalidPackageError, match="two constraints"):
        Environment(PY, ("numpy==1.26", "NumPy==2.0"))


def test_a_bare_string_is_not_a_package_list() -> None:
    with pytest.raises(InvalidPackageError):
        Environment(PY, "numpy")  # type: ignore[arg-type]


def test_non_strings_and_too_many_packages_are_refused() -> None:
    with pytest.raises(InvalidPackageError):
        Environment(PY, (42,))  # type: ignore[arg-type]
    with pytest.raises(InvalidPackageError, match="at most"):
        Environment(PY, tuple(f"pkg{i}" for i in range(65)))


def test_shell_takes_no_packages() -> None:
    assert key(Language.SHELL) == "shell-v0.1-01234567-base"
    with pytest.raises(InvalidPackageError):
        Environment(Language.SHELL, ("jq",))


def test_bad_version_or_image_hash_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Environment(PY).cache_key("1", IMAGE)
    with pytest.raises(ValueError):
        Environment(PY).cache_key(VERSION, "xyz")


def test_artifact_object_keys() -> None:
    made = key(PY, "tabulate")
    assert ArtifactKind.IMAGE.object_key(made) == f"images/{made}.tar.zst"
    assert ArtifactKind.SNAPSHOT.object_key(made) == f"snapshots/{made}.qcow2.zst"
    with pytest.raises(ValueError):
        ArtifactKind.IMAGE.object_key("../../etc/passwd")
