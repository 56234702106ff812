"""A rollout whose candidates have servers of their own (`--candidate-servers`): on a pool of
two embedded tritonservers, each pinned to its own CPU (LASTMILE_TRITON_CPUS), a shadow
candidate's copies run only on the second server and the stable version's requests only on
the first, so the copies never take the cores that answer the clients.

Real processes throughout; which server ran what comes from each Triton's own metrics
(`nv_inference_request_success` per ensemble), which CPUs each may use from /proc.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from loadtests._models import free_port_block
from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e

ROWS = [[0.5, 1.0, 2.0, 3.0]]
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROWS}]}
STRIDE = 3
SENT = 40  # over HTTP, and as many over gRPC
# one CPU per server where this process may use two: the pinning is checked too
CPUS = sorted(os.sched_getaffinity(0))[:2]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    base = free_port_block(2 * STRIDE)
    settings = make_settings(
        tmp_path_factory.mktemp("placement") / "home",
        triton_replicas=2,
        triton_port_stride=STRIDE,
        triton_http_port=base,
        triton_grpc_port=base + 1,
        triton_metrics_port=base + 2,
        triton_cpus=";".join(str(c) for c in CPUS) if len(CPUS) == 2 else None,
        reconcile_interval_s=0,
    )
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    try:
        models = tmp_path_factory.mktemp("models")
        for name in ("primary", "twin"):  # the same function: the shadow diff agrees
            path = make_affine(models / f"{name}.onnx", 4, 2.0, 0.0)
            running.cli("model", "import", str(path), "--name", name)
            running.cli("pipeline", "create", "placed", "--step", name)
        running.cli("deploy", "placed", "--version", "1")
        yield running
    finally:
        supervisor.stop(settings)


def _replicas(system: RunningSystem) -> list[dict[str, Any]]:
    return list(json.loads(system.cli("status", "--json").stdout)["triton"])


def _served(metrics_url: str, version: int) -> float:
    """Successful inferences of the pipeline version's ensemble on one server."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=5).text
    pattern = re.compile(rf'model="default\.placed\.v{version}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and pattern.search(line)
    )


def _allowed(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M).group(1)  # type: ignore[union-attr]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a server's Python-backend stubs)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning two servers apart needs two CPUs")
def test_each_server_and_its_model_processes_run_on_their_own_cpu(pool: RunningSystem) -> None:
    replicas = _replicas(pool)
    assert [r["cpus"] for r in replicas] == [str(c) for c in CPUS]
    for replica, cpu in zip(replicas, CPUS, strict=True):
        stubs = _children(replica["pid"])
        assert stubs, "the deployed model runs in a stub process the server started"
        for pid in (replica["pid"], *stubs):
            assert _allowed(pid) == str(cpu), (replica["replica"], pid)


def test_shadow_copies_run_only_on_the_candidates_server(pool: RunningSystem) -> None:
    stable_server, candidate_server = _replicas(pool)
    # the stable version must keep a server: two of two is refused, and nothing starts
    refused = pool.cli("rollout", "start", "placed", "--strategy", "shadow", "--candidate", "2",
                       "--candidate-servers", "2", check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "leaves the stable version no server" in refused.stderr
    assert "has 2 servers" in refused.stderr and "--replicas 3" in refused.stderr
    assert json.loads(pool.cli("rollout", "list", "placed", "--json").stdout) == []

    info = json.loads(
        pool.cli("rollout", "start", "placed", "--strategy", "shadow", "--candidate", "2",
                 "--candidate-servers", "1", "--shadow-queue", "64", "--json").stdout
    )  # fmt: skip
    assert (info["params"]["candidate_servers"], info["params"]["max_queue"]) == (1, 64)
    assert info["servers"] == {
        "stable": [stable_server["http"]],
        "candidates": [candidate_server["http"]],
        "isolated": True,
    }
    human = pool.cli("rollout", "status", "placed").stdout
    assert f"candidates {candidate_server['http']}" in " ".join(human.split())

    def served() -> list[float]:
        return [_served(s["metrics"], v) for s in (stable_server, candidate_server)
                for v in (1, 2)]  # fmt: skip

    before = served()
    with httpx.Client(timeout=30) as http:
        url = f"http://{pool.gateway}/v2/models/placed/infer"
        for _ in range(SENT):
            answer = http.post(url, json=BODY)
            assert answer.status_code == 200 and answer.headers["lastmile-variant"] == "placed/1"
    with grpcclient.InferenceServerClient(pool.state["gateway"]["grpc"]) as grpc:
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.asarray(ROWS, dtype=np.float32))
        for _ in range(SENT):
            grpc.infer("placed", [x])

    def delta() -> list[float]:
        return [now - then for now, then in zip(served(), before, strict=True)]

    # every copy answered on the candidate's server (sequential clients: none dropped)
    wait_until("the shadow copies are answered", lambda: delta()[3] >= 2 * SENT, timeout_s=60)
    stable_v1, stable_v2, candidate_v1, candidate_v2 = delta()
    assert (stable_v1, stable_v2) == (2 * SENT, 0), "the stable server ran no copy"
    assert (candidate_v1, candidate_v2) == (0, 2 * SENT), "the candidate server ran no primary"

    def compared() -> dict[str, Any]:
        report = json.loads(pool.cli("rollout", "report", "placed", "--json").stdout)
        return dict(report["shadow"].get("placed/2", {}).get("outputs", {}).get("y", {}))

    wait_until("pairs compared", lambda: compared().get("compared", 0) > 0, timeout_s=30)
    assert compared()["agreement"] == 1.0

    pool.cli("rollout", "abort", "placed")
    ended = json.loads(pool.cli("rollout", "status", "placed", "--json").stdout)
    assert ended["state"] == "aborted" and ended.get("servers") is None
    # with the rollout over, the stable version takes both servers again (ties rotate)
    before = served()
    with httpx.Client(timeout=30) as http:
        for _ in range(20):
            assert http.post(url, json=BODY).status_code == 200
    assert delta()[0] > 0 and delta()[2] > 0 and delta()[0] + delta()[2] == 20
