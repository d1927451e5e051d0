"""Build a PostgreSQL 15 image offline for compose.yaml: ``uv run python deploy/image/postgres.py``.

The service image's builder (deploy/image/build.py) with another package list: ``debootstrap
--variant=minbase bookworm`` with Debian's postgresql-15 from the machine's mirror, the entrypoint
postgres-entrypoint.sh written into the tree, then ``docker import``. No registry involved.
Tags ``sandboxd-postgres:<hash12>`` (over suite, mirror, packages, entrypoint and import changes)
and ``sandboxd-postgres:latest``; prints the first. Same variables and data dir as the registry's
``postgres:15-bookworm``: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA
(/var/lib/postgresql/data). Needs root (debootstrap) and a Docker engine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import build  # deploy/image/build.py, next to this file
import docker

REPOSITORY = "sandboxd-postgres"
ENTRYPOINT = Path(__file__).resolve().parent / "postgres-entrypoint.sh"
BIN = "/usr/lib/postgresql/15/bin"
ROOTFS = build.Rootfs(
    repository=REPOSITORY,
    packages=("postgresql-15",),
    files={"/usr/local/bin/sandboxd-postgres-entrypoint": (0o755, ENTRYPOINT.read_text())},
    # The cluster the package's postinst made; the entrypoint creates one per volume.
    pruned=("etc/postgresql/15", "var/lib/postgresql/15"),
    changes=(
        "ENV LANG=C.UTF-8",
        f"ENV PATH={BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV PGDATA=/var/lib/postgresql/data",
        'ENTRYPOINT ["/usr/local/bin/sandboxd-postgres-entrypoint"]',
        "EXPOSE 5432",
    ),
)


def build_postgres(client: docker.DockerClient, tag_latest: bool = True) -> str:
    with tempfile.TemporaryDirectory(prefix="sandboxd-postgres-image-") as scratch:
        tag = build.build_base(client, build.configured_mirror(), Path(scratch), ROOTFS)
    if tag_latest:
        client.images.get(tag).tag(REPOSITORY, "latest")
    return tag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-latest", action="store_true", help="do not move the latest tag")
    args = parser.parse_args()
    client = docker.from_env(timeout=900)
    print(build_postgres(client, tag_latest=not args.no_latest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
