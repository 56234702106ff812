"""A real Lastmile system (embedded tritonserver, gateway, API) for the e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from manager import supervisor
from manager.settings import Settings
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import make_settings


@dataclass
class RunningSystem:
    settings: Settings
    state: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a `lastmile` subprocess at this system."""
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "LASTMILE_HOME": str(s.home),
                "LASTMILE_API_PORT": str(s.api_port),
                "LASTMILE_GATEWAY_HTTP_PORT": str(s.gateway_http_port),
                "LASTMILE_GATEWAY_GRPC_PORT": str(s.gateway_grpc_port),
                "LASTMILE_GATEWAY_METRICS_PORT": str(s.gateway_metrics_port),
                "LASTMILE_GATEWAY_ADMIN_PORT": str(s.gateway_admin_port),
                "LASTMILE_TRITON_HTTP_PORT": str(s.triton_http_port),
                "LASTMILE_TRITON_GRPC_PORT": str(s.triton_grpc_port),
                "LASTMILE_TRITON_METRICS_PORT": str(s.triton_metrics_port),
                "LASTMILE_SCRAPE_INTERVAL_S": "1",
                # the sklearn e2e test uploads a pickle as the owner (a workspace admin)
                "LASTMILE_ALLOW_PICKLE_UPLOADS": "true",
                "COLUMNS": "200",
                "LASTMILE_PROFILE": s.profile,
            }
        )
        if s.triton_url:
            env["LASTMILE_TRITON_URL"] = s.triton_url
        if s.triton_metrics_url:
            env["LASTMILE_TRITON_METRICS_URL"] = s.triton_metrics_url
        if s.prometheus_url:
            env["LASTMILE_PROMETHEUS_URL"] = s.prometheus_url
            env["LASTMILE_PROMETHEUS_STEP_S"] = str(s.prometheus_step_s)
        if s.gateway_metrics_urls:
            env["LASTMILE_GATEWAY_METRICS_URLS"] = s.gateway_metrics_urls
        if s.gateway_pull_token is not None:
            env["LASTMILE_GATEWAY_PULL_TOKEN"] = s.gateway_pull_token.get_secret_value()
        if s.triton_cpus:
            env["LASTMILE_TRITON_CPUS"] = s.triton_cpus
        if s.triton_control_header is not None:
            env["LASTMILE_TRITON_CONTROL_HEADER"] = s.triton_control_header.get_secret_value()
        # what the tests tune for themselves reaches the `lastmile up` they start
        for field in (
            "supervise_interval_s",
            "reconcile_interval_s",
            "triton_stub_memory_bytes",
            "health_failures_before_restart",
            "rollout_tick_s",
            "triton_replicas",
            "triton_port_stride",
            "capture_window_s",
            "capture_interval_s",
            "assay_interval_s",
            "assay_delay_s",
            "gateway_workers",
        ):
            env[f"LASTMILE_{field.upper()}"] = str(getattr(s, field))
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "manager.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"lastmile {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def gateway(self) -> str:
        return str(self.state["gateway"]["http"]).removeprefix("http://")


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``check`` until it holds; the seconds it took (AssertionError past ``timeout_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    home: Path = tmp_path_factory.mktemp("lastmile") / "home"
    settings = make_settings(home, scrape_interval_s=1.0)
    running = RunningSystem(settings=settings, state={})
    proc = running.cli("up", "--detach", "--json")
    import json

    running.state = json.loads(proc.stdout)
    try:
        yield running
    finally:
        supervisor.stop(settings)


@pytest.fixture
def external_triton(tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """A Triton the system under test does not own (as an NGC container would be), with an
    empty repository of its own and its repository API restricted to a header."""
    from loadtests._models import embedded_triton, free_ports

    with embedded_triton(tmp_path / "theirs", *free_ports(3)) as server:
        yield server
