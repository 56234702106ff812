"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.settings import Settings
from manager.system import GatewayProcess
from tests.conftest import make_settings


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Settings, GatewayProcess]]:
    """A real gateway process as `lastmile up` runs it (its listening sockets the manager's),
    on free ports, allowed to route to this home's Triton port; no Triton runs."""
    settings = make_settings(tmp_path / "home")
    settings.ensure_dirs()
    process = GatewayProcess(settings, upstreams=[f"127.0.0.1:{settings.triton_http_port}"])
    process.start()
    try:
        yield settings, process
    finally:
        process.close()
