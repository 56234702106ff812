"""Faults on a real system (embedded tritonserver, gateway, API in their own processes):
SIGKILL Triton under load, SIGKILL the gateway, SIGKILL the main process at three points of a
deploy. The system must come back by itself, restore what was live, and never leave an orphan
holding a port or a half-written repository.

Recovery bounds are generous on purpose (2 shared cores, a Python-backend model loads in ~2 s);
the figures each run measured are printed (pytest -s) for the closing note.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from manager import supervisor
from manager.procs import group_members
from manager.sdk import Lastmile
from manager.triton.client import TritonClient
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import expected_affine, make_affine, make_expand_to_shape

pytestmark = pytest.mark.e2e

RECOVERY_BOUND_S = 30.0
X = np.ones((2, 4), np.float32)
BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}


def _up(running: RunningSystem) -> None:
    proc = running.cli("up", "--detach", "--json")
    running.state = json.loads(proc.stdout)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RunningSystem]:
    """A system of its own: these tests kill its processes."""
    settings = make_settings(
        tmp_path / "home",
        scrape_interval_s=1.0,
        supervise_interval_s=0.5,
        reconcile_interval_s=0,
    )
    running = RunningSystem(settings=settings, state={})
    _up(running)
    try:
        yield running
    finally:
        supervisor.stop(settings)


def _owner(running: RunningSystem) -> Lastmile:
    return Lastmile.from_settings(running.settings)


def _wait(what: str, check: Callable[[], bool], timeout_s: float = RECOVERY_BOUND_S) -> float:
    return wait_until(what, check, timeout_s)


def _infer_ok(gateway: str, pipeline: str) -> bool:
    try:
        r = httpx.post(f"{gateway}/v2/models/{pipeline}/infer", json=BODY, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class Load:
    """Clients hammering one pipeline through the gateway; every answer's status counted."""

    def __init__(self, gateway: str, pipeline: str, clients: int = 4) -> None:
        self.url = f"{gateway}/v2/models/{pipeline}/infer"
        self.codes: Counter[int | str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                try:
                    code: int | str = http.post(self.url, json=BODY).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self.lock:
                    self.codes[code] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _deploy_affine(lm: Lastmile, tmp_path: Path, pipeline: str, scale: float) -> None:
    lm.import_model(make_affine(tmp_path / f"{pipeline}.onnx", 4, scale, 0.0), name=pipeline)
    lm.create_pipeline(pipeline, steps=[f"{pipeline}:1"])
    lm.deploy(pipeline, version=1)


def test_triton_killed_under_load_comes_back_with_its_deployments(
    fresh: RunningSystem, tmp_path: Path
) -> None:
    gateway = fresh.state["gateway"]["http"]
    with _owner(fresh) as lm:
        _deploy_affine(lm, tmp_path, "heal", 2.0)
        triton_pid = lm.status()["triton"][0]["pid"]
        stubs = [p for p in group_members(triton_pid) if p != triton_pid]
        assert stubs, "the Python-backend stub runs in Triton's process group"
        with Load(gateway, "heal") as load:
            _wait("load running", lambda: sum(load.codes.values()) > 0)
            os.kill(triton_pid, signal.SIGKILL)
            killed_at = time.monotonic()
            # the stubs of the dead server are reaped, not left holding memory
            _wait("stubs reaped", lambda: not any(Path(f"/proc/{p}").exists() for p in stubs))
            _wait("serving again", lambda: load.codes[200] > 0 and _infer_ok(gateway, "heal"))
            recovered_s = time.monotonic() - killed_at
        status = lm.status()
        events = lm.events(kind="restart")
    failures = {k: v for k, v in load.codes.items() if k != 200}
    print(f"\nTriton SIGKILL under load: back in {recovered_s:.1f} s; answers {dict(load.codes)}")
    assert recovered_s < RECOVERY_BOUND_S
    # clients saw clean answers only: 503 while no Triton answered, never a reset or a 500
    assert set(failures) <= {503}, failures
    triton = status["triton"][0]
    assert triton["state"] == "up" and triton["restarts"] == 1 and triton["pid"] != triton_pid
    assert [d["state"] for d in status["deployments"]] == ["live"]
    assert (
        events and "SIGKILL" in events[0]["message"] and events[0]["component"].startswith("triton")
    )
    out = httpx.post(f"{gateway}/v2/models/heal/infer", json=BODY, timeout=10).json()
    np.testing.assert_allclose(
        np.array(out["outputs"][0]["data"]).reshape(2, 4), expected_affine(X, 2.0, 0.0)
    )
    # the CLI shows the truth, and the restart is an event
    shown = fresh.cli("status").stdout
    assert "1 restart" in shown
    listed = json.loads(fresh.cli("events", "--json").stdout)
    assert any(e["kind"] == "restart" for e in listed)


def test_gateway_killed_comes_back_with_its_table(fresh: RunningSystem, tmp_path: Path) -> None:
    gateway = fresh.state["gateway"]["http"]
    with _owner(fresh) as lm:
        _deploy_affine(lm, tmp_path, "gw", 3.0)
        gateway_pid = lm.status()["gateway"]["pid"]
        os.kill(gateway_pid, signal.SIGKILL)
        took = _wait("gateway serving again", lambda: _infer_ok(gateway, "gw"))
        _wait("restart recorded", lambda: lm.status()["gateway"]["restarts"] == 1)
        status = lm.status()
        events = lm.events(kind="restart")
    print(f"\ngateway SIGKILL: serving again after {took:.1f} s")
    assert status["gateway"]["pid"] != gateway_pid and status["gateway"]["restarts"] == 1
    assert any(e["component"].startswith("gateway") for e in events)

    # wedged, not dead: a stopped gateway fails its health checks, is killed and restarted
    wedged_pid = status["gateway"]["pid"]
    os.kill(wedged_pid, signal.SIGSTOP)
    with _owner(fresh) as lm:
        took = _wait("wedged gateway replaced", lambda: lm.status()["gateway"]["restarts"] == 2)
        events = lm.events(kind="restart")
    assert not Path(f"/proc/{wedged_pid}").exists()  # killed and reaped
    assert "did not answer" in events[0]["message"]
    assert _infer_ok(gateway, "gw")
    print(f"gateway SIGSTOP: replaced after {took:.1f} s")


def _repository_state(home: Path) -> dict[str, set[str]]:
    repo = home / "repository"
    return {
        d.name: {v.name for v in d.iterdir() if v.is_dir()}
        for d in sorted(repo.iterdir())
        if d.is_dir()
    }


def _deploy_events(home: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(home / "lastmile.db") as db:
        return [
            (str(a), int(v), str(o))
            for a, v, o in db.execute(
                "select action, version, outcome from deployment_event order by id"
            )
        ]


def _kill_main_when(running: RunningSystem, condition: Callable[[], bool]) -> None:
    """Start a deploy of ``kp`` version 2 in the background; SIGKILL the main process the
    moment ``condition`` holds."""
    pid = running.state["pid"]
    with _owner(running) as lm:
        deploying = threading.Thread(target=_swallow(lambda: lm.deploy("kp", version=2)))
        deploying.start()
        _wait("the kill point", condition, timeout_s=120)
        os.kill(pid, signal.SIGKILL)
        deploying.join(timeout=60)


def _swallow(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        # the server dies under it: connection errors are the point
        with contextlib.suppress(Exception):
            call()

    return run


def test_main_process_killed_during_deploys_converges(fresh: RunningSystem, tmp_path: Path) -> None:
    """Three kill points of a deploy: files being written, models loading, after the store
    said live. Each time `lastmile up` must start (no orphan holds a port) and converge: the
    repository holds exactly what the store says is live, and it serves."""
    home = fresh.settings.home
    with _owner(fresh) as lm:
        lm.import_model(make_affine(tmp_path / "a.onnx", 4, 2.0, 0.0), name="ka")
        lm.import_model(make_affine(tmp_path / "b.onnx", 4, 3.0, 0.0), name="kb")
        lm.create_pipeline("kp", steps=["ka:1"])
        lm.create_pipeline("kp", steps=["kb:1"])
        lm.deploy("kp", version=1)
    log = home / "logs" / "tritonserver.log"
    points: dict[str, Callable[[], bool]] = {
        "files written": lambda: (home / "repository" / "default.kb").exists(),
        "model loading": lambda: "default.kb" in log.read_text(errors="replace"),
        "store committed": lambda: ("deploy", 2, "live") in _deploy_events(home),
    }
    for point, condition in points.items():
        before = {p for p in _ports(fresh)}
        _kill_main_when(fresh, condition)
        _up(fresh)  # fails if an orphan still held a port
        assert before == set(_ports(fresh))
        with _owner(fresh) as lm:
            live = {d["pipeline"]: d for d in lm.deployments()}
            version = live["kp"]["version"]
            model = "kb" if version == 2 else "ka"
            # the repository holds exactly the live pipeline version and its model
            assert _repository_state(home) == {
                f"default.{model}": {"1"},
                f"default.kp.v{version}": {"1"},
            }, point
            assert live["kp"]["state"] == "live", point
            gateway = fresh.state["gateway"]["http"]
            assert _infer_ok(gateway, "kp"), point
            # back to version 1 for the next kill point
            if version == 2:
                lm.rollback("kp", version=1)
        print(f"\nmain SIGKILL at '{point}': converged on version {version}")


def _ports(running: RunningSystem) -> list[int]:
    s = running.settings
    return [s.gateway_http_port, s.triton_http_port, s.api_port]


def test_internal_ports_refuse_strangers(fresh: RunningSystem) -> None:
    """Triton's repository API needs the manager's secret; the gateway's admin endpoint its
    token; home files are this user's only."""
    triton = fresh.state["triton"][0]["http"]
    with TritonClient(triton, timeout_s=10) as stranger:
        with pytest.raises(Exception, match="restricted"):
            stranger.load_model("anything")
        with pytest.raises(Exception, match="restricted"):
            stranger.unload_model("anything")
    cmdline = Path(f"/proc/{fresh.state['triton'][0]['pid']}/cmdline").read_bytes()
    assert b"lastmile-control=xxxx" in cmdline, "the secret is not shown by ps"
    admin = f"http://127.0.0.1:{fresh.settings.gateway_admin_port}/routes"
    table = {"generation": 1, "routes": {}}
    assert httpx.put(admin, json=table, timeout=5).status_code == 401
    assert httpx.get(admin, timeout=5).status_code == 401
    token = (fresh.settings.run_dir / "gateway-admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    absurd = {"generation": 2**62, "routes": {}}
    assert httpx.put(admin, json=absurd, headers=auth, timeout=5).status_code in (409, 422)
    foreign = {
        "generation": time.time_ns() // 1_000_000 + 1,
        "routes": {
            "default/x": {
                "workspace": "default",
                "pipeline": "x",
                "variants": [
                    {
                        "name": "x/1",
                        "version": 1,
                        "weight": 100,
                        "targets": [{"url": "http://10.9.9.9:8000", "model": "m"}],
                    }
                ],
            }
        },
    }
    assert httpx.put(admin, json=foreign, headers=auth, timeout=5).status_code == 422
    home = fresh.settings.home
    modes = {p: p.stat().st_mode & 0o777 for p in [home, *home.rglob("*")] if not p.is_symlink()}
    loose = {
        str(p): oct(m)
        for p, m in modes.items()
        if (p.is_dir() and m != 0o700) or (p.is_file() and m not in (0o600, 0o700))
    }
    assert not loose, loose


def test_a_request_over_the_stub_memory_limit_fails_alone(
    tmp_path: Path,
) -> None:
    """A model whose output size comes from the request (no import-time bound): a request for
    32768×32768 floats (4 GiB) fails with an error under a 2 GiB stub limit, the server lives
    and the next request is served."""
    settings = make_settings(
        tmp_path / "home", triton_stub_memory_bytes=2 * 1024**3, reconcile_interval_s=0
    )
    running = RunningSystem(settings=settings, state={})
    _up(running)
    try:
        gateway = running.state["gateway"]["http"]
        with _owner(running) as lm:
            lm.import_model(make_expand_to_shape(tmp_path / "e.onnx"), name="expand")
            lm.create_pipeline("expand", steps=["expand:1"])
            lm.deploy("expand", version=1)

        def ask(rows: int, cols: int) -> httpx.Response:
            body = {
                "inputs": [
                    {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.5]},
                    {"name": "shape", "shape": [2], "datatype": "INT64", "data": [rows, cols]},
                ]
            }
            return httpx.post(f"{gateway}/v2/models/expand/infer", json=body, timeout=60)

        assert ask(2, 3).status_code == 200
        huge = ask(32768, 32768)
        assert huge.status_code >= 400, huge.text[:200]
        small = ask(4, 4)
        assert small.status_code == 200
        assert small.json()["outputs"][0]["data"] == [1.5] * 16
        with _owner(running) as lm:
            assert lm.status()["triton"][0]["restarts"] == 0
    finally:
        supervisor.stop(settings)
