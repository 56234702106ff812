"""The decoupled-stream rule agrees with a real tritonserver.

Triton 2.51 refuses an ensemble where a branch of a decoupled model's responses meets a tensor
of another stream (an ensemble input, a step before the decoupled one, another decoupled
model), and accepts branches that only meet each other. Each ensemble of
``tests.decoupled_ensembles`` is validated, then loaded; the two must agree. A request to the
accepted diamond shows that it also runs: one answer per response of the decoupled model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from manager.errors import TritonError
from manager.repository.validate import Problem, validate_repository
from manager.triton.runtime import EmbeddedTriton
from tests import decoupled_ensembles as cases
from tests.conftest import free_ports

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    tmp = tmp_path_factory.mktemp("decoupled-vs-triton")
    http, grpc, metrics = free_ports(3)
    triton = EmbeddedTriton(
        repository=cases.build(tmp / "repository"),
        work_dir=tmp / "work",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp / "triton.log",
    )
    with triton:
        yield triton


@pytest.fixture(scope="module")
def server_grpc(server: EmbeddedTriton) -> str:
    return server.endpoints.grpc_url


@pytest.fixture(scope="module")
def checked(server: EmbeddedTriton) -> Iterator[tuple[list[Problem], Any]]:
    problems = validate_repository(server.repository)
    with server.client(timeout_s=60) as client:
        yield problems, client


@pytest.mark.parametrize("name", list(cases.ENSEMBLES))
def test_validator_and_triton_agree_on_decoupled_streams(
    checked: tuple[list[Problem], Any], name: str
) -> None:
    problems, client = checked
    refused = cases.ENSEMBLES[name][2]
    rules = {p.rule for p in problems if p.model == name}
    assert rules == ({"decoupled-mix"} if refused else set())
    try:
        client.load_model(name)
        loaded = True
    except TritonError as exc:
        loaded = False
        assert "originated from different decoupled models" in str(exc)
    assert loaded == (not refused)
    if loaded:
        client.unload_model(name)


def test_models_are_clean_for_the_validator(checked: tuple[list[Problem], Any]) -> None:
    problems, _ = checked
    assert [p for p in problems if p.model in cases.MODELS] == []


def test_accepted_diamond_after_a_decoupled_model_answers_once_per_response(
    checked: tuple[list[Problem], Any], server_grpc: str
) -> None:
    """ws.gen answers x and 2x; each runs through both branches and the join: 2x and 4x."""
    import queue

    import tritonclient.grpc as grpcclient

    _, client = checked
    client.load_model("ws.branch-rejoin")
    answers: queue.Queue[Any] = queue.Queue()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    stream = grpcclient.InferenceServerClient(server_grpc)
    try:
        stream.start_stream(callback=lambda result, error: answers.put(error or result))
        stream.async_stream_infer("ws.branch-rejoin", [tensor])
        got = [answers.get(timeout=30) for _ in range(2)]
    finally:
        stream.stop_stream()
        stream.close()
        client.unload_model("ws.branch-rejoin")
    for answer in got:
        assert not isinstance(answer, Exception), answer
    outs = sorted((a.as_numpy("out") for a in got), key=lambda a: float(a.sum()))
    np.testing.assert_allclose(outs[0], 2 * x)
    np.testing.assert_allclose(outs[1], 4 * x)
