"""Several gateway processes (`LASTMILE_GATEWAY_WORKERS=3 lastmile up`): connections are dealt
to every process, HTTP and gRPC; the first process's /metrics counts each request once; a
deploy is confirmed only once every process serves it; a process killed with SIGKILL comes
back serving the current table; all of them stop with the system.

Real processes throughout: the embedded tritonserver, the gateway's three processes, the API.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e

WORKERS = 3
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    settings = make_settings(tmp_path_factory.mktemp("workers") / "home", gateway_workers=WORKERS)
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    try:
        model = make_affine(tmp_path_factory.mktemp("models") / "a.onnx", 4, 2.0, 0.0)
        running.state["model_file"] = str(model)
        running.cli("model", "import", str(model), "--name", "spread")
        running.cli("pipeline", "create", "spread", "--step", "spread")
        running.cli("deploy", "spread", "--version", "1")
        yield running
    finally:
        supervisor.stop(settings)


def _admin(system: RunningSystem, path: str) -> Any:
    s = system.settings
    token = (s.run_dir / "gateway-admin.key").read_text().strip()
    response = httpx.get(
        f"http://127.0.0.1:{s.gateway_admin_port}{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _workers(system: RunningSystem) -> list[dict[str, Any]]:
    return list(_admin(system, "/workers")["workers"])


def _requests(metrics_text: str, route: str = "default/spread") -> dict[str, float]:
    """Answered requests of `route` by protocol, from one Prometheus text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "lastmile_gateway_requests":
            for sample in family.samples:
                if sample.labels["route"] == route and sample.labels["code"] == "200":
                    protocol = sample.labels["protocol"]
                    out[protocol] = out.get(protocol, 0.0) + sample.value
    return out


def _infer_http(system: RunningSystem, count: int) -> list[str]:
    """`count` requests, each on a connection of its own; the variants that answered."""
    variants = []
    for _ in range(count):
        with httpx.Client(base_url=f"http://{system.gateway}", timeout=10) as client:
            response = client.post("/v2/models/spread/infer", json=BODY)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        variants.append(response.headers["lastmile-variant"])
    return variants


def _infer_grpc(system: RunningSystem, count: int) -> None:
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    for _ in range(count):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{system.settings.gateway_grpc_port}")
        try:
            inputs = [grpcclient.InferInput("x", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(x)
            result = client.infer("spread", inputs)
            np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
        finally:
            client.close()


def test_connections_reach_every_process_and_are_counted_once(system: RunningSystem) -> None:
    workers = _workers(system)
    assert [w["state"] for w in workers] == ["up"] * WORKERS
    assert len({w["pid"] for w in workers}) == WORKERS

    variants = _infer_http(system, 30)
    assert set(variants) == {"spread/1"}
    _infer_grpc(system, 12)

    # each follower's own figures: every process served part of both protocols
    per_follower = [
        _requests(httpx.get(f"http://127.0.0.1:{w['metrics_port']}/metrics", timeout=5).text)
        for w in workers[1:]
    ]
    for served in per_follower:
        assert served.get("http", 0) >= 1 and served.get("grpc", 0) >= 1, per_follower

    # the first process's /metrics adds every process's series up, each request once
    metrics = httpx.get(
        f"http://127.0.0.1:{system.settings.gateway_metrics_port}/metrics", timeout=5
    ).text
    assert _requests(metrics) == {"http": 30.0, "grpc": 12.0}
    assert 'lastmile_gateway_workers{state="up"} 3.0' in metrics
    assert sum(s.get("http", 0) for s in per_follower) < 30  # the first process served some


def test_a_killed_process_comes_back_and_every_process_serves_the_next_deploy(
    system: RunningSystem,
) -> None:
    victim = _workers(system)[1]
    os.kill(victim["pid"], signal.SIGKILL)
    # a deploy while that process is down or starting again: confirmed by every process up
    system.cli("model", "import", system.state["model_file"], "--name", "spread", "--force")
    system.cli("pipeline", "create", "spread", "--step", "spread:2")
    system.cli("deploy", "spread", "--version", "2")

    def back() -> bool:
        again = _workers(system)[1]
        return again["state"] == "up" and again["pid"] != victim["pid"]

    wait_until("the killed gateway process is serving again", back, 30)
    restarted = _workers(system)[1]
    assert restarted["starts"] == 2 and restarted["last_exit"] == "signal 9"
    status = json.loads(system.cli("status", "--json").stdout)["gateway"]["workers"]
    assert [w["state"] for w in status] == ["up"] * WORKERS and status[1]["starts"] == 2
    assert "gateway workers" in system.cli("status").stdout
    # connections are dealt in turn: 12 fresh ones reach every process, each on version 2
    assert set(_infer_http(system, 12)) == {"spread/2"}


def test_capture_and_shadow_figures_cover_every_process(
    system: RunningSystem, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # data capture: every process spools its own segments; all of them are summarised
    system.cli("capture", "set", "spread", "--rate", "1")
    _infer_http(system, 30)

    def captured() -> int:
        system.cli("capture", "summarise")
        view = json.loads(system.cli("capture", "show", "spread", "--json").stdout)
        return sum(t["rows"] for t in view["tensors"] if t["side"] == "inputs")

    wait_until("30 captured calls summarised", lambda: captured() >= 30, 30)
    assert captured() == 30
    system.cli("capture", "set", "spread", "--rate", "0")

    # a shadow: the copies of every process are compared, and reported as one
    nudged = make_affine(tmp_path_factory.mktemp("nudged") / "n.onnx", 4, 2.0, 0.25)
    system.cli("model", "import", str(nudged), "--name", "spread", "--force")
    system.cli("pipeline", "create", "spread", "--step", "spread:3")
    system.cli("rollout", "start", "spread", "--strategy", "shadow", "--candidate", "3")
    assert set(_infer_http(system, 30)) == {"spread/2"}

    def shadow() -> dict[str, Any]:
        report = json.loads(system.cli("rollout", "report", "spread", "--json").stdout)
        return dict(report["shadow"].get("spread/3", {}))

    wait_until("30 shadow pairs compared", lambda: shadow().get("sampled", 0) >= 30, 30)
    report = shadow()
    assert (report["pairs"], report["sampled"]) == (30, 30)
    output = report["outputs"]["y"]
    assert output["compared"] == 30 and output["agreement"] == 0.0
    assert output["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    system.cli("rollout", "abort", "spread")


def test_every_process_stops_with_the_system(system: RunningSystem) -> None:
    pids = [w["pid"] for w in _workers(system)]
    supervisor.stop(system.settings)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
