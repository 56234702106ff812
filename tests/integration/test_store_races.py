"""Unique-constraint races become 409s naming what collided, on SQLite and PostgreSQL; two
imports of a new model name racing through the API give one 201 and one 409, never a 500."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.errors import Conflict
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine


def _add(session: Session, ws: store.Workspace, name: str) -> None:
    store.add_model_version(
        session, workspace=ws, name=name, sha256="0" * 64, size_bytes=1, path="/x",
        signature={}, details={},
    )  # fmt: skip


def test_two_first_versions_of_one_model_one_wins(engine: Engine) -> None:
    """Session A has registered the model but not committed when B tries: B waits on the
    database, then collides; it gets a Conflict naming the model, and A's row stands."""
    with Session(engine) as a, Session(engine) as b:
        ws_a = store.get_workspace(a, name="default")
        ws_b = store.get_workspace(b, name="default")
        store.find_model(b, workspace=ws_b, name="m")  # B looked before A wrote
        _add(a, ws_a, "m")
        outcome: list[BaseException | None] = []

        def second() -> None:
            try:
                _add(b, ws_b, "m")
                b.commit()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        if engine.dialect.name == "sqlite":
            # SQLite has one writer at a time and no view of who waits: serialised, B simply
            # registers the next version after A's (no collision, no error).
            a.commit()
            second()
            assert outcome == [None]
            model = store.get_model(a, workspace=ws_a, name="m")
            assert [v.version for v in store.list_model_versions(a, model=model)] == [1, 2]
            return
        else:  # B blocks on A's uncommitted unique key until A commits
            worker = threading.Thread(target=second)
            worker.start()
            _until_a_session_waits_on_a_lock(engine)
            a.commit()
            worker.join(timeout=30)
        (result,) = outcome
    assert isinstance(result, Conflict), result
    assert "'m'" in result.message
    with Session(engine) as check:
        ws = store.get_workspace(check, name="default")
        model = store.get_model(check, workspace=ws, name="m")
        assert [v.version for v in store.list_model_versions(check, model=model)] == [1]


def _until_a_session_waits_on_a_lock(engine: Engine, timeout_s: float = 30.0) -> None:
    """Poll PostgreSQL until some backend waits on a lock (B's insert behind A's key)."""
    import time

    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
            conn.commit()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second session never waited for the first one's row")


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def test_concurrent_first_imports_through_the_api_never_500(api: Api, tmp_path: Path) -> None:
    files = [make_affine(tmp_path / f"m{i}.onnx", 4, float(i + 1)) for i in range(2)]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def upload(path: Path) -> None:
        body = path.read_bytes()
        barrier.wait()
        r = api.call(
            "POST",
            "/api/v1/workspaces/default/models/racer/versions",
            content=body,
            headers={"content-type": "application/octet-stream"},
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=upload, args=(p,)) for p in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) in ([201, 201], [201, 409]), statuses
    versions = api.call("GET", "/api/v1/workspaces/default/models/racer").json()["versions"]
    assert len(versions) == statuses.count(201)
