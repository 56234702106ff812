"""Gateway hardening end to end: a real tritonserver 2.51, the gateway as a subprocess started
the way the manager starts it (admin token, allowed upstreams), the official clients.

Covers what only the real Triton can show: a gzip bomb stopped before it reaches Triton (which
inflates without a limit), compression from tritonclient, shared memory refused on both
protocols, Triton's 500s for client mistakes turned into 400s, and model errors (onnxruntime
in the generated Python-backend model, an exception in a model) without source locations or
server paths.
"""

from __future__ import annotations

import http.client
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as tritonhttp
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from loadtests._models import (
    embedded_triton,
    free_ports,
    launch_gateway,
    stop_gateway,
    triton_missing,
    wait_gateway_ready,
    write_scale_model,
)
from manager.repository.python_model import python_model_source
from manager.triton.runtime import EmbeddedTriton
from rollout.body_guard import NOT_JSON, SHM_REFUSED

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(triton_missing(), reason="nvidia-pytriton's tritonserver missing"),
]

SCALE = "ws.scale.v1"  # y = 2x, FP32 [4], max_batch_size 8
ORT = "ws.ort.v1"  # the generated onnxruntime model: y = x * [2, 2, 2, 2], x is [batch, n]
FAULTY = "ws.faulty.v1"  # an ensemble over ORT, as the manager deploys pipelines
RAISER = "ws.raiser.v1"  # execute() raises
TOKEN = "e2e-admin-token"
MAX_BODY = 32 * 1024 * 1024  # so the inflated limit is the default 2 x 32 MiB
X = np.arange(8, dtype=np.float32).reshape(2, 4)

_DYNAMIC_CONFIG = """\
name: "{name}"
{kind}
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{extra}"""
_ENSEMBLE_STEP = (
    'ensemble_scheduling { step [ { model_name: "' + ORT + '" model_version: -1 '
    'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n'
)
_RAISER_PY = """\
class TritonPythonModel:
    def execute(self, requests):
        raise RuntimeError("boom in the model")
"""


def write_models(repo: Path) -> None:
    write_scale_model(repo, SCALE)
    (repo / ORT / "1").mkdir(parents=True)
    (repo / ORT / "config.pbtxt").write_text(
        _DYNAMIC_CONFIG.format(
            name=ORT, kind='backend: "python"', extra="instance_group [ { kind: KIND_CPU } ]\n"
        )
    )
    (repo / ORT / "1" / "model.py").write_text(python_model_source())
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        [numpy_helper.from_array(np.full(4, 2.0, dtype=np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(repo / ORT / "1" / "model.onnx"))
    (repo / FAULTY / "1").mkdir(parents=True)
    (repo / FAULTY / "config.pbtxt").write_text(
        _DYNAMIC_CONFIG.format(name=FAULTY, kind='platform: "ensemble"', extra=_ENSEMBLE_STEP)
    )
    write_scale_model(repo, RAISER)
    (repo / RAISER / "1" / "model.py").write_text(_RAISER_PY)


@dataclass
class System:
    triton: EmbeddedTriton
    work: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    admin_port: int

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def call(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body if method != "GET" else None, headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    content_type = response.getheader("Content-Type") or ""
    return response.status, json.loads(data) if "json" in content_type and data else data


def one_variant_route(pipeline: str, target: dict[str, str]) -> dict[str, Any]:
    variant = {"name": f"{pipeline}/1", "version": 1, "weight": 100, "targets": [target]}
    return {"workspace": "default", "pipeline": pipeline, "variants": [variant]}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("hardening")
    write_models(work / "repo")
    triton = embedded_triton(work, *free_ports(3))
    with triton, triton.client() as control:
        for model in (SCALE, ORT, FAULTY, RAISER):
            control.load_model(model)
        http_port, grpc_port, metrics_port, admin_port = free_ports(4)
        endpoints = triton.endpoints
        targets = {"url": endpoints.http_url, "grpc": endpoints.grpc_url}
        routes = {
            f"default/{name}": one_variant_route(name, {**targets, "model": model})
            for name, model in (("diamond", SCALE), ("faulty", FAULTY), ("raiser", RAISER))
        }
        (work / "routes.json").write_text(json.dumps({"generation": 1, "routes": routes}))
        (work / "admin.key").write_text(TOKEN + "\n")
        log_path = work / "gateway.log"
        args = [
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port), "--admin-port", str(admin_port),
            "--routes-file", str(work / "routes.json"), "--health-interval", "0.2",
            "--admin-token-file", str(work / "admin.key"), "--max-body-bytes", str(MAX_BODY),
            "--allowed-upstream", endpoints.http_url.removeprefix("http://"),
            "--allowed-upstream", endpoints.grpc_url,
        ]  # fmt: skip
        proc = launch_gateway(args, log_path)
        try:
            wait_gateway_ready(proc, http_port, log_path)
            yield System(triton, work, http_port, grpc_port, metrics_port, admin_port)
        finally:
            assert stop_gateway(proc, 30, strict=True) == 0, log_path.read_text()


def gzip_bomb(inflated: int) -> bytes:
    """A valid gzip stream of `inflated` zero bytes, about 1/1000 of that size, built from one
    deflate block repeated (after a full flush the compressor emits identical blocks)."""
    block = bytes(16 * 1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush(zlib.Z_FINISH)
    count = inflated // len(block)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (count * len(block)) & 0xFFFFFFFF)
    return header + piece * count + final + trailer


def json_infer(x: np.ndarray, name: str = "x") -> bytes:
    inputs = [
        {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    ]
    return json.dumps({"inputs": inputs}).encode()


def http_infer(system: System, model: str, x: np.ndarray, **kwargs: Any) -> Any:
    client = tritonhttp.InferenceServerClient(system.http_url, network_timeout=60)
    try:
        inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=kwargs.pop("binary", True))
        return client.infer(model, [inp], **kwargs)
    finally:
        client.close()


def grpc_infer(system: System, model: str, x: np.ndarray, dtype: str = "FP32") -> Any:
    with grpcclient.InferenceServerClient(system.grpc_url) as client:
        inp = grpcclient.InferInput("x", list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp])


def http_error(system: System, model: str, x: np.ndarray) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        http_infer(system, model, x)
    return info.value


def grpc_error(system: System, model: str, x: np.ndarray, dtype: str = "FP32") -> Any:
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(system, model, x, dtype)
    return info.value


def test_a_gzip_bomb_is_refused_and_triton_keeps_serving(system: System) -> None:
    bomb = gzip_bomb(2 * 1024**3)
    assert len(bomb) < 2.2 * 1024**2  # ~2 MiB that inflate to 2 GiB
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    status, body = call(system.http_port, "POST", "/v2/models/diamond/infer", bomb, headers)
    assert status == 413, body
    assert body["error"] == (
        f"the request body inflates to more than {2 * MAX_BODY} bytes (the gateway's "
        "--max-inflated-bytes)"
    )
    triton_http = int(system.triton.endpoints.http_url.rsplit(":", 1)[1])
    assert call(triton_http, "GET", "/v2/health/live")[0] == 200
    status, body = call(system.http_port, "POST", "/v2/models/diamond/infer", json_infer(X))
    assert status == 200 and body["outputs"][0]["data"] == (2 * X).ravel().tolist()


def test_official_client_compression_works_through_the_gateway(system: System) -> None:
    for algorithm in ("gzip", "deflate"):
        for binary in (False, True):
            result = http_infer(
                system, "diamond", X, binary=binary, request_compression_algorithm=algorithm
            )
            np.testing.assert_allclose(result.as_numpy("y"), 2 * X)


def test_shared_memory_is_refused_over_http_and_grpc(system: System) -> None:
    client = tritonhttp.InferenceServerClient(system.http_url)
    try:
        shm_input = tritonhttp.InferInput("x", [2, 4], "FP32")
        shm_input.set_shared_memory("region", 32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("diamond", [shm_input])
        assert (info.value.status(), info.value.message()) == ("400", SHM_REFUSED)
        data_input = tritonhttp.InferInput("x", [2, 4], "FP32")
        data_input.set_data_from_numpy(X)
        shm_output = tritonhttp.InferRequestedOutput("y")
        shm_output.set_shared_memory("out", 32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("diamond", [data_input], outputs=[shm_output])
        assert (info.value.status(), info.value.message()) == ("400", SHM_REFUSED)
    finally:
        client.close()
    with grpcclient.InferenceServerClient(system.grpc_url) as grpc_client:
        shm_input = grpcclient.InferInput("x", [2, 4], "FP32")
        shm_input.set_shared_memory("region", 32)
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer("diamond", [shm_input])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert info.value.message() == SHM_REFUSED
    np.testing.assert_allclose(grpc_infer(system, "diamond", X).as_numpy("y"), 2 * X)


def test_bad_json_and_non_json_bodies_are_400_with_the_gateways_message(system: System) -> None:
    cases = {
        b'{"inputs": [': "the request body is not valid JSON (Invalid value. at 12)",
        b"hello world": NOT_JSON,
        b'{"inputs": 5}': (
            "invalid inference request: cannot read 'inputs': attempt to access JSON non-array "
            "as array"
        ),
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]}
        ).encode(): (
            "invalid inference request: cannot read 'data': attempt to access JSON non-number "
            "as double"
        ),
    }
    for body, message in cases.items():
        status, answer = call(system.http_port, "POST", "/v2/models/diamond/infer", body)
        assert (status, answer) == (400, {"error": message}), body


def test_wrong_shape_dtype_and_batch_are_400_and_name_only_the_public_model(
    system: System,
) -> None:
    shape = http_error(system, "diamond", np.ones((1, 3), dtype=np.float32))
    assert shape.status() == "400"
    assert shape.message().startswith(
        "unexpected shape for input 'x' for model 'diamond'. Expected [-1,4], got [1,3]."
    )
    batch = http_error(system, "diamond", np.ones((9, 4), dtype=np.float32))
    assert batch.status() == "400"
    assert batch.message().startswith("inference request batch-size must be <= 8 for 'diamond'")
    assert "--max-batch-size" in batch.message()
    grpc_shape = grpc_error(system, "diamond", np.ones((1, 3), dtype=np.float32))
    assert grpc_shape.status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc_shape.message().startswith("unexpected shape for input 'x' for model 'diamond'")
    dtype = grpc_error(system, "diamond", np.ones((1, 4), dtype=np.int32), "INT32")
    assert dtype.status() == "StatusCode.INVALID_ARGUMENT"
    assert dtype.message() == (
        "inference input 'x' data-type is 'INT32', but model 'diamond' expects 'FP32'"
    )
    for error in (shape, batch, grpc_shape, dtype):
        assert "ws." not in error.message() and "request id" not in error.message()


def assert_nothing_internal(message: str, system: System) -> None:
    for leak in (".cc:", ".h:", "/onnxruntime_src", "model.py", str(system.work), "ws.", "At:"):
        assert leak not in message, (leak, message)


def test_model_errors_are_500_without_source_locations_or_server_paths(system: System) -> None:
    x = np.ones((1, 3), dtype=np.float32)  # the model multiplies by 4 values: broadcast fails
    onnx_error = http_error(system, "faulty", x)
    assert onnx_error.status() == "500"
    assert onnx_error.message().startswith("in ensemble 'faulty', Fail: [ONNXRuntimeError]")
    assert "Attempting to broadcast an axis by a dimension other than 1. 3 by 4" in (
        onnx_error.message()
    )
    raised = http_error(system, "raiser", X)
    assert (raised.status(), raised.message()) == (
        "500",
        "Failed to process the request(s) for model 'raiser', message: RuntimeError: boom in "
        "the model",
    )
    grpc_onnx = grpc_error(system, "faulty", x)
    grpc_raised = grpc_error(system, "raiser", X)
    assert grpc_onnx.status() == grpc_raised.status() == "StatusCode.INTERNAL"
    assert grpc_onnx.message() == onnx_error.message()
    assert grpc_raised.message() == raised.message()
    for error in (onnx_error, raised, grpc_onnx, grpc_raised):
        assert_nothing_internal(error.message(), system)

    status, text = call(system.metrics_port, "GET", "/metrics")
    assert status == 200
    samples = {
        (s.name, s.labels.get("route"), s.labels.get("class")): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == "lastmile_gateway_errors_total"
    }
    assert samples[("lastmile_gateway_errors_total", "default/faulty", "server")] == 2
    assert samples[("lastmile_gateway_errors_total", "default/raiser", "server")] == 2
    assert ("lastmile_gateway_errors_total", "default/faulty", "client") not in samples


def test_admin_api_needs_the_token_and_accepts_only_known_upstreams(system: System) -> None:
    admin = system.admin_port
    assert call(admin, "GET", "/routes")[0] == 401
    assert call(admin, "GET", "/routes", headers={"Authorization": "Bearer nope"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, table = call(admin, "GET", "/routes", headers=auth)
    assert status == 200 and table["generation"] == 1
    foreign = {"url": "http://10.9.8.7:8000", "model": SCALE}
    status, body = call(
        admin,
        "PUT",
        "/routes",
        json.dumps(
            {"generation": 2, "routes": {"default/diamond": one_variant_route("diamond", foreign)}}
        ).encode(),
        auth,
    )
    assert status == 422 and (
        "route 'default/diamond': variant 'diamond/1' targets[0].url points at 10.9.8.7:8000"
        in body["error"]
    )
    status, body = call(
        admin,
        "PUT",
        "/routes",
        json.dumps({"generation": 2**62, "routes": table["routes"]}).encode(),
        auth,
    )
    assert status == 422 and "too far ahead" in body["error"]
    assert call(admin, "PUT", "/routes", json.dumps(table).encode())[0] == 401
    assert call(admin, "GET", "/routes", headers=auth)[1] == table  # nothing changed
