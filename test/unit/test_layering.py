"""The dependency rule, checked from the source (import-linter checks it too, in the test command).

domain/ and usecase/ may import only the standard library and inner layers; only entrypoint/
may import dependency_injector.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_INNER = {"domain": {"domain"}, "usecase": {"domain", "usecase"}}


def imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED_INNER))
def test_inner_layers_use_only_the_standard_library(layer: str) -> None:
    offending = {}
    for path in (ROOT / layer).rglob("*.py"):
        outside = {
            name
            for name in imported_top_level_modules(path)
            if name not in sys.stdlib_module_names
            and name not in ALLOWED_INNER[layer]
            and name != "__future__"
        }
        if outside:
            offending[str(path.relative_to(ROOT))] = sorted(outside)
    assert offending == {}


def test_only_entrypoint_imports_dependency_injector() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for layer in ("domain", "usecase", "repository", "adapter")
        for path in (ROOT / layer).rglob("*.py")
        if "dependency_injector" in imported_top_level_modules(path)
    ]
    assert offenders == []


def test_the_checker_sees_a_third_party_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom sqlalchemy import select\nfrom . import sibling\n")
    assert imported_top_level_modules(sample) == {"os", "sqlalchemy"}
