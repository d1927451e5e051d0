"""gRPC entrypoint: server, servicer and the error table for gRPC status codes."""
