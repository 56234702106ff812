"""loadtests/locustfile.py builds the requests its options describe (no network, no gevent).

Importing locust patches the standard library with gevent unless LOCUST_SKIP_MONKEY_PATCH is
set; the fixture sets it first so that the rest of the test session keeps real threads and
sockets (and the locustfile leaves grpc alone when nothing was patched).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def lf() -> ModuleType:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        pytest.importorskip("locust")
        return importlib.import_module("loadtests.locustfile")


def _options(lf: ModuleType, *args: str) -> Any:
    """Locust's own parser with the locustfile's options, as ``locust -f … ARGS`` parses."""
    from locust.argument_parser import get_parser

    return get_parser(default_config_files=[]).parse_args(["-f", lf.__file__, *args])


def test_defaults_target_the_fraud_pipeline_with_one_fp32_row_of_four(lf: ModuleType) -> None:
    target = lf.Target.from_options(_options(lf), "http://gateway:8000/")
    assert target.http_path == "/v2/models/fraud/infer"
    assert target.grpc_target == "gateway:8001"
    assert (target.input_name, target.input_shape, target.input_datatype) == ("x", (1, 4), "FP32")
    assert target.headers(None) == {}
    assert target.user_rps == 0.0


def test_options_and_environment_variables_reach_the_target(
    lf: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCUST_PIPELINE", "scorer")
    monkeypatch.setenv("LOCUST_GRPC_ADDRESS", "10.0.0.5:9001")
    options = _options(
        lf,
        "--pipeline-version", "3", "--workspace", "teamb", "--input-name", "features",
        "--input-shape", "2, 3", "--input-datatype", "int64", "--input-low", "5",
        "--input-high", "9", "--sticky-header", "Lastmile-Key", "--user-rps", "20",
        "--request-timeout", "7",
    )  # fmt: skip
    target = lf.Target.from_options(options, "http://gw:8000")
    assert target.http_path == "/v2/models/scorer/versions/3/infer"
    assert target.grpc_target == "10.0.0.5:9001"
    assert target.input_shape == (2, 3)
    assert target.input_datatype == "INT64"
    assert (target.timeout_s, target.user_rps) == (7.0, 20.0)
    assert target.headers("user-1") == {"lastmile-workspace": "teamb", "lastmile-key": "user-1"}


def test_json_body_is_a_kserve_v2_request_with_values_in_range(lf: ModuleType) -> None:
    target = lf.Target(input_name="x", input_shape=(2, 4), input_low=3.0, input_high=4.0)
    tensor = target.sample(np.random.default_rng(0))
    body = json.loads(target.json_body(tensor))
    assert list(body) == ["inputs"]
    (tensor_json,) = body["inputs"]
    assert {k: tensor_json[k] for k in ("name", "shape", "datatype")} == {
        "name": "x",
        "shape": [2, 4],
        "datatype": "FP32",
    }
    assert len(tensor_json["data"]) == 8
    assert all(3.0 <= v < 4.0 for v in tensor_json["data"])
    assert tensor_json["data"] == pytest.approx(tensor.reshape(-1).tolist())


def test_integer_inputs_are_integers_in_range(lf: ModuleType) -> None:
    target = lf.Target(input_datatype="INT32", input_shape=(1, 16), input_low=-2, input_high=2)
    tensor = target.sample(np.random.default_rng(1))
    assert tensor.dtype == np.int32
    assert tensor.min() >= -2 and tensor.max() < 2
    data = json.loads(target.json_body(tensor))["inputs"][0]["data"]
    assert all(isinstance(v, int) for v in data)


def test_grpc_request_carries_the_same_tensor_as_raw_contents(lf: ModuleType) -> None:
    target = lf.Target(pipeline="fraud", pipeline_version="2", input_shape=(3, 4))
    tensor = target.sample(np.random.default_rng(2))
    request = target.grpc_request(tensor)
    assert (request.model_name, request.model_version) == ("fraud", "2")
    (spec,) = request.inputs
    assert (spec.name, spec.datatype, list(spec.shape)) == ("x", "FP32", [3, 4])
    raw = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(3, 4)
    np.testing.assert_array_equal(raw, tensor)


def test_bad_configuration_is_refused(lf: ModuleType) -> None:
    with pytest.raises(ValueError, match="datatype"):
        lf.Target(input_datatype="BYTES")
    with pytest.raises(ValueError, match="shape"):
        lf.Target(input_shape=(0, 4))
    with pytest.raises(ValueError, match="input-high"):
        lf.Target(input_low=1.0, input_high=1.0)


def take(keys: Iterator[str | None], n: int) -> list[str | None]:
    return [next(keys) for _ in range(n)]


def test_sticky_keys_per_user_or_rotating(lf: ModuleType) -> None:
    assert take(lf.sticky_keys(lf.Target(), 5), 2) == [None, None]
    per_user = lf.Target(sticky_header="lastmile-key")
    assert take(lf.sticky_keys(per_user, 5), 2) == ["user-5", "user-5"]
    rotating = lf.Target(sticky_header="lastmile-key", sticky_keys=3)
    assert take(lf.sticky_keys(rotating, 4), 4) == ["key-1", "key-2", "key-0", "key-1"]


def test_tally_counts_variants_per_second_and_unnamed_failures(lf: ModuleType) -> None:
    tally = lf.VariantTally()
    tally.add("fraud/1", True, now=100.2)
    tally.add("fraud/2", False, now=100.9)
    tally.add(None, False, now=101.0)
    snap = tally.snapshot()
    assert snap["totals"] == {
        "fraud/1": {"ok": 1, "failed": 0},
        "fraud/2": {"ok": 0, "failed": 1},
        "none": {"ok": 0, "failed": 1},
    }
    assert snap["seconds"]["100"] == {
        "fraud/1": {"ok": 1, "failed": 0},
        "fraud/2": {"ok": 0, "failed": 1},
    }
    assert snap["seconds"]["101"] == {"none": {"ok": 0, "failed": 1}}


def test_grpc_variant_from_the_parameter_or_a_failed_calls_metadata(lf: ModuleType) -> None:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse()
    response.parameters["lastmile_variant"].string_param = "fraud/3"
    assert lf.grpc_variant(response, None) == "fraud/3"
    failed = SimpleNamespace(initial_metadata=lambda: (("lastmile-variant", "fraud/4"),))
    assert lf.grpc_variant(None, failed) == "fraud/4"
    assert lf.grpc_variant(None, SimpleNamespace(initial_metadata=lambda: None)) is None


def test_both_user_classes_are_locust_users_and_nothing_was_patched(lf: ModuleType) -> None:
    import gevent.monkey
    from locust import User

    assert issubclass(lf.HttpInferUser, User)
    assert issubclass(lf.GrpcInferUser, User)
    assert not gevent.monkey.is_module_patched("socket")
