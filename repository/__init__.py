"""Session stores and per-chat lifecycle lockers."""
