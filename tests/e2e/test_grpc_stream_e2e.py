"""ModelStreamInfer end to end: the official `tritonclient.grpc` streaming API against a real
tritonserver directly and through the real gateway (a subprocess), side by side.

The same stream (answers, a bad request in the middle, request ids) must have the same
outcomes on both: every request answered once, the good ones with their id and Triton's
result, the bad ones with an error message while the stream goes on; through the gateway the
answers carry the public pipeline name, the pipeline version and the variant. The Triton and
gateway fixtures (and their routing table) are test_gateway_grpc.py's, started once here.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from manager.triton.runtime import EmbeddedTriton
from tests.e2e import test_gateway_grpc as grpc_e2e
from tests.e2e.test_gateway_grpc import V1, Gateway, X, sample

pytestmark = grpc_e2e.pytestmark

# Module-scoped: one tritonserver and one gateway for this module.
triton = grpc_e2e.triton
gateway = grpc_e2e.gateway
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
Outcome = tuple[str, Any]  # ("ok", InferResult) or ("error", message)


def x_input(name: str = "x") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return inp


def stream(url: str, requests: list[dict[str, Any]], headers: Any = None) -> list[Outcome]:
    """Send `requests` (async_stream_infer's arguments) on one stream; every answer, in the
    order the stream delivered them."""
    answers: queue.Queue[Outcome] = queue.Queue()

    def callback(result: Any, error: Any) -> None:
        answers.put(("error", error.message()) if error is not None else ("ok", result))

    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=callback, stream_timeout=60, headers=headers)
        for kwargs in requests:
            client.async_stream_infer(inputs=[x_input(kwargs.pop("input", "x"))], **kwargs)
        client.stop_stream()  # waits until every request was answered
    return [answers.get_nowait() for _ in range(answers.qsize())]


def by_id(outcomes: list[Outcome]) -> dict[str, grpcclient.InferResult]:
    results = [r for kind, r in outcomes if kind == "ok"]
    out = {r.get_response().id: r for r in results}
    assert len(out) == len(results)
    return out


def errors(outcomes: list[Outcome]) -> list[str]:
    return [message for kind, message in outcomes if kind == "error"]


@pytest.fixture(scope="module")
def direct_url(triton: EmbeddedTriton) -> str:
    return triton.endpoints.grpc_url


def mixed(model: str) -> list[dict[str, Any]]:
    """Good, unknown model, wrong input, good, explicit version: one stream's requests."""
    return [
        {"model_name": model, "request_id": "a"},
        {"model_name": "nope", "request_id": "b"},
        {"model_name": model, "request_id": "c", "input": "z"},
        {"model_name": model, "request_id": "d"},
    ]


def test_a_stream_has_the_same_outcomes_direct_and_through_the_gateway(
    gateway: Gateway, direct_url: str
) -> None:
    direct = stream(direct_url, mixed(V1))
    through = stream(gateway.grpc_url, mixed("diamond"))
    for outcomes in (direct, through):
        assert len(outcomes) == 4  # one answer per request, the stream outlived the errors
        good = by_id(outcomes)
        assert sorted(good) == ["a", "d"]
        for result in good.values():
            np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
            assert result.get_response().parameters["triton_final_response"].bool_param
        assert len(errors(outcomes)) == 2
    for result in by_id(through).values():
        response = result.get_response()
        assert (response.model_name, response.model_version) == ("diamond", "1")
        assert response.parameters["lastmile_variant"].string_param == "diamond/1"
    assert {r.get_response().model_name for r in by_id(direct).values()} == {V1}
    unknown, bad_input = sorted(errors(through), key=lambda m: "nope" not in m)
    assert unknown == "unknown model 'nope'"
    assert "'z'" in bad_input and "'diamond'" in bad_input and V1 not in bad_input
    assert sorted(errors(direct), key=lambda m: "nope" not in m)[1] == bad_input.replace(
        "'diamond'", f"'{V1}'"
    )  # Triton's own words, the public name in place of the internal one


def test_explicit_versions_and_the_workspace_metadata_apply_to_every_message(
    gateway: Gateway,
) -> None:
    outcomes = stream(
        gateway.grpc_url,
        [
            {"model_name": "diamond", "model_version": "2", "request_id": "v2"},
            {"model_name": "diamond", "request_id": "picked"},
            {"model_name": "diamond", "model_version": "7", "request_id": "v7"},
        ],
    )
    good = by_id(outcomes)
    np.testing.assert_allclose(good["v2"].as_numpy("y"), 3 * X)  # weight 0, by its version
    assert good["v2"].get_response().parameters["lastmile_variant"].string_param == "diamond/2"
    assert good["picked"].get_response().model_version == "1"
    assert errors(outcomes) == ["model 'diamond' has no version 7 being served"]
    teamb = stream(gateway.grpc_url, [{"model_name": "diamond"}], {"lastmile-workspace": "teamb"})
    ((kind, result),) = teamb
    assert kind == "ok"
    np.testing.assert_allclose(result.as_numpy("y"), 5 * X)
    assert result.get_response().model_version == "5"


def raw_stream(url: str, requests: list[pb.ModelInferRequest]) -> Iterator[bytes]:
    with grpc.insecure_channel(url) as channel:
        call = channel.stream_stream(STREAM)
        yield from call(iter([r.SerializeToString() for r in requests]), timeout=30)


def test_error_answers_have_tritons_wire_shape_with_the_request_id(
    gateway: Gateway, direct_url: str
) -> None:
    unknown = pb.ModelInferRequest(model_name="nope", id="e1")
    unknown.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    unknown.raw_input_contents.append(X.tobytes())
    no_id = pb.ModelInferRequest()
    no_id.CopyFrom(unknown)
    no_id.id = ""
    for url in (direct_url, gateway.grpc_url):
        answers = [
            pb.ModelStreamInferResponse.FromString(b) for b in raw_stream(url, [unknown, no_id])
        ]
        assert [a.infer_response for a in answers] == [
            pb.ModelInferResponse(id="e1"),
            pb.ModelInferResponse(),
        ]
        assert all(a.HasField("infer_response") and a.error_message for a in answers)


def test_stream_messages_are_counted_per_variant_like_unary_calls(gateway: Gateway) -> None:
    ok = sample(
        "lastmile_gateway_requests_total",
        route="default/diamond",
        variant="diamond/2",
        protocol="grpc",
        code="200",
    )
    before = gateway.metrics().get(ok, 0)
    stream(gateway.grpc_url, [{"model_name": "diamond", "model_version": "2"}] * 5)
    assert gateway.metrics().get(ok, 0) == before + 5
    inflight = sample("lastmile_gateway_inflight", route="default/diamond", variant="diamond/2")
    assert gateway.metrics().get(inflight) == 0


def test_a_client_asking_for_empty_final_responses_gets_one_final_answer_as_direct(
    gateway: Gateway, direct_url: str
) -> None:
    """Triton flags a non-decoupled model's only response final and sends nothing more; the
    gateway's unary call upstream accepts the flag and its answer carries the same mark."""
    for url, model in ((direct_url, V1), (gateway.grpc_url, "diamond")):
        request = {"model_name": model, "request_id": "f", "enable_empty_final_response": True}
        ((kind, result),) = stream(url, [request])
        assert kind == "ok"
        response = result.get_response()
        assert response.id == "f" and response.parameters["triton_final_response"].bool_param
        np.testing.assert_allclose(result.as_numpy("y"), 2 * X)
