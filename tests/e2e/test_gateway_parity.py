"""Protocol parity of the gateway with Triton 2.51: model config, HEAD, the extensions listed.

A real tritonserver serves a pipeline as the manager deploys it (an ensemble
``default.fraud.v3`` over a step model ``default.scaler.v1``, and a version 4 ensemble with a
smaller max_batch_size); the gateway runs as a subprocess with route ``fraud``. The tests ask
both and compare: the config a client gets has the public name, the fields Triton gives for
the interface, and no internal name; HEAD answers what GET would, without a body, and the
keep-alive connection stays in step; every extension the gateway lists really passes through.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as tritonhttp

from loadtests._models import (
    embedded_triton,
    free_ports,
    launch_gateway,
    stop_gateway,
    triton_missing,
    wait_gateway_ready,
)
from manager.triton.runtime import EmbeddedTriton
from rollout.public_config import EXTENSIONS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(triton_missing(), reason="nvidia-pytriton's tritonserver missing"),
]

STEP = "default.scaler.v1"
V3, V4 = "default.fraud.v3", "default.fraud.v4"
TOKEN = "parity-admin-token"
INTERNAL_RE = re.compile(r"default\.|\.v\d")  # what an internal model name looks like
X = np.arange(8, dtype=np.float32).reshape(2, 4)

# y = 2x, and `params`: the request parameters the step received (as Triton hands them over).
_STEP_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            params = np.array([[request.parameters().encode()]] * len(x), dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("y", (2 * x).astype(np.float32)),
                        pb_utils.Tensor("params", params),
                    ]
                )
            )
        return responses
"""
_INTERFACE = """\
max_batch_size: {batch}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [
  {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "params" data_type: TYPE_STRING dims: [ 1 ] }}
]
"""
_ENSEMBLE = (
    'name: "{name}"\nplatform: "ensemble"\n'
    + _INTERFACE
    + 'ensemble_scheduling {{ step [ {{ model_name: "' + STEP + '" model_version: -1 '
    'input_map {{ key: "x" value: "x" }} output_map {{ key: "y" value: "y" }} '
    'output_map {{ key: "params" value: "params" }} }} ] }}\n'
)  # fmt: skip


def write_models(repo: Path) -> None:
    (repo / STEP / "1").mkdir(parents=True)
    (repo / STEP / "config.pbtxt").write_text(
        f'name: "{STEP}"\nbackend: "python"\n'
        + _INTERFACE.format(batch=8)
        + "instance_group [ { kind: KIND_CPU } ]\n"
        + 'parameters { key: "internal_knob" value { string_value: "default.secret" } }\n'
    )
    (repo / STEP / "1" / "model.py").write_text(_STEP_PY)
    for name, batch in ((V3, 8), (V4, 4)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(_ENSEMBLE.format(name=name, batch=batch))


@dataclass
class System:
    triton: EmbeddedTriton
    http_port: int
    grpc_port: int

    @property
    def gateway_http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def gateway_grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def triton_http(self) -> str:
        return self.triton.endpoints.http_url.removeprefix("http://")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("parity")
    write_models(work / "repo")
    triton = embedded_triton(work, *free_ports(3))
    with triton, triton.client() as control:
        for model in (STEP, V3, V4):
            control.load_model(model)
        http_port, grpc_port, metrics_port, admin_port = free_ports(4)
        endpoints = triton.endpoints
        targets = {"url": endpoints.http_url, "grpc": endpoints.grpc_url}
        variants = [
            {"name": "fraud/3", "version": 3, "weight": 100, "targets": [{**targets, "model": V3}]},
            {"name": "fraud/4", "version": 4, "weight": 0, "targets": [{**targets, "model": V4}]},
        ]
        route = {"workspace": "default", "pipeline": "fraud", "variants": variants}
        routes = {"generation": 1, "routes": {"default/fraud": route}}
        (work / "routes.json").write_text(json.dumps(routes))
        (work / "admin.key").write_text(TOKEN + "\n")
        log_path = work / "gateway.log"
        args = [
            "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port), "--admin-port", str(admin_port),
            "--routes-file", str(work / "routes.json"), "--health-interval", "0.2",
            "--admin-token-file", str(work / "admin.key"),
            "--allowed-upstream", endpoints.http_url.removeprefix("http://"),
            "--allowed-upstream", endpoints.grpc_url,
        ]  # fmt: skip
        proc = launch_gateway(args, log_path)
        try:
            wait_gateway_ready(proc, http_port, log_path)
            yield System(triton, http_port, grpc_port)
        finally:
            assert stop_gateway(proc, 30, strict=True) == 0, log_path.read_text()


def assert_public(text: str) -> None:
    found = INTERNAL_RE.search(text)
    assert found is None, f"internal name {found.group()!r} in {text}"


# -- model configuration --------------------------------------------------------------------
def test_http_config_is_the_ensembles_interface_under_the_public_name(system: System) -> None:
    with httpx.Client(timeout=30) as http:
        gateway = http.get(f"http://{system.gateway_http}/v2/models/fraud/config")
        triton = http.get(f"http://{system.triton_http}/v2/models/{V3}/config").json()
        prefixed = http.get(f"http://{system.gateway_http}/w/default/v2/models/fraud/config")
    assert gateway.status_code == 200, gateway.text
    assert gateway.headers["lastmile-variant"] == "fraud/3"
    assert gateway.headers["content-type"] == "application/json"
    assert_public(gateway.text)
    config = gateway.json()
    assert config["name"] == "fraud"
    assert config["platform"] == ""  # Triton says "ensemble"; its steps are not shown
    for field in ("backend", "max_batch_size", "input", "output", "model_transaction_policy"):
        assert config[field] == triton[field], field
    assert set(config) <= set(triton)
    assert {"ensemble_scheduling", "parameters", "instance_group", "version_policy"} & set(
        config
    ) == set()
    assert prefixed.status_code == 200 and prefixed.json() == config


def test_a_version_in_the_path_selects_the_variants_config(system: System) -> None:
    base = f"http://{system.gateway_http}/v2/models"
    with httpx.Client(timeout=30) as http:
        v4 = http.get(f"{base}/fraud/versions/4/config")
        missing = http.get(f"{base}/fraud/versions/9/config")
        unknown = http.get(f"{base}/{V3}/config")
        bad = http.get(f"{base}/fraud/versions/x/config")
    assert v4.status_code == 200 and v4.headers["lastmile-variant"] == "fraud/4"
    assert v4.json()["max_batch_size"] == 4 and v4.json()["name"] == "fraud"
    assert missing.status_code == 404
    assert missing.json()["error"] == "model 'fraud' has no version 9 being served"
    assert unknown.status_code == 404  # internal names are not routes
    assert bad.status_code == 400


def test_official_clients_read_the_public_config_over_http_and_grpc(system: System) -> None:
    client = tritonhttp.InferenceServerClient(system.gateway_http, network_timeout=30)
    try:
        over_http = client.get_model_config("fraud")
        assert client.get_model_config("fraud", "4")["max_batch_size"] == 4
    finally:
        client.close()
    with grpcclient.InferenceServerClient(system.gateway_grpc) as gateway:
        over_grpc = gateway.get_model_config("fraud", as_json=True)["config"]
        v4 = gateway.get_model_config("fraud", "4", as_json=True)["config"]
        raw = gateway.get_model_config("fraud").SerializeToString()
    with grpcclient.InferenceServerClient(system.triton.endpoints.grpc_url) as direct:
        triton = direct.get_model_config(V3, as_json=True)["config"]
    assert over_http["name"] == over_grpc["name"] == "fraud"
    assert_public(json.dumps(over_http))
    assert_public(json.dumps(over_grpc))
    assert INTERNAL_RE.search(raw.decode("latin-1")) is None
    for field in ("max_batch_size", "input", "output"):
        assert over_grpc[field] == triton[field], field
    assert "ensemble_scheduling" in triton and "ensemble_scheduling" not in over_grpc
    assert "platform" not in over_grpc  # "ensemble" is dropped (proto3: absent means "")
    assert v4["max_batch_size"] == 4
    with (
        grpcclient.InferenceServerClient(system.gateway_grpc) as gateway,
        pytest.raises(grpcclient.InferenceServerException) as info,
    ):
        gateway.get_model_config("fraud", "9")
    assert info.value.status() == "StatusCode.NOT_FOUND"


# -- HEAD -----------------------------------------------------------------------------------
def exchange(sock: socket.socket, request: bytes, buffered: bytes) -> tuple[bytes, bytes]:
    """Send `request`, read one response head; (head, bytes read past it)."""
    sock.sendall(request)
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def read_body(sock: socket.socket, rest: bytes, length: int) -> tuple[bytes, bytes]:
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        rest += chunk
    return rest[:length], rest[length:]


def head_then_get(port: int, path: str) -> tuple[tuple[int, dict[str, str]], Any, bytes]:
    """HEAD `path` then GET it on one keep-alive connection: (HEAD status and headers, GET
    status and headers, GET body). Fails if the HEAD answer carried any body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        host = f"Host: 127.0.0.1:{port}\r\n\r\n".encode()
        head, rest = exchange(sock, f"HEAD {path} HTTP/1.1\r\n".encode() + host, b"")
        assert rest == b"", f"HEAD {path} sent a body: {rest!r}"
        get_head, rest = exchange(sock, f"GET {path} HTTP/1.1\r\n".encode() + host, rest)
        get = parse_head(get_head)
        body, extra = read_body(sock, rest, int(get[1].get("content-length", "0")))
        assert extra == b""
    return parse_head(head), get, body


GET_PATHS = [
    "/v2/health/live",
    "/v2/health/ready",
    "/v2",
    "/v2/models/fraud",
    "/v2/models/fraud/ready",
    "/v2/models/fraud/config",
    "/v2/models/fraud/versions/4/config",
    "/v2/models/fraud/versions/9",
    "/w/default/v2/models/fraud/config",
    "/w/default/v2/health/ready",
]


@pytest.mark.parametrize("path", GET_PATHS)
def test_head_answers_what_get_would_without_a_body(system: System, path: str) -> None:
    (status, headers), (get_status, get_headers), body = head_then_get(system.http_port, path)
    assert status == get_status
    assert headers == get_headers
    assert int(headers.get("content-length", "0")) == len(body)


def test_head_of_health_answers_as_triton_s_get_does(system: System) -> None:
    """Triton itself answers HEAD with a 405 and a body; the gateway as Triton's GET does."""
    with httpx.Client(timeout=30) as http:
        for path in ("/v2/health/live", "/v2/health/ready"):
            (status, headers), _, _ = head_then_get(system.http_port, path)
            triton = http.get(f"http://{system.triton_http}{path}")
            # own connection: Triton's 405 body would be read as the next answer's start
            assert httpx.head(f"http://{system.triton_http}{path}").status_code == 405
            assert status == triton.status_code == 200
            assert headers["content-length"] == triton.headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/v2/models/fraud/infer", 405), ("/v2/repository/index", 404), ("/metrics", 404)],
)
def test_head_elsewhere_is_refused_without_a_body(system: System, path: str, status: int) -> None:
    (head_status, _), (get_status, _), _ = head_then_get(system.http_port, path)
    assert head_status == get_status == status


# -- the extensions listed ------------------------------------------------------------------
def test_server_metadata_lists_the_extensions_that_pass_through(system: System) -> None:
    with httpx.Client(timeout=30) as http:
        gateway = http.get(f"http://{system.gateway_http}/v2").json()
        triton = http.get(f"http://{system.triton_http}/v2").json()
    assert gateway["extensions"] == list(EXTENSIONS)
    assert set(EXTENSIONS) <= set(triton["extensions"])
    with grpcclient.InferenceServerClient(system.gateway_grpc) as client:
        assert list(client.get_server_metadata().extensions) == list(EXTENSIONS)


def infer_through(system: System, url: str, model: str, **kwargs: Any) -> Any:
    client = tritonhttp.InferenceServerClient(url, network_timeout=30)
    try:
        inp = tritonhttp.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        return client.infer(model, [inp], **kwargs)
    finally:
        client.close()


def test_classification_parameters_and_schedule_policy_pass_through_http(
    system: System,
) -> None:
    outputs = [tritonhttp.InferRequestedOutput("y", class_count=2)]
    gateway = infer_through(system, system.gateway_http, "fraud", outputs=outputs)
    direct = infer_through(system, system.triton_http, V3, outputs=outputs)
    assert gateway.as_numpy("y").tolist() == direct.as_numpy("y").tolist()
    assert gateway.as_numpy("y")[1, 0] == b"14.000000:3"  # top class of 2 * [4, 5, 6, 7]
    result = infer_through(
        system,
        system.gateway_http,
        "fraud",
        parameters={"team": "blue"},
        priority=1,
        timeout=10_000_000,
    )
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
    received = json.loads(result.as_numpy("params")[0, 0])
    assert received["team"] == "blue"


def test_classification_parameters_and_schedule_policy_pass_through_grpc(
    system: System,
) -> None:
    with grpcclient.InferenceServerClient(system.gateway_grpc) as client:
        inp = grpcclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        classes = client.infer(
            "fraud", [inp], outputs=[grpcclient.InferRequestedOutput("y", class_count=2)]
        )
        assert classes.as_numpy("y")[1, 0] == b"14.000000:3"
        result = client.infer(
            "fraud", [inp], parameters={"team": "green"}, priority=1, timeout=10_000_000
        )
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
    assert json.loads(result.as_numpy("params")[0, 0])["team"] == "green"
