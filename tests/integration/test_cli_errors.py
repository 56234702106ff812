"""Failure paths a user meets before anything runs: each a clear message and its documented
exit code (1 error, 2 usage, 6 invalid input, 7 unavailable)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from manager.errors import RuntimeSetupError
from manager.settings import Settings
from manager.triton import runtime
from tests.conftest import make_settings


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LASTMILE_HOME=str(settings.home), COLUMNS="200")
    for field in ("api_port", "gateway_http_port", "gateway_metrics_port", "gateway_admin_port",
                  "triton_http_port", "triton_grpc_port", "triton_metrics_port"):  # fmt: skip
        env[f"LASTMILE_{field.upper()}"] = str(getattr(settings, field))
    return subprocess.run(
        [sys.executable, "-m", "manager.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_commands_without_a_running_system_say_how_to_start_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    proc = _cli(settings, "status")
    assert proc.returncode == 7
    assert "nothing is running for LASTMILE_HOME" in proc.stderr
    assert "lastmile up --detach" in proc.stderr and "Traceback" not in proc.stderr


def test_down_with_nothing_running_is_harmless(tmp_path: Path) -> None:
    proc = _cli(make_settings(tmp_path / "home"), "down", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"stopped": False, "reason": "nothing running"}


def test_up_refuses_a_taken_port_and_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings.gateway_admin_port))
        busy.listen()
        proc = _cli(settings, "up", "--detach")
    assert proc.returncode == 1
    assert f"port {settings.gateway_admin_port}" in proc.stderr
    assert "LASTMILE_GATEWAY_ADMIN_PORT" in proc.stderr
    assert not (settings.run_dir / "state.json").exists()


def test_infer_input_must_be_json(tmp_path: Path) -> None:
    proc = _cli(make_settings(tmp_path / "home"), "infer", "p", "--input", "x=[1,2")
    assert proc.returncode == 6 and "is not JSON" in proc.stderr


def test_usage_errors_help_and_version(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    assert _cli(settings, "deploy", "p").returncode == 2  # --version is required
    helped = _cli(settings, "model", "import", "-h")
    assert helped.returncode == 0 and "--sample" in helped.stdout
    version = _cli(settings, "--version")
    assert version.returncode == 0 and version.stdout.startswith("lastmile ")


def test_missing_libpython_says_which_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake only the lookup of the system library (the environment), not the check itself.
    monkeypatch.setattr(runtime.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(runtime.sysconfig, "get_config_var", lambda name: "/nonexistent")
    monkeypatch.setattr(runtime.Path, "exists", lambda self: False)
    with pytest.raises(RuntimeSetupError) as info:
        runtime.check_libpython()
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"libpython{tag}.so.1.0 is missing" in info.value.message
    assert f"apt-get install -y libpython{tag}" in str(info.value.hint)
