"""The public face of a pipeline's Triton config (rollout.public_config), JSON and wire forms."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from rollout.grpc_wire import WireError
from rollout.public_config import (
    EXTENSIONS,
    public_grpc_config,
    public_http_config,
    public_json_config,
)

# Triton 2.51's answer to GET /v2/models/default.fraud.v3/config (measured, one step).
TRITON_JSON = {
    "name": "default.fraud.v3",
    "platform": "ensemble",
    "backend": "",
    "runtime": "",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 8,
    "input": [
        {
            "name": "x",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [4],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
            "is_non_linear_format_io": False,
        }
    ],
    "output": [
        {
            "name": "y",
            "data_type": "TYPE_FP32",
            "dims": [4],
            "label_filename": "",
            "is_shape_tensor": False,
            "is_non_linear_format_io": False,
        }
    ],
    "batch_input": [],
    "batch_output": [],
    "ensemble_scheduling": {
        "step": [
            {
                "model_name": "default.scaler.v1",
                "model_version": -1,
                "input_map": {"x": "x"},
                "output_map": {"y": "y"},
                "model_namespace": "",
            }
        ]
    },
    "instance_group": [],
    "default_model_filename": "",
    "cc_model_filenames": {},
    "metric_tags": {},
    "parameters": {},
    "model_warmup": [],
    "model_transaction_policy": {"decoupled": False},
}

# A config with every internal field set (names that must never reach a client).
FULL_TEXT = """
name: "default.fraud.v3"
platform: "ensemble"
runtime: "libinternal.so"
version_policy { specific { versions: [ 7 ] } }
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "default.labels.txt" },
  { name: "z" data_type: TYPE_INT64 dims: [ -1 ] }
]
batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "default.count" source_input: "x" } ]
ensemble_scheduling { step [ {
  model_name: "default.scaler.v1" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" }
} ] }
instance_group [ { name: "default.fraud.v3_0" kind: KIND_CPU count: 2 } ]
default_model_filename: "default.model.py"
cc_model_filenames { key: "8.0" value: "default.plan" }
metric_tags { key: "team" value: "default.secret" }
parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/srv/default.env.tar.gz" } }
model_warmup [ { name: "default.warm" batch_size: 1 } ]
model_operations { op_library_filename: "/srv/default.ops.so" }
model_transaction_policy { decoupled: true }
model_repository_agents { agents [ { name: "default.agent" } ] }
response_cache { enable: true }
"""


def full_config() -> mc.ModelConfig:
    return text_format.Parse(FULL_TEXT, mc.ModelConfig())


def grpc_public(config: mc.ModelConfig, public: str = "fraud") -> mc.ModelConfig:
    response = pb.ModelConfigResponse(config=config).SerializeToString()
    rewritten = public_grpc_config(response, public)
    return pb.ModelConfigResponse.FromString(rewritten).config


def test_http_config_keeps_the_interface_under_the_public_name() -> None:
    body = public_http_config(json.dumps(TRITON_JSON).encode(), "fraud")
    assert body is not None
    assert json.loads(body) == {
        "name": "fraud",
        "platform": "",  # an ensemble is how the pipeline runs, not what it is
        "backend": "",
        "max_batch_size": 8,
        "input": TRITON_JSON["input"],
        "output": TRITON_JSON["output"],
        "model_transaction_policy": {"decoupled": False},
    }
    assert b"default." not in body


def test_json_config_drops_every_internal_field_and_blanks_label_files() -> None:
    triton = json_format.MessageToDict(full_config(), preserving_proto_field_name=True)
    public = public_json_config(triton, "fraud")
    assert sorted(public) == sorted(
        [
            "name",
            "platform",
            "max_batch_size",
            "input",
            "output",
            "model_transaction_policy",
            "response_cache",
        ]
    )
    assert public["output"][0]["label_filename"] == ""
    assert public["output"][1] == triton["output"][1]
    assert public["model_transaction_policy"] == {"decoupled": True}
    assert public["response_cache"] == {"enable": True}
    assert "default." not in json.dumps(public)


def test_a_platform_other_than_ensemble_and_the_backend_are_kept() -> None:
    public = public_json_config(
        {"name": "default.m.v1", "platform": "onnxruntime_onnx", "backend": "onnxruntime"}, "m"
    )
    assert public == {"name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime"}
    config = mc.ModelConfig(name="default.m.v1", platform="tensorrt_plan", backend="tensorrt")
    assert grpc_public(config, "m") == mc.ModelConfig(
        name="m", platform="tensorrt_plan", backend="tensorrt"
    )


@pytest.mark.parametrize("text", [b"not json", b"[1, 2]", b'"config"'])
def test_an_http_config_that_is_not_a_json_object_is_none(text: bytes) -> None:
    assert public_http_config(text, "fraud") is None


def test_grpc_config_keeps_the_interface_under_the_public_name() -> None:
    public = grpc_public(full_config())
    expected = mc.ModelConfig(name="fraud", max_batch_size=8)
    expected.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4], optional=True)
    expected.output.add(name="y", data_type=mc.TYPE_FP32, dims=[4])
    expected.output.add(name="z", data_type=mc.TYPE_INT64, dims=[-1])
    expected.model_transaction_policy.decoupled = True
    expected.response_cache.enable = True
    assert public == expected
    assert b"default." not in public.SerializeToString()


def test_grpc_and_http_forms_show_the_same_fields() -> None:
    config = full_config()
    via_grpc = json_format.MessageToDict(grpc_public(config), preserving_proto_field_name=True)
    triton_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    via_http = public_json_config(triton_json, "fraud")
    assert via_http.pop("platform") == ""  # proto3 leaves the empty string out on the wire
    assert via_http["output"][0].pop("label_filename") == ""  # blanked: dropped on the wire
    assert via_http == via_grpc


def test_grpc_config_with_a_repeated_config_field_is_merged_like_protobuf() -> None:
    first = pb.ModelConfigResponse(config=mc.ModelConfig(name="default.a.v1", max_batch_size=4))
    second = pb.ModelConfigResponse(config=mc.ModelConfig(backend="python"))
    response = first.SerializeToString() + second.SerializeToString()
    public = pb.ModelConfigResponse.FromString(public_grpc_config(response, "a")).config
    assert public == mc.ModelConfig(name="a", backend="python", max_batch_size=4)


def test_an_empty_grpc_response_gets_the_public_name_only() -> None:
    public = pb.ModelConfigResponse.FromString(public_grpc_config(b"", "fraud")).config
    assert public == mc.ModelConfig(name="fraud")


@pytest.mark.parametrize(
    "response",
    [
        b"\x0a\x05abc",  # config field longer than the message
        b"\x0a\x02\x2a\x09",  # an output whose length runs past the config
        b"\x0b",  # a group
    ],
)
def test_malformed_grpc_responses_raise_wire_error(response: bytes) -> None:
    with pytest.raises(WireError):
        public_grpc_config(response, "fraud")


def test_extensions_list_only_what_passes_through_the_gateway() -> None:
    never: set[Any] = {
        "model_repository",
        "system_shared_memory",
        "cuda_shared_memory",
        "logging",
        "trace",
        "statistics",
    }
    assert "binary_tensor_data" in EXTENSIONS
    assert "model_configuration" in EXTENSIONS
    assert not never & set(EXTENSIONS)
