"""The management API in-process (``TestClient``, no Triton attached) on SQLite or PostgreSQL,
with the owner's key and helpers to make users with roles."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi.testclient import TestClient

from manager.api import create_app
from manager.settings import Settings
from manager.system import System
from tests.conftest import make_settings

BASE = "http://127.0.0.1"


@dataclass
class Api:
    client: TestClient
    settings: Settings
    owner_key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.owner_key}"}

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = {**self.headers(key), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def user(self, name: str, workspace: str | None = None, role: str | None = None) -> str:
        """A new principal (and its key), optionally a member of ``workspace``."""
        r = self.call(
            "POST", "/api/v1/principals", json={"name": name, "workspace": workspace, "role": role}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def import_model(self, name: str, path: Path) -> None:
        """A model version from an ONNX file, as `lastmile model import` sends it."""
        r = self.call(
            "POST", f"/api/v1/workspaces/default/models/{name}/versions",
            content=path.read_bytes(), params={"filename": path.name},
            headers={"content-type": "application/octet-stream"},
        )  # fmt: skip
        assert r.status_code == 201, r.text

    def workspace(self, name: str) -> None:
        r = self.call("POST", "/api/v1/workspaces", json={"name": name})
        assert r.status_code == 201, r.text


def running_api(home: Path, database_url: str, **overrides: Any) -> Iterator[Api]:
    settings = make_settings(home, database_url=database_url, **overrides)
    system = System(settings, with_runtime=False)
    app = create_app(settings, system=system)
    with TestClient(app, base_url=BASE) as client:
        key = settings.owner_key_path.read_text().strip()
        yield Api(client=client, settings=settings, owner_key=key)
    system.stop()


@contextmanager
def served_api(settings: Settings) -> Iterator[Settings]:
    """The API on a real port (uvicorn in a thread), as the CLI and gateways reach it."""
    system = System(settings, with_runtime=False)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, system=system), port=settings.api_port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield settings
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        system.stop()
