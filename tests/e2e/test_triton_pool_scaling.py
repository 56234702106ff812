"""A pool of Triton servers that grows and shrinks under the manager, as a StatefulSet scaled by
an HPA does: `LASTMILE_TRITON_URL=http://127.0.0.{1..3}:PORT` names three servers on three
loopback addresses with the same ports (pods: one address each), of which two run when the
system starts. The third joins later: the manager loads what is live on it and the gateway
starts sending it traffic. One leaves: the gateway is routed around it.

Real processes throughout: three tritonservers the manager does not own (pushed to over the
load API, as NGC pods are), the gateway, the API. Per-server figures come from each Triton's
own metrics.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager import supervisor
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def _free_on_every_host(count: int) -> int:
    """A first port such that `count` consecutive ports are free on each of HOSTS."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65535:
            continue
        try:
            for host in HOSTS:
                for port in range(base, base + count):
                    with socket.socket() as s:
                        s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports on every loopback address")


def _server(work: Path, host: str, base: int) -> EmbeddedTriton:
    return EmbeddedTriton(
        repository=work / "repo",  # its own, empty: models are pushed to it
        work_dir=work,
        http_port=base,
        grpc_port=base + 1,
        metrics_port=base + 2,
        log_path=work / "tritonserver.log",
        host=host,
        start_timeout_s=120,
        restrict_apis=False,  # not the subject here: test_external_triton covers the header
    )


def _served(server: EmbeddedTriton) -> float:
    """Successful calls of the pipeline's ensemble on one server, from its own metrics."""
    text = httpx.get(server.endpoints.metrics_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{")
        and re.search(r'model="default\.grows\.v1"', line)
    )


def _status(system: RunningSystem) -> list[dict[str, Any]]:
    return list(json.loads(system.cli("status", "--json").stdout)["triton"])


def _send(system: RunningSystem, n: int) -> None:
    with httpx.Client(timeout=30) as http:
        for _ in range(n):
            response = http.post(f"http://{system.gateway}/v2/models/grows/infer", json=BODY)
            assert response.status_code == 200, response.text


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[EmbeddedTriton]]:
    base = _free_on_every_host(3)
    made = [_server(tmp_path / f"t{i}", host, base) for i, host in enumerate(HOSTS)]
    try:
        yield made
    finally:
        for server in made:
            server.stop()


def test_a_triton_that_joins_the_pool_gets_the_models_and_traffic_and_one_that_leaves_none(
    servers: list[EmbeddedTriton], tmp_path: Path
) -> None:
    first, second, third = servers
    first.start()
    second.start()
    port = first.endpoints.http_url.rsplit(":", 1)[1]
    settings = make_settings(
        tmp_path / "home",
        triton_url=f"http://127.0.0.{{1..3}}:{port}",
        supervise_interval_s=0.3,
        reconcile_interval_s=0,
    )
    system = RunningSystem(settings=settings, state={})
    up = system.cli("up", "--detach", "--json")
    system.state = json.loads(up.stdout)
    try:
        # a first start that no terminal sees (a container's log) says where the owner's key
        # is, never the key itself
        key = settings.owner_key_path.read_text().strip()
        assert key not in up.stdout + up.stderr
        assert str(settings.owner_key_path) in up.stderr
        # the system started with the two servers that answer; the third is down, not fatal
        assert [t["state"] for t in _status(system)] == ["up", "up", "external-down"]
        model = make_affine(tmp_path / "m.onnx", 4, 2.0, 0.0)
        system.cli("model", "import", str(model), "--name", "grows")
        system.cli("pipeline", "create", "grows", "--step", "grows")
        system.cli("deploy", "grows", "--version", "1")
        _send(system, 60)
        assert _served(first) > 0 and _served(second) > 0
        assert [t.get("serving") for t in _status(system)] == [1, 1, None]

        # scale out: the third server starts (a pod scheduled by the HPA)
        third.start()
        wait_until(
            "the third server serves what is live",
            lambda: (t := _status(system)[2])["state"] == "up" and t.get("serving") == 1,
            timeout_s=60,
        )

        def third_served() -> bool:
            _send(system, 20)
            return _served(third) > 0

        wait_until("the gateway sends the third server its share", third_served, timeout_s=30)

        # scale in: the second server goes away; no call fails once the pool knows
        second.stop()
        wait_until(
            "the pool routes around the server that left",
            lambda: _status(system)[1]["state"] == "external-down",
            timeout_s=30,
        )
        before = (_served(first), _served(third))
        _send(system, 60)
        after = (_served(first), _served(third))
        assert after[0] > before[0] and after[1] > before[1], (before, after)
    finally:
        supervisor.stop(settings)
