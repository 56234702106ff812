"""The Alembic migrations build exactly the schema the entities describe (SQLite and
PostgreSQL): a column or index added to an entity without its migration fails here."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from manager import store


def _diff(url: str) -> list[object]:
    engine = store.make_engine(url)
    try:
        store.init_db(engine)
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))
    finally:
        engine.dispose()


def test_schema_from_migrations_matches_the_entities(database_url: str) -> None:
    """SQLite and a fresh schema on the real PostgreSQL."""
    assert _diff(database_url) == []


def test_downgrade_to_the_first_revision_and_back(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store.init_db(engine)
        from alembic import command

        command.downgrade(store.engine.alembic_config(engine), "0001")
        store.upgrade(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    finally:
        engine.dispose()
