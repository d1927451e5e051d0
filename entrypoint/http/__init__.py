"""HTTP entrypoint: FastAPI app, routes, auth, error table, SSE streaming, access log."""
