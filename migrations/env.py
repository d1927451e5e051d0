"""Alembic environment.

``sandboxd migrate`` hands over an open connection (``config.attributes["connection"]``). Plain
``alembic`` (with the alembic.ini at the repository root) uses ``sqlalchemy.url`` when set, else
the service's own setting (SANDBOXD_DATABASE_URL, default the embedded SQLite file).

Revisions are static: they never import the application's table definitions, so an old revision
means the same thing forever.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from repository.database import create_database_engine

config = context.config


def _run(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from entrypoint.settings import Settings

    return Settings().effective_database_url


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    _run(given)
else:
    engine = create_database_engine(_url())
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()
