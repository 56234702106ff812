"""The gateway's gRPC side end to end: a real tritonserver, the gateway as a subprocess and the
official `tritonclient.grpc`, unchanged, pointed at the gateway, with a v2 routing table
(workspaces, versions, weighted / sticky / shadow routes)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
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

# As the manager lays pipelines out: one Triton model per pipeline version...
V1, V2 = "default.diamond.v1", "default.diamond.v2"  # y = 2x, y = 3x
# ...and one with two Triton versions, to see what a target's version (pinned or "") does
MULTI = "teamb.multi"  # Triton version 1: y = 2x, version 2 (latest): y = 5x
X = np.arange(8, dtype=np.float32).reshape(2, 4)
TEAMB = {"lastmile-workspace": "teamb"}


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

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        status, body = http_call("GET", f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def stop(self) -> int:
        return stop_gateway(self.proc, 30, strict=True)


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll another process's state until `check` holds (the only way to observe it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    work = tmp_path_factory.mktemp("triton-grpc")
    write_scale_model(work / "repo", V1, factor=2.0)
    write_scale_model(work / "repo", V2, factor=3.0)
    write_scale_model(work / "repo", MULTI, versions={1: 2.0, 2: 5.0})
    http, grpc_port = consecutive_free_ports()
    (metrics,) = free_ports(1)
    server = embedded_triton(work, http, grpc_port, metrics)
    with server, server.client() as client:
        for model in (V1, V2, MULTI):
            client.load_model(model)
        yield server


def variant(pipeline: str, version: int, weight: float, target: dict[str, str]) -> dict[str, Any]:
    return {
        "name": f"{pipeline}/{version}",
        "version": version,
        "weight": weight,
        "targets": [target],
    }


def routing_table(triton: EmbeddedTriton) -> dict[str, Any]:
    endpoints = triton.endpoints

    def target(model: str, version: str = "", derived: bool = False) -> dict[str, str]:
        out = {"url": endpoints.http_url, "model": model, "version": version}
        if not derived:  # else: port + 1, Triton's default layout
            out["grpc"] = endpoints.grpc_url
        return out

    def route(workspace: str, pipeline: str, *variants: Any, **extra: Any) -> dict[str, Any]:
        strategy = extra.pop("strategy", "weighted")
        body = {"workspace": workspace, "pipeline": pipeline, "strategy": strategy}
        return {"variants": list(variants), **body, **extra}

    routes = {
        "default/diamond": route(
            "default",
            "diamond",
            variant("diamond", 1, 100, target(V1, derived=True)),
            variant("diamond", 2, 0, target(V2)),
        ),
        "teamb/diamond": route(
            "teamb",
            "diamond",
            variant("diamond", 4, 0, target(MULTI, "1")),
            variant("diamond", 5, 100, target(MULTI)),
        ),
        "default/ab": route(
            "default",
            "ab",
            variant("ab", 1, 50, target(V1)),
            variant("ab", 2, 50, target(V2)),
            strategy="sticky",
            sticky={"header": "lastmile-key", "parameter": "user"},
        ),
        "default/shadowed": route(
            "default",
            "shadowed",
            variant("shadowed", 1, 100, target(V1)),
            variant("shadowed", 2, 0, target(V2)),
            strategy="shadow",
            shadow={
                "mirrors": [{"variant": "shadowed/2", "sample": 1.0}],
                "timeout_s": 10.0,
                "max_queue": 64,
                "tolerance": 1e-6,
            },
        ),
    }
    return {"generation": 1, "routes": routes}


@pytest.fixture(scope="module")
def gateway(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("gateway-grpc")
    http, grpc_port, metrics, admin = free_ports(4)
    log_path = work / "gateway.log"
    args = [
        "--http-port", str(http), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics), "--admin-port", str(admin), "--health-interval", "0.2",
    ]  # fmt: skip
    proc = launch_gateway(args, log_path)
    gw = Gateway(proc, http, grpc_port, metrics, admin, log_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, gw.log()
            try:
                status, body = gw.put_routes(routing_table(triton))
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


def infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    version: str = "",
    name: str = "x",
    **kwargs: Any,
) -> grpcclient.InferResult:
    inp = grpcclient.InferInput(name, list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return client.infer(model, [inp], model_version=version, request_id="req-7", **kwargs)


def stamped(result: grpcclient.InferResult) -> tuple[str, str, str, str]:
    """(model_name, model_version, lastmile_variant parameter, id) of a response."""
    response = result.get_response()
    variant_name = response.parameters["lastmile_variant"].string_param
    return response.model_name, response.model_version, variant_name, response.id


def test_official_client_infers_and_every_response_names_its_variant(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "lastmile-gateway"
    result = infer(client, "diamond")
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
    assert stamped(result) == ("diamond", "1", "diamond/1", "req-7")


def test_an_explicit_version_selects_its_variant_and_triton_gets_the_targets_version(
    client: grpcclient.InferenceServerClient,
) -> None:
    result = infer(client, "diamond", "2")  # weight 0, reachable by its version
    np.testing.assert_allclose(result.as_numpy("y"), 3 * X)
    assert stamped(result) == ("diamond", "2", "diamond/2", "req-7")
    # "5" is the pipeline version; Triton's model has versions 1 and 2 only, so this answers
    # only because the gateway sent "" (Triton's latest, 2: y = 5x) in its place
    result = infer(client, "diamond", "5", headers=TEAMB)
    np.testing.assert_allclose(result.as_numpy("y"), 5 * X)
    assert stamped(result) == ("diamond", "5", "diamond/5", "req-7")
    result = infer(client, "diamond", "4", headers=TEAMB)  # pinned to Triton version 1
    np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
    assert stamped(result) == ("diamond", "4", "diamond/4", "req-7")
    with pytest.raises(InferenceServerException) as info:
        infer(client, "diamond", "7")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "model 'diamond' has no version 7 being served"


def test_the_workspace_metadata_chooses_between_same_named_pipelines(
    client: grpcclient.InferenceServerClient,
) -> None:
    np.testing.assert_allclose(infer(client, "diamond").as_numpy("y"), 2 * X)
    result = infer(client, "diamond", headers=TEAMB)
    np.testing.assert_allclose(result.as_numpy("y"), 5 * X)
    assert stamped(result) == ("diamond", "5", "diamond/5", "req-7")
    with pytest.raises(InferenceServerException) as info:
        infer(client, "ab", headers=TEAMB)  # default's pipeline, not teamb's
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "unknown model 'ab'"


def raw_call(gateway: Gateway, request: pb.ModelInferRequest) -> tuple[dict[str, str], Any]:
    """(initial metadata, response or grpc.RpcError) of a ModelInfer over a plain channel."""
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            response, call = stub.with_call(request, timeout=30)
        except grpc.RpcError as exc:
            return dict(exc.initial_metadata()), exc  # type: ignore[attr-defined]
        return dict(call.initial_metadata()), response


def test_initial_metadata_names_the_variant_on_success_and_on_upstream_errors(
    gateway: Gateway,
) -> None:
    request = pb.ModelInferRequest(model_name="diamond", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(X.tobytes())
    headers, response = raw_call(gateway, request)
    assert headers["lastmile-variant"] == "diamond/2"
    assert response.model_version == "2"
    request.inputs[0].name = "z"
    headers, error = raw_call(gateway, request)
    assert headers["lastmile-variant"] == "diamond/2"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'diamond'" in error.details() and V2 not in error.details()


def test_metadata_and_readiness_show_the_public_name_and_pipeline_versions(
    client: grpcclient.InferenceServerClient,
) -> None:
    meta = client.get_model_metadata("diamond")
    assert (meta.name, list(meta.versions)) == ("diamond", ["1", "2"])
    assert [i.name for i in meta.inputs] == ["x"] and [o.name for o in meta.outputs] == ["y"]
    teamb = client.get_model_metadata("diamond", "4", headers=TEAMB)
    assert (teamb.name, list(teamb.versions)) == ("diamond", ["4", "5"])
    assert client.is_model_ready("diamond") and client.is_model_ready("diamond", "2")
    assert client.is_model_ready("diamond", "5", headers=TEAMB)
    assert not client.is_model_ready("diamond", "7")
    assert not client.is_model_ready("nope")


def test_unknown_model_is_not_found_and_names_nothing_else(
    client: grpcclient.InferenceServerClient,
) -> None:
    for model in ("nope", V1):  # Triton's own name is not reachable either
        with pytest.raises(InferenceServerException) as info:
            infer(client, model)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert info.value.message() == f"unknown model {model!r}"


def test_triton_errors_keep_their_code_and_show_the_public_name(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        infer(client, "diamond", name="z")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'diamond'" in info.value.message()
    assert V1 not in info.value.message()


def test_sticky_keys_keep_their_variant_by_metadata_and_by_parameter(
    client: grpcclient.InferenceServerClient,
) -> None:
    by_header: dict[str, str] = {}
    by_parameter: dict[str, str] = {}
    for _ in range(3):
        for user in range(20):
            key = f"user-{user}"
            result = infer(client, "ab", headers={"lastmile-key": key})
            assert by_header.setdefault(key, stamped(result)[2]) == stamped(result)[2]
            result = infer(client, "ab", parameters={"user": key})
            assert by_parameter.setdefault(key, stamped(result)[2]) == stamped(result)[2]
    assert by_header == by_parameter  # the same key, wherever it travels
    assert set(by_header.values()) == {"ab/1", "ab/2"}


def test_shadow_mirrors_off_the_clients_path_and_reports_the_difference(
    client: grpcclient.InferenceServerClient, gateway: Gateway
) -> None:
    admin = f"http://127.0.0.1:{gateway.admin_port}/shadow"
    assert http_call("DELETE", f"{admin}?route=default/shadowed")[0] == 200
    for _ in range(10):
        result = infer(client, "shadowed")
        np.testing.assert_allclose(result.as_numpy("y"), 2 * X)  # the primary answers
        assert stamped(result)[:3] == ("shadowed", "1", "shadowed/1")
    ok = sample(
        "lastmile_gateway_shadow_requests_total",
        route="default/shadowed",
        variant="shadowed/2",
        outcome="ok",
    )
    eventually(lambda: gateway.metrics().get(ok) == 10, "10 mirrored copies answered")

    def report() -> Any:
        status, body = http_call("GET", admin)
        assert status == 200
        return json.loads(body)["routes"].get("default/shadowed", {}).get("shadowed/2")

    eventually(lambda: (report() or {}).get("sampled") == 10, "10 pairs compared")
    y = report()["outputs"]["y"]
    assert y["compared"] == 10
    assert y["max_abs_diff"] == pytest.approx(X.max())  # 3x - 2x
    assert y["agreement"] == 0.0


def test_grpc_requests_are_counted_per_route_and_variant(
    client: grpcclient.InferenceServerClient, gateway: Gateway
) -> None:
    infer(client, "diamond")
    with pytest.raises(InferenceServerException):
        infer(client, "nope")
    with pytest.raises(InferenceServerException):
        infer(client, "diamond", "7")
    metrics = gateway.metrics()
    requests = "lastmile_gateway_requests_total"
    ok = sample(requests, route="default/diamond", variant="diamond/1", protocol="grpc", code="200")
    assert metrics.get(ok, 0) >= 1, metrics
    unknown = sample(requests, route="_unknown", variant="", protocol="grpc", code="404")
    assert metrics.get(unknown, 0) >= 1
    no_version = sample(requests, route="default/diamond", variant="", protocol="grpc", code="404")
    assert metrics.get(no_version, 0) >= 1
    duration = sample(
        "lastmile_gateway_request_duration_seconds_count",
        route="default/diamond",
        variant="diamond/1",
    )
    assert metrics.get(duration, 0) >= 1
    inflight = sample("lastmile_gateway_inflight", route="default/diamond", variant="diamond/1")
    assert metrics.get(inflight) == 0


def test_repository_and_other_restricted_calls_are_refused(
    client: grpcclient.InferenceServerClient, triton: EmbeddedTriton
) -> None:
    for call in (
        client.get_model_repository_index,
        lambda: client.unload_model(V1),
        lambda: client.load_model("diamond"),
        lambda: client.get_inference_statistics("diamond"),
        client.get_system_shared_memory_status,
        client.get_log_settings,
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "not available through the gateway" in info.value.message()
    with triton.client() as direct:  # nothing reached Triton: the model is still loaded
        assert direct.is_model_ready(V1)
    np.testing.assert_allclose(infer(client, "diamond").as_numpy("y"), 2 * X)


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
