"""Keyset pagination by id, the same for every listed aggregate of a workspace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlmodel import Session, col, select

T = TypeVar("T")


def page_of(
    session: Session,
    entity: type[T],
    *,
    workspace_id: int | None,
    after_id: int | None,
    limit: int | None,
    name_prefix: str | None = None,
) -> tuple[Sequence[T], int | None]:
    """Rows of ``entity`` in ``workspace_id`` by id after ``after_id``: at most ``limit`` of
    them, and the id to continue after (None on the last page)."""
    table: Any = entity
    query = select(table).where(table.workspace_id == workspace_id)
    if after_id is not None:
        query = query.where(col(table.id) > after_id)
    if name_prefix:
        query = query.where(col(table.name).startswith(name_prefix))
    query = query.order_by(col(table.id))
    if limit is not None:
        query = query.limit(limit + 1)
    rows = session.exec(query).all()
    if limit is not None and len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None
