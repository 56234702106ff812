"""The few protobuf wire-format operations the gRPC gateway needs, on raw bytes.

The gateway forwards KServe v2 messages without decoding them. Routing needs only the model
name and version, which are fields 1 and 2 (length-delimited strings) of ModelInferRequest,
ModelReadyRequest and ModelMetadataRequest; renaming needs only field 1 of the requests and of
ModelInferResponse / ModelMetadataResponse. Protobuf keeps the *last* value of a scalar field
that appears more than once, so a rename is "append the field again": no re-serialisation, no
copy of the tensors beyond one concatenation.

`scan_name_version` walks the top-level fields only, jumping over length-delimited ones
(tensors, nested messages) without reading them, so its cost grows with the number of fields,
not with the size of the message.
"""

from __future__ import annotations

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


def length_delimited(
    buf: bytes, start: int = 0, end: int | None = None
) -> list[tuple[int, int, int]]:
    """(field number, start, stop) of each length-delimited field of the message held in
    buf[start:end] (top level only); other wire types are skipped. WireError when malformed."""
    fields = []
    pos = start
    end = len(buf) if end is None else end
    try:
        while pos < end:
            key, pos = _varint(buf, pos)
            wire_type, number = key & 7, key >> 3
            if number == 0:
                raise WireError("field number 0")
            if wire_type == _WT_BYTES:
                length, pos = _varint(buf, pos)
                stop = pos + length
                if stop > end:
                    raise WireError("length-delimited field runs past the end of the message")
                fields.append((number, pos, stop))
                pos = stop
            elif wire_type == _WT_VARINT:
                _, pos = _varint(buf, pos)
            elif wire_type == _WT_FIXED64:
                pos += 8
            elif wire_type == _WT_FIXED32:
                pos += 4
            else:
                raise WireError(f"unsupported wire type {wire_type}")
    except IndexError:
        raise WireError("truncated message") from None
    if pos != end:
        raise WireError("truncated message")
    return fields


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
