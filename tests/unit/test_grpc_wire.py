"""The protobuf wire helpers behind the gRPC gateway, checked against the real protobuf runtime."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from tritonclient.grpc import service_pb2 as pb

from rollout.grpc_wire import (
    WireError,
    bool_field,
    drop_fields,
    encode_varint,
    request_parameter,
    scan_name_version,
    string_field,
    string_parameter,
)


def infer_request(name: str = "diamond", version: str = "", nbytes: int = 16) -> bytes:
    x = np.arange(nbytes // 4, dtype=np.float32).reshape(1, -1)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    request = pb.ModelInferRequest(model_name=name, model_version=version, id="req-1")
    request.inputs.extend([inp._get_tensor()])
    request.raw_input_contents.extend([inp._get_content()])
    request.outputs.extend([grpcclient.InferRequestedOutput("y")._get_tensor()])
    request.parameters["priority"].int64_param = 3
    return request.SerializeToString()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**35, 2**64 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    assert encode_varint(value) == _VarintBytes(value)


def test_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)


@pytest.mark.parametrize("nbytes", [16, 200, 70_000, 5 * 1024 * 1024])
def test_scan_reads_name_and_version_of_real_requests(nbytes: int) -> None:
    assert scan_name_version(infer_request("diamond", "", nbytes)) == (b"diamond", b"")
    assert scan_name_version(infer_request("d", "12", nbytes)) == (b"d", b"12")


def test_scan_of_other_messages_with_name_in_fields_1_and_2() -> None:
    ready = pb.ModelReadyRequest(name="diamond", version="3").SerializeToString()
    assert scan_name_version(ready) == (b"diamond", b"3")
    assert scan_name_version(pb.ModelMetadataRequest().SerializeToString()) == (b"", b"")
    assert scan_name_version(b"") == (b"", b"")


def test_appended_fields_win_like_protobuf_says() -> None:
    raw = infer_request("diamond", "7", 64)
    renamed = raw + string_field(1, b"default.diamond.v1") + string_field(2, b"2")
    parsed = pb.ModelInferRequest.FromString(renamed)
    original = pb.ModelInferRequest.FromString(raw)
    assert (parsed.model_name, parsed.model_version) == ("default.diamond.v1", "2")
    # everything else is untouched
    assert parsed.raw_input_contents == original.raw_input_contents
    assert parsed.inputs == original.inputs and parsed.id == "req-1"
    assert parsed.parameters["priority"].int64_param == 3
    # the scanner agrees with protobuf: last value wins
    assert scan_name_version(renamed) == (b"default.diamond.v1", b"2")


def test_response_rename_shows_the_public_name() -> None:
    response = pb.ModelInferResponse(model_name="ws.diamond.v3", model_version="1", id="r")
    response.raw_output_contents.append(b"\x00" * 32)
    renamed = response.SerializeToString() + string_field(1, b"diamond")
    parsed = pb.ModelInferResponse.FromString(renamed)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("diamond", "1", "r")
    assert parsed.raw_output_contents[0] == b"\x00" * 32
    meta = pb.ModelMetadataResponse(name="ws.diamond.v3", versions=["1"], platform="python")
    parsed_meta = pb.ModelMetadataResponse.FromString(
        meta.SerializeToString() + string_field(1, b"diamond")
    )
    assert (parsed_meta.name, list(parsed_meta.versions)) == ("diamond", ["1"])


def test_long_names_get_multi_byte_lengths() -> None:
    name = b"n" * 300
    request = pb.ModelInferRequest(model_name="short").SerializeToString() + string_field(1, name)
    assert pb.ModelInferRequest.FromString(request).model_name == name.decode()
    assert scan_name_version(request) == (name, b"")


def test_scan_skips_every_wire_type_and_high_field_numbers() -> None:
    # field 3 varint (multi-byte), field 9 fixed64, field 10 fixed32, field 2000 bytes, field 1
    raw = (
        encode_varint(3 << 3 | 0)
        + encode_varint(2**40)
        + encode_varint(9 << 3 | 1)
        + b"\x01" * 8
        + encode_varint(10 << 3 | 5)
        + b"\x02" * 4
        + string_field(2000, b"\x0a\x03abc")  # looks like field 1 inside: must be skipped
        + string_field(1, b"m")
    )
    assert scan_name_version(raw) == (b"m", b"")


def test_bool_field_matches_protobuf() -> None:
    assert bool_field(1, True) == pb.ServerLiveResponse(live=True).SerializeToString()
    assert bool_field(1, False) == pb.ServerReadyResponse(ready=False).SerializeToString() == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a",  # key without length
        b"\x0a\x05abc",  # length past the end
        b"\x0a\xff",  # truncated length varint
        b"\x08",  # varint field without value
        b"\x08\xff\xff",  # unterminated varint
        b"\x09\x00\x00",  # fixed64 cut short
        b"\x0d\x00",  # fixed32 cut short
        b"\x0b",  # group start (wire type 3)
        b"\x0c",  # group end (wire type 4)
        b"\x0e",  # wire type 6 does not exist
        b"\x02\x00",  # field number 0
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # key varint longer than 10 bytes
    ],
)
def test_malformed_messages_raise_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        scan_name_version(raw)


def test_an_appended_empty_version_clears_the_clients() -> None:
    raw = infer_request("diamond", "3", 64)
    renamed = raw + string_field(1, b"default.diamond.v3") + string_field(2, b"")
    parsed = pb.ModelInferRequest.FromString(renamed)
    assert (parsed.model_name, parsed.model_version) == ("default.diamond.v3", "")
    assert scan_name_version(renamed) == (b"default.diamond.v3", b"")


def test_an_appended_parameter_entry_overrides_and_keeps_the_others() -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.parameters["sequence_id"].int64_param = 4
    response.parameters["lastmile_variant"].string_param = "from triton"
    raw = response.SerializeToString() + string_parameter(4, b"lastmile_variant", b"fraud/3")
    parsed = pb.ModelInferResponse.FromString(raw)
    assert parsed.parameters["lastmile_variant"].string_param == "fraud/3"
    assert parsed.parameters["sequence_id"].int64_param == 4
    fresh = pb.ModelInferResponse.FromString(string_parameter(4, b"k", b"v"))
    assert dict(fresh.parameters)["k"].string_param == "v"


def with_parameters(**values: object) -> bytes:
    request = pb.ModelInferRequest.FromString(infer_request("d", "", 64))
    for key, value in values.items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > 2**63 - 1:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            assert isinstance(value, str)
            param.string_param = value
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("user-42", b"user-42"),
        ("", b""),
        ("ünï", "ünï".encode()),
        (42, b"42"),
        (-7, b"-7"),
        (0, b"0"),
        (2**64 - 1, b"18446744073709551615"),
        (True, b"true"),
        (False, b"false"),
        (1.5, b"1.5"),
    ],
)
def test_request_parameter_text_form(value: object, text: bytes) -> None:
    raw = with_parameters(user=value, other="x")
    assert request_parameter(raw, b"user") == text
    assert request_parameter(raw, b"missing") is None


def test_request_parameter_last_entry_wins_and_empty_value_is_none() -> None:
    raw = with_parameters(user="first")
    raw += string_field(4, string_field(1, b"user") + string_field(2, string_field(3, b"last")))
    assert request_parameter(raw, b"user") == b"last"
    assert pb.ModelInferRequest.FromString(raw).parameters["user"].string_param == "last"
    no_value = raw + string_field(4, string_field(1, b"user"))
    assert request_parameter(no_value, b"user") is None
    # a tensor's parameter of that name is not the request's
    request = pb.ModelInferRequest(model_name="d")
    request.inputs.add(name="x").parameters["user"].string_param = "tensor"
    assert request_parameter(request.SerializeToString(), b"user") is None


@pytest.mark.parametrize(
    "entry",
    [
        b"\x0a\x09ab",  # key runs past the entry
        b"\x12\x03\x1a\x05ab",  # string_param runs past the value
        b"\x12\x02\x21\x00",  # double_param cut short
        b"\x12\x01\x0b",  # group wire type
    ],
)
def test_malformed_parameters_raise_wire_error(entry: bytes) -> None:
    raw = string_field(1, b"d") + string_field(4, b"\x0a\x04user" + entry)
    with pytest.raises(WireError):
        request_parameter(raw, b"user")


def test_drop_fields_removes_every_occurrence_of_any_wire_type() -> None:
    meta = pb.ModelMetadataResponse(name="ws.d.v3", versions=["1", "2"], platform="python")
    meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    dropped = drop_fields(meta.SerializeToString(), frozenset({1, 2}))
    parsed = pb.ModelMetadataResponse.FromString(dropped + string_field(1, b"d"))
    assert (parsed.name, list(parsed.versions), parsed.platform) == ("d", [], "python")
    assert parsed.inputs[0].name == "x"
    raw = encode_varint(3 << 3) + encode_varint(300) + string_field(1, b"x") + b"\x29" + b"\x01" * 8
    assert drop_fields(raw, frozenset({3, 5})) == string_field(1, b"x")
    assert drop_fields(raw, frozenset()) == raw
    with pytest.raises(WireError):
        drop_fields(b"\x0a\x05abc", frozenset({1}))
