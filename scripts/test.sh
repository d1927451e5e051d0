#!/usr/bin/env bash
# The whole test suite, with its own set-up: Python dependencies, Docker engine, gVisor, QEMU, PostgreSQL,
# sandbox images; then lint, types, layering and every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh python docker gvisor image-tools qemu postgres ops-tools image

echo "== ruff" && uv run --frozen ruff check . && uv run --frozen ruff format --check .
echo "== mypy" && uv run --frozen mypy
echo "== import-linter" && uv run --frozen lint-imports
echo "== pytest" && uv run --frozen python -m pytest "$@"
