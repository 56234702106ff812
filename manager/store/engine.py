"""Engines for SQLite (embedded default) and PostgreSQL, and the schema upgrade at start.

``init_db`` runs the Alembic migrations in ``manager/store/migrations`` up to head, so a store
made by an older Lastmile is upgraded in place; the same code runs on both databases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from manager.store.entities import DEFAULT_WORKSPACE
from manager.store.workspaces import ensure_workspace

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (head by default)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def init_db(engine: Engine) -> None:
    """Upgrade the schema to head; a store made before migrations existed (tables, no
    ``alembic_version``) is first marked as the first revision, which is what it holds."""
    from alembic import command
    from sqlalchemy import inspect

    tables = set(inspect(engine).get_table_names())
    if "workspace" in tables and "alembic_version" not in tables:
        command.stamp(alembic_config(engine), "0001")
    upgrade(engine)
    with Session(engine) as session:
        ensure_workspace(session, name=DEFAULT_WORKSPACE)
        session.commit()
