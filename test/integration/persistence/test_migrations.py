"""Alembic: every revision upgrades and downgrades on PostgreSQL and SQLite, head matches the
store's table definition, and nothing runs on a database that is not at head."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import repository.pool_store  # noqa: F401 (registers the warm_pools table on metadata)
from repository.database import (
    SchemaOutOfDateError,
    alembic_config,
    check_schema_current,
    create_database_engine,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    prepare_database,
)
from repository.sqlalchemy_session import metadata
from testkit.pg import temporary_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a database with nothing in it."""
    if request.param == "sqlite":
        engine = create_database_engine(f"sqlite:///{tmp_path / 'walk.db'}")
        yield engine
        engine.dispose()
        return
    with temporary_database("sandboxd_test_walk") as url:
        engine = create_database_engine(url)
        yield engine
        engine.dispose()


def revisions_base_to_head() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def schema_differences(engine: Engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), metadata)


def test_upgrade_downgrade_upgrade_walks_every_revision(empty_engine: Engine) -> None:
    revisions = revisions_base_to_head()
    assert revisions and revisions[-1] == head_revision()
    for revision in revisions:
        migrate(empty_engine, revision)
        assert current_revision(empty_engine) == revision
    assert tables(empty_engine) == {"sandbox_sessions", "warm_pools"}
    for previous in [*reversed(revisions[:-1]), "base"]:
        downgrade(empty_engine, previous)
        assert current_revision(empty_engine) == (None if previous == "base" else previous)
    assert tables(empty_engine) == set()
    migrate(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_differences(empty_engine) == []


def test_nothing_runs_on_a_database_behind_head(empty_engine: Engine) -> None:
    with pytest.raises(SchemaOutOfDateError, match="run: sandboxd migrate"):
        check_schema_current(empty_engine)
    with pytest.raises(SchemaOutOfDateError, match="run: sandboxd migrate"):
        prepare_database(empty_engine, auto_migrate=False)
    assert tables(empty_engine) == set()  # the check alone never creates anything
    prepare_database(empty_engine, auto_migrate=True)
    check_schema_current(empty_engine)
    downgrade(empty_engine, "base")
    with pytest.raises(SchemaOutOfDateError, match="run: sandboxd migrate"):
        check_schema_current(empty_engine)


def test_a_database_from_a_newer_version_is_refused_and_left_alone(empty_engine: Engine) -> None:
    migrate(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    with pytest.raises(SchemaOutOfDateError, match="newer sandboxd"):
        prepare_database(empty_engine, auto_migrate=True)
    assert current_revision(empty_engine) == "f00dfeedbeef"
