"""Generate the gRPC Python code from proto/sandboxd/v1/sandboxd.proto.

    uv run python -m entrypoint.grpc.codegen          # rewrite entrypoint/grpc/generated/
    uv run python -m entrypoint.grpc.codegen --check  # exit 1 when the committed code is stale

The generated modules are committed (grpcio-tools is a development dependency only), and a unit
test runs the check. protoc writes absolute imports (``from sandboxd.v1 import ...``); they are
rewritten to point into this package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PROTO = Path("sandboxd/v1/sandboxd.proto")
GENERATED = Path(__file__).resolve().parent / "generated"
PACKAGE = "entrypoint.grpc.generated"
FILES = ("sandboxd_pb2.py", "sandboxd_pb2.pyi", "sandboxd_pb2_grpc.py")


def generate() -> dict[str, bytes]:
    """The generated files' names and contents, without touching the tree."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(
            [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_ROOT / PROTO),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status}")
        out = Path(tmp) / PROTO.parent
        files = {name: (out / name).read_bytes() for name in FILES}
    files["sandboxd_pb2_grpc.py"] = files["sandboxd_pb2_grpc.py"].replace(
        b"from sandboxd.v1 import sandboxd_pb2", f"from {PACKAGE} import sandboxd_pb2".encode()
    )
    return files


def stale_files() -> list[str]:
    """Names of generated files that differ from what the .proto generates now."""
    return [
        name
        for name, content in generate().items()
        if not (GENERATED / name).exists() or (GENERATED / name).read_bytes() != content
    ]


def write() -> None:
    GENERATED.mkdir(exist_ok=True)
    (GENERATED / "__init__.py").write_text(
        '"""Generated from proto/sandboxd/v1/sandboxd.proto; do not edit."""\n'
    )
    for name, content in generate().items():
        (GENERATED / name).write_bytes(content)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print(f"stale generated gRPC code: {', '.join(stale)}; run {__spec__.name}")
            return 1
        print("generated gRPC code is fresh")
        return 0
    write()
    print(f"wrote {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
