"""Small lookups every service makes the same way."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from manager import store
from manager.names import check_name


def workspace_pipeline(
    session: Any, workspace: str, name: str
) -> tuple[store.Workspace, store.Pipeline]:
    """The workspace and its pipeline ``name``; NotFound (or InvalidInput for a bad name)."""
    check_name(name, kind="pipeline")
    ws = store.get_workspace(session, name=workspace)
    return ws, store.get_pipeline(session, workspace=ws, name=name)


def as_utc(when: datetime) -> datetime:
    """A time in UTC: naive times (as SQLite gives them back) are UTC already."""
    return (
        when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    )
