"""The gateway end to end: a real tritonserver, the gateway as a subprocess, the official client."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from loadtests._models import (
    embedded_triton,
    free_ports,
    http_call,
    launch_gateway,
    stop_gateway,
    triton_missing,
    write_scale_model,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(triton_missing(), reason="nvidia-pytriton's tritonserver missing"),
]

V1, V2 = "default.diamond.v1", "default.diamond.v2"


@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    http_port: int
    admin_port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def put_routes(self, table: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return _call("PUT", f"http://127.0.0.1:{self.admin_port}/routes", json.dumps(table))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_gateway(self.proc, 20, strict=True)


def _call(method: str, url: str, body: str | None = None) -> tuple[int, dict[str, Any]]:
    status, raw = http_call(method, url, body)
    return status, json.loads(raw) if raw else {}


def start_gateway(work: Path, routes: dict[str, Any] | None) -> GatewayProc:
    routes_file = work / f"routes-{time.monotonic_ns()}.json"
    if routes is not None:
        routes_file.write_text(json.dumps(routes))
    ports = free_ports(3)
    log_path = routes_file.with_suffix(".log")
    args = [
        "--http-port", str(ports[0]), "--grpc-port", "0", "--metrics-port", str(ports[1]),
        "--admin-port", str(ports[2]), "--routes-file", str(routes_file),
    ]  # fmt: skip
    proc = launch_gateway(args, log_path)
    gw = GatewayProc(proc, ports[0], ports[2], ports[1], log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, gw.log()
        try:
            if _call("GET", f"http://{gw.url}/v2/health/ready")[0] == 200 or routes is None:
                return gw
        except OSError:
            pass
        time.sleep(0.1)
    gw.stop()
    raise AssertionError(f"gateway not ready:\n{gw.log()}")


def table(
    generation: int, url: str, *models: tuple[str, float], workspace: str = "default"
) -> dict[str, Any]:
    """Pipeline 'diamond' with one variant per (Triton model, weight); the model's ".vN"
    suffix is the variant's version."""
    variants = [
        {
            "name": f"diamond/{model.rsplit('.v', 1)[1]}",
            "version": int(model.rsplit(".v", 1)[1]),
            "weight": weight,
            "targets": [{"url": url, "model": model, "version": ""}],
        }
        for model, weight in models
    ]
    route = {"workspace": workspace, "pipeline": "diamond", "variants": variants}
    return {"generation": generation, "routes": {f"{workspace}/diamond": route}}


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTTP URL of a real tritonserver with both versions loaded."""
    work = tmp_path_factory.mktemp("triton")
    write_scale_model(work / "repo", V1, factor=2.0)
    write_scale_model(work / "repo", V2, factor=3.0)
    server = embedded_triton(work, *free_ports(3))
    with server, server.client() as client:
        for model in (V1, V2):
            client.load_model(model)
        yield server.endpoints.http_url


@pytest.fixture
def gateway(triton: str, tmp_path: Path) -> Iterator[GatewayProc]:
    gw = start_gateway(tmp_path, table(1, triton, (V1, 1.0)))
    try:
        yield gw
    finally:
        assert gw.stop() == 0, gw.log()


def infer(
    client: httpclient.InferenceServerClient, x: np.ndarray, *, binary: bool
) -> httpclient.InferResult:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    return client.infer("diamond", [inp], outputs=[out])


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_official_client_infers_json_and_binary_tensors_through_the_gateway(
    gateway: GatewayProc,
) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "lastmile-gateway"
    for binary in (False, True):
        result = infer(client, X, binary=binary)
        np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
        assert result.get_response()["model_name"] == "diamond"
    compressed = httpclient.InferInput("x", [1, 4], "FP32")
    compressed.set_data_from_numpy(X[:1], binary_data=True)
    result = client.infer("diamond", [compressed], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X[:1])
    client.close()


def test_metadata_and_readiness_show_only_the_public_name(gateway: GatewayProc) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    meta = client.get_model_metadata("diamond")
    assert meta["name"] == "diamond"
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert client.is_model_ready("diamond")
    assert client.is_model_ready("diamond", "1")
    assert not client.is_model_ready("diamond", "7")
    with pytest.raises(InferenceServerException) as info:
        bad = httpclient.InferInput("z", [1, 4], "FP32")
        bad.set_data_from_numpy(X[:1])
        client.infer("diamond", [bad])
    assert info.value.status() == "400"
    assert "default.diamond" not in info.value.message()
    client.close()


def test_unknown_models_and_triton_admin_apis_are_refused(gateway: GatewayProc) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("ruby")
    assert info.value.status() == "404"
    assert info.value.message() == "unknown model 'ruby'"
    refused = [
        client.get_model_repository_index,
        lambda: client.load_model(V1),
        lambda: client.unload_model(V1),
        lambda: client.get_inference_statistics("diamond"),
        client.get_system_shared_memory_status,
        lambda: client.unregister_system_shared_memory(),
        client.get_log_settings,
        client.get_trace_settings,
    ]
    for call in refused:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "404"
    client.close()


def test_put_routes_switches_versions_under_load_without_failures(
    gateway: GatewayProc, triton: str
) -> None:
    errors: list[BaseException] = []
    factors: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        client = httpclient.InferenceServerClient(gateway.url)
        try:
            while not stop.is_set():
                y = infer(client, X[:1], binary=True).as_numpy("y")
                factors.append(float(y[0, 1] / X[0, 1]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert gateway.put_routes(table(2, triton, (V1, 1.0), (V2, 1.0)))[0] == 200
    time.sleep(1.0)
    assert gateway.put_routes(table(3, triton, (V2, 1.0))) == (
        200, {"generation": 3, "routes": ["default/diamond"]},
    )  # fmt: skip
    switched_at = len(factors)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert {2.0, 3.0} <= set(factors)
    assert set(factors[switched_at + 8 :]) == {3.0}  # in-flight ones may still be v1
    status, body = gateway.put_routes({"generation": 4, "routes": {"x": {"targets": []}}})
    assert status == 400 and "route 'x'" in body["error"]
    client = httpclient.InferenceServerClient(gateway.url)
    np.testing.assert_allclose(infer(client, X, binary=False).as_numpy("y"), 3 * X)
    client.close()


def test_upstream_down_answers_503_and_turns_ready_off(gateway: GatewayProc, triton: str) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert gateway.put_routes(table(2, dead, (V1, 1.0)))[0] == 200
    client = httpclient.InferenceServerClient(gateway.url)
    with pytest.raises(InferenceServerException) as info:
        infer(client, X, binary=False)
    assert info.value.status() == "503"
    assert info.value.message() == "no upstream available for 'diamond'"
    assert not client.is_server_ready()
    assert client.is_server_live()
    assert gateway.put_routes(table(3, triton, (V1, 1.0)))[0] == 200
    deadline = time.monotonic() + 5
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    np.testing.assert_allclose(infer(client, X, binary=False).as_numpy("y"), 2 * X)
    client.close()


def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(triton: str, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, table(1, triton, (V1, 1.0)))
    results: list[Any] = []

    def one_request() -> None:
        client = httpclient.InferenceServerClient(gw.url, connection_timeout=10)
        try:
            for _ in range(20):
                results.append(infer(client, X, binary=True).as_numpy("y"))
        except InferenceServerException as exc:
            results.append(exc)
        except OSError as exc:  # connection refused once the listener is closed
            results.append(exc)

    worker = threading.Thread(target=one_request)
    worker.start()
    time.sleep(0.05)
    assert gw.stop() == 0
    worker.join(timeout=10)
    assert "gateway stopped" in gw.log()
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert served, results
    assert not any(isinstance(r, InferenceServerException) for r in results), results


def raw_infer(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, response_headers, raw = http_call_with_headers(
        "POST", f"http://{url}{path}", json.dumps(body), headers
    )
    return status, response_headers, json.loads(raw)


def http_call_with_headers(
    method: str, url: str, body: str | None, headers: dict[str, str] | None
) -> tuple[int, dict[str, str], bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(
            method, parts.path, body, {"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_workspaces_versions_and_the_variant_stamp_with_the_official_client(
    gateway: GatewayProc, triton: str
) -> None:
    routes = table(2, triton, (V1, 100.0), (V2, 0.0))
    teamb = table(2, triton, (V2, 100.0), workspace="teamb")
    routes["routes"].update(teamb["routes"])
    assert gateway.put_routes(routes)[0] == 200

    client = httpclient.InferenceServerClient(gateway.url)
    result = infer(client, X, binary=True)
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
    answer = result.get_response()
    assert (answer["model_name"], answer["model_version"]) == ("diamond", "1")
    assert answer["parameters"]["lastmile_variant"] == "diamond/1"
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X, binary_data=False)
    pinned = client.infer("diamond", [inp], model_version="2", request_id="req-9")
    np.testing.assert_allclose(pinned.as_numpy("y"), 3 * X)
    assert pinned.get_response()["id"] == "req-9"
    assert pinned.get_response()["model_version"] == "2"
    assert client.get_model_metadata("diamond")["versions"] == ["1", "2"]
    assert client.is_model_ready("diamond", "2") and not client.is_model_ready("diamond", "9")
    with pytest.raises(InferenceServerException) as info:
        client.infer("diamond", [inp], model_version="9")
    assert info.value.status() == "404"
    assert info.value.message() == "model 'diamond' has no version 9 being served"
    client.close()

    # the workspace as a base path of the official client, and as a header
    teamb_client = httpclient.InferenceServerClient(f"{gateway.url}/w/teamb")
    assert teamb_client.is_server_live() and teamb_client.is_server_ready()
    result = infer(teamb_client, X, binary=False)
    np.testing.assert_allclose(result.as_numpy("y"), 3 * X)
    assert result.get_response()["parameters"]["lastmile_variant"] == "diamond/2"
    assert teamb_client.get_model_metadata("diamond")["versions"] == ["2"]
    teamb_client.close()

    body = {
        "id": "abc",
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    }
    for headers, variant_name, factor in (
        ({}, "diamond/1", 2),
        ({"lastmile-workspace": "teamb"}, "diamond/2", 3),
    ):
        status, response_headers, answer = raw_infer(
            gateway.url, "/v2/models/diamond/infer", body, headers
        )
        assert status == 200 and response_headers["lastmile-variant"] == variant_name
        assert answer["id"] == "abc" and answer["model_name"] == "diamond"
        assert answer["outputs"][0]["data"] == [factor * v for v in (1, 2, 3, 4)]
    status, response_headers, answer = raw_infer(
        gateway.url, "/v2/models/diamond/infer", {"inputs": [{"name": "z"}]}
    )
    assert status == 400 and response_headers["lastmile-variant"] == "diamond/1"
    assert "default.diamond" not in answer["error"]
