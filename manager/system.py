"""The running system behind ``lastmile up``: Triton, the gateway, the scraper, the store.

The management API's lifespan owns one ``System``; stopping the API stops everything it
started, children first. A state file in ``LASTMILE_HOME/run`` tells other commands (the CLI,
``lastmile down``) where things run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from manager import store
from manager.errors import RuntimeSetupError
from manager.scraper import Scraper
from manager.services import deployments
from manager.services.context import Platform
from manager.settings import Settings
from manager.triton.client import TritonClient
from manager.triton.runtime import EmbeddedTriton, ExternalTriton, TritonRuntime

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def state_path(settings: Settings) -> Path:
    return settings.run_dir / STATE_FILE


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        return dict(json.loads(state_path(settings).read_text()))
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def make_runtime(settings: Settings) -> TritonRuntime:
    if settings.triton_url:
        return ExternalTriton(
            settings.triton_url,
            metrics_url=settings.triton_metrics_url,
            start_timeout_s=settings.triton_start_timeout_s,
        )
    return EmbeddedTriton(
        repository=settings.repository_dir,
        work_dir=settings.run_dir / "triton",
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        metrics_port=settings.triton_metrics_port,
        log_path=settings.logs_dir / "tritonserver.log",
        start_timeout_s=settings.triton_start_timeout_s,
        response_cache_bytes=settings.triton_response_cache_bytes,
    )


class GatewayProcess:
    """The data-plane gateway as a child process (its own event loop, no GIL sharing)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin_url = f"http://127.0.0.1:{settings.gateway_admin_port}"
        self.log_path = settings.logs_dir / "gateway.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 20.0) -> None:
        s = self.settings
        cmd = [
            sys.executable, "-m", "rollout.gateway",
            "--host", s.gateway_bind_host,
            "--http-port", str(s.gateway_http_port),
            "--grpc-port", str(s.gateway_grpc_port),
            "--metrics-port", str(s.gateway_metrics_port),
            "--admin-port", str(s.gateway_admin_port),
            "--routes-file", str(s.run_dir / "routes.json"),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeSetupError(
                    "the gateway exited during start-up",
                    hint=f"see {self.log_path}; a port may be taken "
                    "(LASTMILE_GATEWAY_HTTP_PORT, LASTMILE_GATEWAY_GRPC_PORT, "
                    "LASTMILE_GATEWAY_ADMIN_PORT, ...)",
                )
            try:
                if httpx.get(f"{self.admin_url}/routes", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeSetupError(f"the gateway did not start within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class System:
    """Starts and stops everything ``lastmile up`` runs, in dependency order."""

    def __init__(self, settings: Settings, *, with_runtime: bool = True) -> None:
        self.settings = settings
        settings.ensure_dirs()
        engine = store.make_engine(settings.db_url)
        store.init_db(engine)
        self.platform = Platform(settings=settings, engine=engine)
        self.with_runtime = with_runtime
        self.gateway: GatewayProcess | None = None
        self.scraper: Scraper | None = None

    def start(self) -> None:
        if not self.with_runtime:
            return
        triton = make_runtime(self.settings)
        triton.start()
        self.platform.triton = triton
        try:
            self.gateway = GatewayProcess(self.settings)
            self.gateway.start()
            self.platform.gateway_admin_url = self.gateway.admin_url
            deployments.restore(self.platform)
            self.scraper = Scraper(
                engine=self.platform.engine,
                clients=self._scrape_targets,
                interval_s=self.settings.scrape_interval_s,
            )
            self.scraper.start()
        except BaseException:
            self.stop()
            raise
        _write_atomic(state_path(self.settings), json.dumps(self.status(), indent=2))

    def _scrape_targets(self) -> dict[str, TritonClient]:
        triton = self.platform.triton
        return {triton.endpoints.http_url: triton.client(5.0)} if triton else {}

    def stop(self) -> None:
        if self.scraper:
            self.scraper.stop()
        if self.gateway:
            self.gateway.stop()
        if self.platform.triton:
            self.platform.triton.stop()
        state_path(self.settings).unlink(missing_ok=True)
        self.platform.engine.dispose()

    def status(self) -> dict[str, Any]:
        s = self.settings
        triton = self.platform.triton
        host = s.gateway_host
        return {
            "home": str(s.home.resolve()),
            "pid": os.getpid(),
            "api": {"url": s.local_api_url},
            "gateway": {
                "http": f"http://{host}:{s.gateway_http_port}",
                "grpc": f"{host}:{s.gateway_grpc_port}",
                "metrics": f"http://{host}:{s.gateway_metrics_port}/metrics",
                "pid": self.gateway.pid if self.gateway else None,
            },
            "triton": [
                {
                    **triton.endpoints.to_dict(),
                    "embedded": isinstance(triton, EmbeddedTriton),
                    "pid": getattr(triton, "pid", None),
                    "ready": _ready(triton),
                }
            ]
            if triton
            else [],
            "database": _redact(s.db_url),
            "profile": s.profile,
        }


def _ready(triton: TritonRuntime) -> bool:
    with triton.client(2.0) as client:
        return client.is_ready()


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
