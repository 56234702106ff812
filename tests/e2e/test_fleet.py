"""A pool of Triton replicas (`lastmile up --replicas 4`): a deploy reaches every replica, the
gateway spreads the load over them, and a replica killed under load costs only the requests it
was running, then comes back and takes load again.

Real processes throughout: two embedded tritonservers, the gateway, the API. Per-replica
figures come from each Triton's own metrics (`nv_inference_request_success` of the ensemble).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests._models import free_port_block
from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
STRIDE = 3
REPLICAS = 4
PULL_TOKEN = "pull-" + "7" * 32  # what gateways the manager cannot push to present
PULLED: dict[str, int] = {}  # ports of the gateway the manager does not run (chosen up front)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    base = free_port_block(REPLICAS * STRIDE)
    PULLED.update(http=free_port_block(1), metrics=free_port_block(1), admin=free_port_block(1))
    settings = make_settings(
        tmp_path_factory.mktemp("fleet") / "home",
        triton_replicas=REPLICAS,
        triton_port_stride=STRIDE,
        triton_http_port=base,
        triton_grpc_port=base + 1,
        triton_metrics_port=base + 2,
        supervise_interval_s=0.5,
        reconcile_interval_s=0,
        gateway_pull_token=PULL_TOKEN,
        # the manager counts that gateway's traffic with its own gateway's
        gateway_metrics_urls=f"http://127.0.0.1:{PULLED['metrics']}/metrics",
    )
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    try:
        models = tmp_path_factory.mktemp("models")
        running.cli("model", "import", str(make_affine(models / "a.onnx", 4, 2.0, 0.0)),
                    "--name", "pooled")  # fmt: skip
        running.cli("pipeline", "create", "pooled", "--step", "pooled")
        running.cli("deploy", "pooled", "--version", "1")
        yield running
    finally:
        supervisor.stop(settings)


def _status(system: RunningSystem) -> dict[str, Any]:
    return dict(json.loads(system.cli("status", "--json").stdout))


def _served(system: RunningSystem, metrics_url: str) -> float:
    """Successful inferences of the pipeline's ensemble on one replica, from its metrics."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nv_inference_request_success{") and re.search(
            r'model="default\.pooled\.v1"', line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Load:
    """HTTP clients sending to the pipeline through the gateway; every status counted."""

    def __init__(self, system: RunningSystem, clients: int, grpc_clients: int = 0) -> None:
        self.url = f"http://{system.gateway}/v2/models/pooled/infer"
        self.grpc_address = system.state["gateway"]["grpc"]
        self.codes: Counter[int | str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]
        self.threads += [threading.Thread(target=self._run_grpc) for _ in range(grpc_clients)]

    def _run_grpc(self) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_address)
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.asarray([[1, 2, 3, 4]], np.float32))
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                client.infer("pooled", [tensor], client_timeout=30)
                code: int | str = 200
            except InferenceServerException as exc:
                code = f"grpc {exc.status()}"
            with self.lock:
                self.codes[code] += 1
        client.close()

    def _run(self) -> None:
        deadline = time.monotonic() + 240  # bounded even if the test body fails
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    code: int | str = http.post(self.url, json=BODY).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self.lock:
                    self.codes[code] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.codes.values())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_a_deploy_reaches_every_replica_and_the_gateway_spreads_the_load(
    fleet: RunningSystem,
) -> None:
    replicas = _status(fleet)["triton"]
    assert [r["replica"] for r in replicas] == list(range(REPLICAS))
    assert all(r["state"] == "up" and (r["serving"], r["of"]) == (1, 1) for r in replicas)
    before = [_served(fleet, r["metrics"]) for r in replicas]
    sent = 400
    with httpx.Client(timeout=30) as http:
        url = f"http://{fleet.gateway}/v2/models/pooled/infer"
        barrier = threading.Barrier(4)
        codes: Counter[int] = Counter()
        lock = threading.Lock()

        def client() -> None:
            barrier.wait()
            for _ in range(sent // 4):
                code = http.post(url, json=BODY).status_code
                with lock:
                    codes[code] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == {200: sent}
    shares = [_served(fleet, r["metrics"]) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(shares) == sent
    # least outstanding (ties rotate) spreads concurrent clients: each at least half its share
    assert min(shares) >= 0.5 * sent / REPLICAS, shares


def test_a_replica_killed_under_load_costs_only_its_running_requests_and_comes_back(
    fleet: RunningSystem,
) -> None:
    clients, grpc_clients = 4, 2
    victim = _status(fleet)["triton"][1]
    with Load(fleet, clients, grpc_clients) as load:
        wait_until("load under way", lambda: load.total() >= 50, timeout_s=90)
        os.kill(victim["pid"], signal.SIGKILL)
        took = wait_until(
            "the killed replica restarted and serving again",
            lambda: (
                (r := _status(fleet)["triton"][1])["restarts"] == victim["restarts"] + 1
                and r["state"] == "up"
                and r.get("serving") == 1
            ),
            timeout_s=90,
        )
        back = _served(fleet, victim["metrics"])
        wait_until(
            "the restarted replica takes load",
            lambda: _served(fleet, victim["metrics"]) > back,
            timeout_s=90,
        )
    failed = {code: n for code, n in load.codes.items() if code != 200}
    print(f"\nreplica SIGKILL under load: back in {took:.1f} s; answers {dict(load.codes)}")
    # at most what was in flight on the killed replica: one request per client
    assert sum(failed.values()) <= clients + grpc_clients, failed
    assert load.codes[200] > 0


def test_a_gateway_that_pulls_its_routes_serves_the_pool_and_follows_changes(
    fleet: RunningSystem, tmp_path: Path
) -> None:
    """A gateway the manager does not push to (a replica on a cluster) reads the routing table
    from the API with the pull token, serves the pipeline from every replica, and picks up a
    change to the table on its next poll."""
    api = fleet.state["api"]["url"]
    url = f"{api}/api/v1/gateway/routes"
    assert httpx.get(url, timeout=5).status_code == 401
    wrong = httpx.get(url, headers={"authorization": "Bearer not-it"}, timeout=5)
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    good = httpx.get(url, headers={"authorization": f"Bearer {PULL_TOKEN}"}, timeout=5)
    assert good.status_code == 200 and "default/pooled" in good.json()["routes"]
    again = httpx.get(
        url,
        headers={"authorization": f"Bearer {PULL_TOKEN}", "if-none-match": good.headers["etag"]},
        timeout=5,
    )
    assert again.status_code == 304

    token_file = tmp_path / "token"
    token_file.write_text(PULL_TOKEN + "\n")
    http, metrics, admin = PULLED["http"], PULLED["metrics"], PULLED["admin"]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "rollout.gateway", "--http-port", str(http), "--grpc-port", "0",
         "--metrics-port", str(metrics), "--admin-port", str(admin), "--routes-url", url,
         "--routes-token-file", str(token_file), "--routes-poll-s", "0.2",
         "--capture-dir", str(tmp_path / "spool"),
         "--capture-url", f"{api}/api/v1/gateway/capture"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "gateway.log").open("wb"),
    )  # fmt: skip
    try:
        infer = f"http://127.0.0.1:{http}/v2/models/pooled/infer"

        def serves() -> bool:
            try:
                return httpx.post(infer, json=BODY, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("the pulling gateway serves the pipeline", serves, 30)
        answer = httpx.post(infer, json=BODY, timeout=5)
        assert answer.headers["lastmile-variant"] == "pooled/1"
        assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        variants = _routes(admin)["routes"]["default/pooled"]["variants"]
        replicas = {t["url"] for v in variants for t in v["targets"]}
        assert len(replicas) == REPLICAS, replicas  # the whole pool, as the manager sees it

        fleet.cli("capture", "set", "pooled", "--rate", "0.25")
        try:
            wait_until(
                "the pulled table carries the new capture rate",
                lambda: _routes(admin)["routes"]["default/pooled"].get("capture") == 0.25,
                30,
            )
            # what it captures reaches the manager's summariser: every 4th of 40 calls
            before = _captured_rows(fleet)
            with httpx.Client(timeout=30) as client:
                for _ in range(40):
                    assert client.post(infer, json=BODY).status_code == 200

            def summarised() -> bool:
                fleet.cli("capture", "summarise")
                return _captured_rows(fleet) - before >= 10

            wait_until("the pulled gateway's captures are summarised", summarised, 60)
            assert _captured_rows(fleet) - before == 10
            assert not list((tmp_path / "spool").glob("*.seg"))  # sent, then deleted there
        finally:
            fleet.cli("capture", "set", "pooled", "--rate", "0")

        # a rollout's figures are every gateway's: 30 calls through the manager's own gateway
        # and 50 through this one are 80 for the variant that served them
        second_model = make_affine(tmp_path / "b.onnx", 4, 3.0, 0.0)
        fleet.cli("model", "import", str(second_model), "--name", "pooled")  # its version 2
        fleet.cli("pipeline", "create", "pooled", "--step", "pooled:2")  # the pipeline's
        fleet.cli(
            "rollout", "start", "pooled", "--strategy", "ab", "--candidate", "2",
            "--weight", "1=100", "--weight", "2=0",
        )  # fmt: skip
        try:
            with httpx.Client(timeout=30) as client:
                for url, n in ((f"http://{fleet.gateway}/v2/models/pooled/infer", 30), (infer, 50)):
                    for _ in range(n):
                        assert client.post(url, json=BODY).status_code == 200
            report = json.loads(fleet.cli("rollout", "report", "pooled", "--json").stdout)
            counts = {v["variant"]: v["requests"] for v in report["variants"]}
            assert counts == {"pooled/1": 80, "pooled/2": 0}, report
        finally:
            fleet.cli("rollout", "abort", "pooled")
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def _captured_rows(system: RunningSystem) -> int:
    """Rows of the pipeline's input x in the capture summaries so far."""
    shown = json.loads(system.cli("capture", "show", "pooled", "--since", "1h", "--json").stdout)
    return sum(t["rows"] for t in shown["tensors"] if (t["side"], t["tensor"]) == ("inputs", "x"))


def _routes(admin_port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{admin_port}/routes", timeout=5).json())
