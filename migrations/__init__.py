"""Alembic environment and revisions of sandboxd's schema (run them with ``sandboxd migrate``)."""
