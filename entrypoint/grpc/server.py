"""The gRPC server (grpc.aio), sharing the event loop with the HTTP server."""

from __future__ import annotations

import grpc

from entrypoint.errors import ListenError
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from entrypoint.grpc.interceptor import ApiKeyInterceptor
from entrypoint.grpc.pools import PoolServicer
from entrypoint.grpc.servicer import SandboxServicer


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    servicer: SandboxServicer,
    host: str,
    port: int,
    *,
    interceptor: ApiKeyInterceptor,
    max_receive_message_bytes: int,
    max_send_message_bytes: int,
    pool_servicer: PoolServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving; returns the server and the port it bound (useful with port 0)."""
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            # Past these a call fails with RESOURCE_EXHAUSTED before it reaches the servicer.
            ("grpc.max_receive_message_length", max_receive_message_bytes),
            ("grpc.max_send_message_length", max_send_message_bytes),
            # One process per port: a second service on the same port must fail, not share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_SandboxServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    if pool_servicer is not None:
        pb_grpc.add_PoolServiceServicer_to_server(pool_servicer, server)  # type: ignore[no-untyped-call]
    try:
        bound = server.add_insecure_port(host_port(host, port))
    except RuntimeError as exc:
        raise ListenError(f"cannot listen for gRPC on {host_port(host, port)}") from exc
    if bound == 0:
        raise ListenError(f"cannot listen for gRPC on {host_port(host, port)}")
    await server.start()
    return server, bound
