"""The gateway's gRPC side end to end: a real tritonserver, the gateway as a subprocess and the
official `tritonclient.grpc`, unchanged, pointed at the gateway."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from loadtests._models import (
    REPO_ROOT,
    embedded_triton,
    free_ports,
    gateway_command,
    gateway_env,
    http_call,
    launch_gateway,
    stop_gateway,
    triton_missing,
    write_scale_model,
)
from manager.triton.runtime import EmbeddedTriton

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(triton_missing(), reason="nvidia-pytriton's tritonserver missing"),
]

MODEL = "default.diamond"  # versions 1 (y = 2x) and 2 (y = 3x), both loaded


def consecutive_free_ports() -> tuple[int, int]:
    """p and p + 1, both free: Triton's default layout, so the gRPC address can be derived."""
    for _ in range(50):
        (port,) = free_ports(1)
        if port >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port, port + 1
    raise AssertionError("no two consecutive free ports")


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    admin_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def put_routes(self, table: dict[str, Any]) -> tuple[int, bytes]:
        return http_call("PUT", f"http://127.0.0.1:{self.admin_port}/routes", json.dumps(table))

    def stop(self) -> int:
        return stop_gateway(self.proc, 30, strict=True)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    work = tmp_path_factory.mktemp("triton-grpc")
    write_scale_model(work / "repo", MODEL, versions={1: 2.0, 2: 3.0})
    http, grpc = consecutive_free_ports()
    (metrics,) = free_ports(1)
    server = embedded_triton(work, http, grpc, metrics)
    with server, server.client() as client:
        client.load_model(MODEL)
        yield server


@pytest.fixture(scope="module")
def gateway(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("gateway-grpc")
    http, grpc, metrics, admin = free_ports(4)
    log_path = work / "gateway.log"
    args = [
        "--http-port", str(http), "--grpc-port", str(grpc),
        "--metrics-port", str(metrics), "--admin-port", str(admin), "--health-interval", "0.2",
    ]  # fmt: skip
    proc = launch_gateway(args, log_path)
    gw = Gateway(proc, http, grpc, metrics, admin, log_path)
    endpoints = triton.endpoints
    table = {
        "generation": 1,
        "routes": {
            # no "grpc": derived from the url (port + 1, Triton's default layout)
            "diamond": {"targets": [{"url": endpoints.http_url, "model": MODEL}]},
            "diamond-v1": {
                "targets": [
                    {
                        "url": endpoints.http_url,
                        "grpc": endpoints.grpc_url,
                        "model": MODEL,
                        "version": "1",
                    }
                ]
            },
        },
    }
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, gw.log()
            try:
                status, body = gw.put_routes(table)
                assert status == 200, body
                break
            except OSError:
                assert time.monotonic() < deadline, gw.log()
                time.sleep(0.1)
        with grpcclient.InferenceServerClient(gw.grpc_url) as client:
            while not client.is_server_ready():
                assert time.monotonic() < deadline, gw.log()
                time.sleep(0.1)
        yield gw
    finally:
        assert gw.stop() == 0, gw.log()  # SIGTERM stops both listeners cleanly


@pytest.fixture
def client(gateway: Gateway) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(gateway.grpc_url) as c:
        yield c


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def infer(
    client: grpcclient.InferenceServerClient, model: str, version: str = "", name: str = "x"
) -> grpcclient.InferResult:
    inp = grpcclient.InferInput(name, list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return client.infer(model, [inp], model_version=version, request_id="req-7")


def test_official_client_infers_through_the_gateway(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "lastmile-gateway"
    result = infer(client, "diamond")
    np.testing.assert_allclose(result.as_numpy("y"), 3 * X)  # latest version: 3x
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("diamond", "2", "req-7")


def test_metadata_and_readiness_show_only_the_public_name(
    client: grpcclient.InferenceServerClient,
) -> None:
    meta = client.get_model_metadata("diamond")
    assert meta.name == "diamond"
    assert [i.name for i in meta.inputs] == ["x"] and [o.name for o in meta.outputs] == ["y"]
    assert sorted(meta.versions) == ["1", "2"]
    assert client.get_model_metadata("diamond-v1").name == "diamond-v1"
    assert client.is_model_ready("diamond") and client.is_model_ready("diamond", "1")
    assert not client.is_model_ready("diamond", "7")
    assert not client.is_model_ready("nope")


def test_version_pinned_in_the_route_is_honoured(
    client: grpcclient.InferenceServerClient,
) -> None:
    pinned = infer(client, "diamond-v1")
    np.testing.assert_allclose(pinned.as_numpy("y"), 2 * X)
    assert (pinned.get_response().model_name, pinned.get_response().model_version) == (
        "diamond-v1",
        "1",
    )
    # the pin wins over the client's choice...
    np.testing.assert_allclose(infer(client, "diamond-v1", "2").as_numpy("y"), 2 * X)
    # ...and without a pin the client's version is passed through
    np.testing.assert_allclose(infer(client, "diamond", "1").as_numpy("y"), 2 * X)


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(client, "nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "unknown model 'nope'; deployed: diamond, diamond-v1"
    with pytest.raises(InferenceServerException) as info:
        infer(client, MODEL)  # Triton's own name is not reachable either
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_triton_errors_keep_their_code_and_show_the_public_name(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(client, "diamond", name="z")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'diamond'" in info.value.message()
    assert MODEL not in info.value.message()


def test_repository_and_other_restricted_calls_are_refused(
    client: grpcclient.InferenceServerClient, triton: EmbeddedTriton
) -> None:
    for call in (
        client.get_model_repository_index,
        lambda: client.unload_model(MODEL),
        lambda: client.load_model("diamond"),
        lambda: client.get_model_config("diamond"),
        lambda: client.get_inference_statistics("diamond"),
        client.get_system_shared_memory_status,
        client.get_log_settings,
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "not available through the gateway" in info.value.message()
    with triton.client() as direct:  # nothing reached Triton: the model is still loaded
        assert direct.is_model_ready(MODEL)
    np.testing.assert_allclose(infer(client, "diamond").as_numpy("y"), 3 * X)


def test_grpc_requests_are_counted_in_the_gateway_metrics(
    client: grpcclient.InferenceServerClient, gateway: Gateway
) -> None:
    infer(client, "diamond-v1")
    status, body = http_call("GET", f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    assert status == 200
    text = body.decode()
    ok = 'lastmile_gateway_requests_total{code="OK",route="diamond-v1",target="default.diamond:1"}'
    assert ok in text, text
    assert 'lastmile_gateway_requests_total{code="NOT_FOUND",route="_unknown",target=""}' in text
    assert 'lastmile_gateway_request_duration_seconds_count{route="diamond-v1"}' in text


def test_http_side_still_serves_the_same_table(gateway: Gateway) -> None:
    status, _ = http_call("GET", f"http://127.0.0.1:{gateway.http_port}/v2/models/diamond/ready")
    assert status == 200


def test_gateway_start_fails_cleanly_when_the_grpc_port_is_taken(
    gateway: Gateway, tmp_path: Path
) -> None:
    http, metrics, admin = free_ports(3)
    cmd = gateway_command(
        "--http-port", str(http), "--grpc-port", str(gateway.grpc_port),
        "--metrics-port", str(metrics), "--admin-port", str(admin),
    )  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=gateway_env(), capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert b"cannot listen for gRPC" in proc.stderr
