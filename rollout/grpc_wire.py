"""The few protobuf wire-format operations the gRPC gateway needs, on raw bytes.

The gateway forwards KServe v2 messages without decoding them. Routing needs only the model
name and version, which are fields 1 and 2 (length-delimited strings) of ModelInferRequest,
ModelReadyRequest and ModelMetadataRequest, and, for a sticky route keyed by a request
parameter, one entry of the request's `parameters` map (field 4). Protobuf keeps the *last*
value of a scalar field that appears more than once, and the last entry of a map key, so
renaming a request and stamping a response are "append the field again": no re-serialisation,
no copy of the tensors beyond one concatenation. An appended empty string is a value too: it
clears a version the client sent (Triton reads "" as "use the version policy").

`scan_name_version` walks the top-level fields only, jumping over length-delimited ones
(tensors, nested messages) without reading them, so its cost grows with the number of fields,
not with the size of the message. The one message rebuilt rather than appended to is the
small ModelMetadataResponse, whose `versions` is a repeated field (`drop_fields`).
"""

from __future__ import annotations

import struct

_WT_VARINT, _WT_FIXED64, _WT_BYTES, _WT_FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string_field(number: int, value: bytes) -> bytes:
    """Field `number` (wire type 2) holding `value`, ready to be appended to a message."""
    return encode_varint(number << 3 | _WT_BYTES) + encode_varint(len(value)) + value


def bool_field(number: int, value: bool) -> bytes:
    """Field `number` as a varint bool; proto3 omits false, so False is the empty message."""
    return encode_varint(number << 3 | _WT_VARINT) + b"\x01" if value else b""


def scan_name_version(buf: bytes) -> tuple[bytes, bytes]:
    """Last values of string fields 1 and 2 of a serialized message (b"" when absent).

    Raises WireError on a truncated or malformed message (groups, field 0, bad lengths).
    """
    name = version = b""
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            key = buf[pos]
            pos += 1
            if key >= 0x80:  # multi-byte key: field numbers >= 16
                key, pos = _varint_tail(buf, pos, key)
            wire_type = key & 7
            if wire_type == _WT_BYTES:
                length = buf[pos]
                pos += 1
                if length >= 0x80:
                    length, pos = _varint_tail(buf, pos, length)
                stop = pos + length
                if stop > end:
                    raise WireError("length-delimited field runs past the end of the message")
                field = key >> 3
                if field == 1:
                    name = buf[pos:stop]
                elif field == 2:
                    version = buf[pos:stop]
                elif field == 0:
                    raise WireError("field number 0")
                pos = stop
            elif wire_type == _WT_VARINT:
                while buf[pos] >= 0x80:
                    pos += 1
                pos += 1
            elif wire_type == _WT_FIXED64:
                pos += 8
            elif wire_type == _WT_FIXED32:
                pos += 4
            else:
                raise WireError(f"unsupported wire type {wire_type}")
            if key >> 3 == 0:
                raise WireError("field number 0")
    except IndexError:
        raise WireError("truncated message") from None
    if pos != end:
        raise WireError("truncated message")
    return name, version


def _varint_tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """Finish a varint whose first byte `first` (>= 0x80) was already read."""
    result = first & 0x7F
    shift = 7
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError("varint longer than 10 bytes")


def fields(
    buf: bytes, start: int = 0, end: int | None = None
) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value stop) of each top-level field
    of the message held in buf[start:end]; the value span holds the payload of a
    length-delimited field, the encoded varint, or the fixed 8 / 4 bytes. WireError when
    malformed (field 0, groups, a value past the end)."""
    out = []
    pos = start
    end = len(buf) if end is None else end
    try:
        while pos < end:
            field_start = pos
            key, pos = _varint(buf, pos)
            wire_type, number = key & 7, key >> 3
            if number == 0:
                raise WireError("field number 0")
            value_start = pos
            if wire_type == _WT_BYTES:
                length, value_start = _varint(buf, pos)
                pos = value_start + length
            elif wire_type == _WT_VARINT:
                _, pos = _varint(buf, pos)
            elif wire_type == _WT_FIXED64:
                pos += 8
            elif wire_type == _WT_FIXED32:
                pos += 4
            else:
                raise WireError(f"unsupported wire type {wire_type}")
            if pos > end:
                raise WireError(f"field {number} runs past the end of its message")
            out.append((number, wire_type, field_start, value_start, pos))
    except IndexError:
        raise WireError("truncated message") from None
    return out


def length_delimited(
    buf: bytes, start: int = 0, end: int | None = None
) -> list[tuple[int, int, int]]:
    """(field number, start, stop) of each length-delimited field of the message held in
    buf[start:end] (top level only); other wire types are skipped. WireError when malformed."""
    return [(n, vs, ve) for n, wt, _, vs, ve in fields(buf, start, end) if wt == _WT_BYTES]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    return _varint_tail(buf, pos + 1, first)


# ModelInferRequest: parameters = 4 (map<string, InferParameter>), inputs = 5, outputs = 6,
# raw_input_contents = 7; InferInputTensor.parameters = 4; InferRequestedOutputTensor.parameters
# = 2. A map entry is a message whose key is field 1.
_INFER_PARAMETERS, _INFER_INPUTS, _INFER_OUTPUTS, _INFER_RAW = 4, 5, 6, 7
_TENSOR_PARAMETERS = {_INFER_INPUTS: 4, _INFER_OUTPUTS: 2}
SMALL_MESSAGE = 64 * 1024


def mentions(request: bytes, needle: bytes) -> bool:
    """Cheap pre-filter: whether `needle` occurs in a ModelInferRequest outside its raw tensor
    bytes (field 7), which a big request is mostly made of and which cannot hold parameters."""
    if len(request) <= SMALL_MESSAGE:
        return needle in request
    try:
        fields = length_delimited(request)
    except WireError:
        return True  # let the caller's parse report it
    return any(
        number != _INFER_RAW and request.find(needle, start, stop) >= 0
        for number, start, stop in fields
    )


def infer_parameter_keys(request: bytes) -> list[bytes]:
    """Keys of every parameter of a ModelInferRequest: the request's, each input's and each
    requested output's. WireError when malformed."""
    keys = []
    for number, start, stop in length_delimited(request):
        if number == _INFER_PARAMETERS:
            keys.append(_map_key(request, start, stop))
        elif number in _TENSOR_PARAMETERS:
            wanted = _TENSOR_PARAMETERS[number]
            for inner, s, e in length_delimited(request, start, stop):
                if inner == wanted:
                    keys.append(_map_key(request, s, e))
    return keys


def _map_key(buf: bytes, start: int, stop: int) -> bytes:
    key = b""
    for number, s, e in length_delimited(buf, start, stop):
        if number == 1:
            key = buf[s:e]
    return key


# InferParameter's oneof: bool_param = 1, int64_param = 2, string_param = 3, double_param = 4,
# uint64_param = 5. A parameter's "text form" is what a sticky key is hashed from; it is the
# JSON spelling of the value, so an HTTP client's {"user": 42} and a gRPC int64_param 42 (or
# {"vip": true} and bool_param) land on the same variant.
_PARAM_BOOL, _PARAM_INT64, _PARAM_STRING, _PARAM_DOUBLE, _PARAM_UINT64 = 1, 2, 3, 4, 5


def request_parameter(request: bytes, name: bytes) -> bytes | None:
    """Text form of the request-level parameter `name` of a ModelInferRequest (the last entry
    wins, as in protobuf), None when absent or holding no value. WireError when malformed."""
    value = None
    for number, start, stop in length_delimited(request):
        if number != _INFER_PARAMETERS:
            continue
        key = b""
        param: tuple[int, int] | None = None
        for inner, s, e in length_delimited(request, start, stop):
            if inner == 1:
                key = request[s:e]
            elif inner == 2:
                param = (s, e)
        if key == name:
            value = None if param is None else _parameter_text(request, *param)
    return value


def _parameter_text(buf: bytes, start: int, stop: int) -> bytes | None:
    text = None
    for number, wire_type, _, value_start, value_stop in fields(buf, start, stop):
        if wire_type == _WT_VARINT:
            value, _ = _varint(buf, value_start)
            if number == _PARAM_BOOL:
                text = b"true" if value else b"false"
            elif number == _PARAM_INT64:
                value = value - (1 << 64) if value >= 1 << 63 else value
                text = str(value).encode()
            elif number == _PARAM_UINT64:
                text = str(value).encode()
        elif wire_type == _WT_BYTES and number == _PARAM_STRING:
            text = buf[value_start:value_stop]
        elif wire_type == _WT_FIXED64 and number == _PARAM_DOUBLE:
            (double,) = struct.unpack_from("<d", buf, value_start)
            text = repr(double).encode()
    return text


def string_parameter(number: int, key: bytes, value: bytes) -> bytes:
    """One entry of the map<string, InferParameter> field `number`: key -> string_param value,
    ready to be appended (ModelInferResponse.parameters is field 4)."""
    parameter = string_field(_PARAM_STRING, value)
    return string_field(number, string_field(1, key) + string_field(2, parameter))


def drop_fields(buf: bytes, numbers: frozenset[int]) -> bytes:
    """The message without any top-level field whose number is in `numbers` (every wire type);
    WireError when malformed. Copies the message: for small messages only."""
    out = bytearray()
    keep = 0
    for number, _, field_start, _, value_stop in fields(buf):
        if number in numbers:
            out += buf[keep:field_start]
            keep = value_stop
    out += buf[keep:]
    return bytes(out)


def bool_parameter(number: int, key: bytes, value: bool) -> bytes:
    """One entry of the map<string, InferParameter> field `number`: key -> bool_param value
    (proto3 omits false: False gives an entry whose parameter has no value set)."""
    parameter = bool_field(_PARAM_BOOL, value)
    return string_field(number, string_field(1, key) + string_field(2, parameter))


def last_string(buf: bytes, number: int) -> bytes:
    """Last value of the top-level length-delimited field `number` (b"" when absent), e.g. a
    ModelInferRequest's id (field 3). WireError when malformed. Walks every field: for the
    error path, not for routing (scan_name_version is the fast one)."""
    value = b""
    for field, start, stop in length_delimited(buf):
        if field == number:
            value = buf[start:stop]
    return value
