"""Generated from proto/sandboxd/v1/sandboxd.proto; do not edit."""
