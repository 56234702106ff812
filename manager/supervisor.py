"""``lastmile up`` and ``lastmile down``: run the system in the foreground or as a daemon.

The foreground process is uvicorn serving the management API; the API's lifespan starts and
stops Triton, the gateway and the scraper. ``--detach`` starts that same foreground process in
a new session with its output in ``LASTMILE_HOME/logs/lastmile.log`` and waits until it
answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from manager.errors import Conflict, RuntimeSetupError
from manager.procs import CHILDREN_FILE, kill_group, reap_orphans, started
from manager.settings import Settings
from manager.state_file import read_state, state_path

log = logging.getLogger(__name__)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def check_ports_free(settings: Settings) -> None:
    ports = {
        "LASTMILE_API_PORT": settings.api_port,
        "LASTMILE_GATEWAY_HTTP_PORT": settings.gateway_http_port,
        "LASTMILE_GATEWAY_GRPC_PORT": settings.gateway_grpc_port,
        "LASTMILE_GATEWAY_METRICS_PORT": settings.gateway_metrics_port,
        "LASTMILE_GATEWAY_ADMIN_PORT": settings.gateway_admin_port,
    }
    if not settings.triton_url:
        ports |= {
            "LASTMILE_TRITON_HTTP_PORT": settings.triton_http_port,
            "LASTMILE_TRITON_GRPC_PORT": settings.triton_grpc_port,
            "LASTMILE_TRITON_METRICS_PORT": settings.triton_metrics_port,
        }
    for setting, port in ports.items():
        host = settings.api_bind_host if setting == "LASTMILE_API_PORT" else "127.0.0.1"
        if setting.startswith("LASTMILE_GATEWAY") and setting != "LASTMILE_GATEWAY_ADMIN_PORT":
            host = settings.gateway_bind_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise RuntimeSetupError(
                    f"port {port} on {host} is taken ({exc.strerror})",
                    hint=f"stop what uses it, or choose another port with {setting}=...",
                ) from exc


def running_state(settings: Settings) -> dict[str, Any] | None:
    """The state file of the system that runs for this home, None when none does. A file left
    by a process that is gone is stale, also when its pid now names another process: our own
    (a container restarted on the same volume runs as pid 1 again), or any process that started
    after it (its start time is in the file)."""
    state = read_state(settings)
    if not state:
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or not pid_alive(pid):
        return None
    recorded = state.get("pid_started")
    if isinstance(recorded, int) and started(pid) not in (None, recorded):
        return None
    return state


def check_can_start(settings: Settings) -> None:
    """Refuse a second system on the same home or Triton settings it could not start with
    (server lists, CPU sets: said here, before anything starts); stop what a killed
    predecessor left running (its Triton, stubs and gateway hold our ports), then check that
    the ports are free."""
    from manager.system import make_runtime  # the system's own imports: only when starting

    make_runtime(settings)  # builds descriptions only: starts and connects nothing
    if running_state(settings):
        raise Conflict(
            f"Lastmile already runs for LASTMILE_HOME={settings.home}",
            hint="lastmile status shows it; lastmile down stops it",
        )
    orphans = reap_orphans(settings.run_dir)
    for orphan in orphans:
        log.warning("stopped the %s a previous run left behind", orphan["role"])
    # The kernel frees a killed process's listening sockets as its last thread exits.
    deadline = time.monotonic() + (5.0 if orphans else 0.0)
    while True:
        try:
            check_ports_free(settings)
            return
        except RuntimeSetupError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def bootstrap_owner(settings: Settings) -> str | None:
    """Upgrade the store and make the server owner on first start; returns its new key
    (written to LASTMILE_HOME/admin.key, mode 0600) so that the CLI shows it once."""
    from manager import store
    from manager.services import auth
    from manager.services.context import Platform

    settings.ensure_dirs()
    engine = store.make_engine(settings.db_url)
    try:
        store.init_db(engine)
        return auth.ensure_owner(Platform(settings=settings, engine=engine))
    finally:
        engine.dispose()


def serve_foreground(settings: Settings) -> None:
    from manager.api import create_app
    from manager.api.server import serve

    check_can_start(settings)
    settings.ensure_dirs()
    serve(create_app(settings), settings)


def start_detached(settings: Settings) -> dict[str, Any]:
    """Start ``lastmile up`` in the background and wait until its API answers."""
    check_can_start(settings)
    settings.ensure_dirs()
    state_path(settings).unlink(missing_ok=True)  # a killed run's: its pid is dead
    log_path = settings.logs_dir / "lastmile.log"
    env = dict(os.environ, LASTMILE_HOME=str(settings.home.resolve()))
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "manager.cli", "up"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + settings.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeSetupError(
                f"lastmile up exited with code {proc.returncode}; last log lines:\n{tail}",
                hint=f"full log: {log_path}",
            )
        state = read_state(settings)
        if state and state.get("pid") == proc.pid:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{state['api']['url']}/health", timeout=1).status_code == 200:
                    return state
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeSetupError(
        f"lastmile up did not answer within {settings.start_timeout_s:.0f} s",
        hint=f"see {log_path}",
    )


def stop(settings: Settings, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop the running system and make sure none of its processes is left."""
    state = read_state(settings)
    if state is None:
        # A run killed before it wrote its state may still have left children behind.
        orphans = reap_orphans(settings.run_dir)
        if orphans:
            return {"stopped": True, "pids": [], "killed": [o["pgid"] for o in orphans]}
        return {"stopped": False, "reason": "nothing running"}
    pids = [state.get("pid"), state["gateway"].get("pid")]
    pids += [t.get("pid") for t in state.get("triton", [])]
    main_pid = state.get("pid")
    if main_pid and pid_alive(main_pid):
        os.kill(main_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    killed = []
    if main_pid and pid_alive(main_pid):
        # The main process may share the caller's group (foreground up): only itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(main_pid, signal.SIGKILL)
        killed.append(main_pid)
    # Children run in sessions of their own: take their process groups down whole, also when
    # the group's leader is gone (a dead Triton's stubs live on in its group).
    for pid in pids[1:]:
        if pid and kill_group(pid):
            killed.append(pid)
    for orphan in reap_orphans(settings.run_dir):
        killed.append(orphan["pgid"])
    (settings.run_dir / CHILDREN_FILE).unlink(missing_ok=True)
    state_path(settings).unlink(missing_ok=True)
    return {"stopped": True, "pids": [p for p in pids if p], "killed": killed}
