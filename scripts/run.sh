#!/usr/bin/env bash
# Runs the service on embedded defaults (SQLite in the data dir, Docker runtime), doing its own
# set-up first. Settings: SANDBOXD_* variables (see README). Extra arguments go to `sandboxd serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# `image` builds the sandbox image on first run (about a minute) and is a no-op afterwards.
if [ "${SANDBOXD_RUNTIME:-docker}" = qemu ]; then
  scripts/setup.sh python image-tools qemu image
else
  scripts/setup.sh python docker image-tools image
fi
exec uv run --frozen sandboxd serve "$@"
