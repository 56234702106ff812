"""Shared fixtures: isolated settings (own home, free ports) and both SQL stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from loadtests._models import free_ports
from manager import store
from manager.settings import Settings

PG_URL = os.environ.get("LASTMILE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_settings(home: Path, **overrides: object) -> Settings:
    ports = free_ports(8)
    values: dict[str, object] = {
        "home": home,
        "gateway_http_port": ports[0],
        "gateway_grpc_port": ports[1],
        "gateway_metrics_port": ports[2],
        "gateway_admin_port": ports[3],
        "api_port": ports[4],
        "triton_http_port": ports[5],
        "triton_grpc_port": ports[6],
        "triton_metrics_port": ports[7],
        "scrape_interval_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


def _pg_schema_url() -> Iterator[str]:
    """A URL on the real PostgreSQL whose search_path is a fresh schema (dropped after)."""
    schema = f"lm_test_{uuid.uuid4().hex[:10]}"
    admin = store.make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # no server here
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, initialised store on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        eng = store.make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        store.init_db(eng)
        yield eng
        eng.dispose()
    else:
        for url in _pg_schema_url():
            eng = store.make_engine(url)
            store.init_db(eng)
            yield eng
            eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for Settings: SQLite in tmp, or a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
    else:
        yield from _pg_schema_url()
