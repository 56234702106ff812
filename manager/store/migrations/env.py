"""Alembic environment: the engine comes from ``manager.store.engine.upgrade`` (or, for
``alembic revision --autogenerate``, from ``LASTMILE_DATABASE_URL``)."""

from __future__ import annotations

import os

from alembic import context
from sqlmodel import SQLModel

import manager.store.entities  # noqa: F401  (the tables)

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    from manager.store.engine import make_engine

    engine = make_engine(os.environ.get("LASTMILE_DATABASE_URL", "sqlite:///.lastmile/lastmile.db"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
