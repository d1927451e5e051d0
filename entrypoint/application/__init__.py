"""The async application layer both transports (``entrypoint.http``, ``entrypoint.grpc``) and
``sandboxd serve`` call: the SandboxApi facade over the use cases and the sweep with its worker.
It knows no transport."""
