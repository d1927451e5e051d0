"""The gRPC server (grpc.aio), sharing the event loop with the HTTP server."""

from __future__ import annotations

import grpc

from entrypoint.errors import ListenError
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from entrypoint.grpc.servicer import SandboxServicer

# Code is capped by SANDBOXD_MAX_CODE_BYTES well below this; the cap is for the message as a whole.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    servicer: SandboxServicer, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Start serving; returns the server and the port it bound (useful with port 0)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            # One process per port: a second service on the same port must fail, not share it.
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_SandboxServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    try:
        bound = server.add_insecure_port(host_port(host, port))
    except RuntimeError as exc:
        raise ListenError(f"cannot listen for gRPC on {host_port(host, port)}") from exc
    if bound == 0:
        raise ListenError(f"cannot listen for gRPC on {host_port(host, port)}")
    await server.start()
    return server, bound
