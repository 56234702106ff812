"""KServe v2 tensors decoded from the bytes the gateway saw: HTTP JSON (with or without the
binary-data extension) and serialized gRPC ModelInfer messages, requests and responses alike.

Never called on the event loop: the shadow diff's worker thread and the manager's capture
summariser decode here, the gateway only moves bytes.
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from typing import Any

import numpy as np

# Triton datatype -> little-endian numpy dtype of its binary layout (BYTES and BF16 apart).
_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
        ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
        ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    )
}  # fmt: skip

# gRPC InferTensorContents field holding each datatype (FP16/BF16 travel only as raw bytes).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


class DecodeError(ValueError):
    """A response body that cannot be read as a KServe v2 inference response."""


def _shaped(array: np.ndarray, shape: Any, name: str) -> np.ndarray:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"tensor {name!r}: bad shape {shape!r}") from exc
    # math.prod: exact on Python ints, and a tenth of np.prod's cost on a short tuple
    if any(d < 0 for d in dims) or math.prod(dims) != array.size:
        raise DecodeError(f"tensor {name!r}: {array.size} elements do not fill shape {dims}")
    return array.reshape(dims)


def _bytes_array(items: list[bytes]) -> np.ndarray:
    # An object array: np.array(list of bytes) would make an "S" array that drops trailing NULs.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _split_bytes(raw: bytes | memoryview, name: str) -> list[bytes]:
    """Binary BYTES tensors: each element is a 4-byte little-endian length, then the bytes."""
    items, offset, end = [], 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise DecodeError(f"tensor {name!r}: truncated BYTES length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > end:
            raise DecodeError(f"tensor {name!r}: BYTES element overruns the tensor")
        items.append(bytes(raw[offset : offset + size]))
        offset += size
    return items


def _from_raw(datatype: str, raw: bytes | memoryview, shape: Any, name: str) -> np.ndarray:
    """A tensor in Triton's binary layout (HTTP binary extension, gRPC raw_output_contents)."""
    if datatype == "BYTES":
        return _shaped(_bytes_array(_split_bytes(raw, name)), shape, name)
    if datatype == "BF16":  # the top half of an FP32: widen exactly, compare as float
        if len(raw) % 2:
            raise DecodeError(f"tensor {name!r}: {len(raw)} bytes is not a whole BF16 tensor")
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        return _shaped((halves << 16).view(np.float32), shape, name)
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise DecodeError(f"tensor {name!r}: unknown datatype {datatype!r}")
    if len(raw) % dtype.itemsize:
        raise DecodeError(f"tensor {name!r}: {len(raw)} bytes is not a whole {datatype} tensor")
    if datatype == "BOOL":  # any non-zero byte is true; do not trust numpy with other values
        return _shaped(np.frombuffer(raw, dtype=np.uint8) != 0, shape, name)
    return _shaped(np.frombuffer(raw, dtype=dtype), shape, name)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _from_json(datatype: str, data: Any, shape: Any, name: str) -> np.ndarray:
    """A tensor written in the JSON "data" field (flat or nested row-major lists)."""
    values = _flatten(data)
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else v for v in values]
        if not all(isinstance(v, bytes) for v in items):
            raise DecodeError(f"tensor {name!r}: BYTES data must be strings")
        return _shaped(_bytes_array(items), shape, name)
    dtype = np.dtype(np.float32) if datatype == "BF16" else _DTYPES.get(datatype)
    if dtype is None:
        raise DecodeError(f"tensor {name!r}: unknown datatype {datatype!r}")
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"tensor {name!r}: data is not {datatype}: {exc}") from exc
    return _shaped(array, shape, name)


def decode_http(
    body: bytes | memoryview, header_length: int | None = None, *, side: str = "outputs"
) -> dict[str, np.ndarray]:
    """Tensor name -> array of a KServe v2 HTTP infer response (`side` "outputs") or request
    ("inputs"): JSON, or a JSON header of `header_length` bytes followed by binary tensors."""
    view = memoryview(body)
    split = len(view) if header_length is None else header_length
    if not 0 <= split <= len(view):
        raise DecodeError(f"header length {header_length} outside a {len(view)}-byte body")
    try:
        header = json.loads(str(view[:split], "utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"header is not JSON: {exc}") from exc
    tensors = header.get(side) if isinstance(header, dict) else None
    if not isinstance(tensors, list):
        raise DecodeError(f"body has no {side} list")
    binary, offset, decoded = view[split:], 0, {}
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise DecodeError(f"one of the {side} has no name")
        name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise DecodeError(f"tensor {name!r}: binary_data_size {size!r} overruns the body")
            decoded[name] = _from_raw(str(datatype), binary[offset : offset + size], shape, name)
            offset += size
        elif "data" in tensor:
            decoded[name] = _from_json(str(datatype), tensor["data"], shape, name)
        else:
            raise DecodeError(f"tensor {name!r} has neither data nor binary_data_size")
    return decoded


def decode_grpc(body: bytes | memoryview, *, side: str = "outputs") -> dict[str, np.ndarray]:
    """Tensor name -> array of a serialized ModelInferResponse (`side` "outputs") or
    ModelInferRequest ("inputs"), from typed contents or raw contents."""
    from google.protobuf.message import DecodeError as ProtobufDecodeError
    from tritonclient.grpc import service_pb2  # off the hot path; protobuf import is heavy

    kind = service_pb2.ModelInferRequest if side == "inputs" else service_pb2.ModelInferResponse
    try:
        message = kind.FromString(bytes(body))
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a {kind.__name__}: {exc}") from exc
    if side == "inputs":
        tensors, raws = message.inputs, message.raw_input_contents
    else:
        tensors, raws = message.outputs, message.raw_output_contents
    if raws and len(raws) != len(tensors):
        raise DecodeError(f"{len(raws)} raw contents for {len(tensors)} {side}")
    decoded = {}
    for index, tensor in enumerate(tensors):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raws:
            decoded[name] = _from_raw(datatype, raws[index], shape, name)
            continue
        field_name = _CONTENTS_FIELD.get(datatype)
        if field_name is None:
            raise DecodeError(f"tensor {name!r}: {datatype!r} cannot travel in typed contents")
        values = list(getattr(tensor.contents, field_name))
        if datatype == "BYTES":
            decoded[name] = _shaped(_bytes_array(values), shape, name)
        else:
            decoded[name] = _shaped(np.asarray(values, dtype=_DTYPES[datatype]), shape, name)
    return decoded


def decode_json_batch(bodies: list[bytes], side: str) -> dict[str, np.ndarray] | None:
    """Tensor name -> one array of shape (len(bodies), *shape) for many pure-JSON HTTP bodies
    that carry the same tensors with the same datatype and shape (the common case: one
    client's traffic), parsed in one `json.loads` and converted in one `np.asarray` per tensor
    instead of one of each per body. None when the batch is not that regular (a BYTES
    tensor, binary data, a shape or datatype that differs, data that does not fill its shape,
    anything `decode_http` would refuse): decode those bodies one by one instead."""
    if not bodies:
        return None
    fast = _decode_alike(bodies, side)
    if fast is not None:
        return fast
    try:
        docs = json.loads("[" + ",".join(str(b, "utf-8") for b in bodies) + "]")
    except (ValueError, UnicodeDecodeError):
        return None
    layout: list[tuple[Any, Any, tuple[int, ...]]] | None = None
    columns: list[list[Any]] = []
    for doc in docs:
        tensors = doc.get(side) if isinstance(doc, dict) else None
        if not isinstance(tensors, list):
            return None
        mine = []
        for t in tensors:
            if not isinstance(t, dict) or "data" not in t or t.get("parameters"):
                return None
            shape = t.get("shape")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
            ):
                return None
            mine.append((t.get("name"), t.get("datatype"), tuple(shape)))
        if layout is None:
            layout = mine
            columns = [[] for _ in mine]
        elif mine != layout:
            return None
        for column, t in zip(columns, tensors, strict=True):
            column.append(t["data"])
    assert layout is not None
    out: dict[str, np.ndarray] = {}
    for (name, datatype, shape), column in zip(layout, columns, strict=True):
        dtype = np.dtype(np.float32) if datatype == "BF16" else _DTYPES.get(str(datatype))
        if not isinstance(name, str) or dtype is None:
            return None  # BYTES, or not a datatype: the one-by-one path says which
        try:
            array = np.asarray(column, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            return None  # ragged or not numbers
        if array.size != len(bodies) * math.prod(shape):
            return None
        out[name] = array.reshape((len(bodies), *shape))
    return out


# `"data": [ ... ]` holding no nested list: the numbers of one tensor of a KServe JSON body
_FLAT_DATA = re.compile(rb'"data"\s*:\s*\[([^\[\]]*)\]')
# how the numbers of each datatype are read: exactly (integers) or as float64 first, as
# json.loads does, then cast (no double rounding that the general path would not do too)
_PARSED_AS = {"UINT64": np.dtype(np.uint64), "INT64": np.dtype(np.int64)}


def _decode_alike(bodies: list[bytes], side: str) -> dict[str, np.ndarray] | None:
    """``decode_json_batch``'s fast path, for bodies that are the same text but for the numbers
    in their flat ``data`` arrays (one client's traffic through one gateway): that is checked
    by comparing what is left once the arrays are cut out, the first body alone is parsed as
    JSON for the names, datatypes and shapes, and each tensor's numbers of every body are read
    in one C call. None when the bodies are not that alike (ids that differ, nested arrays,
    BOOL, binary data, numbers that do not fill a shape ...): the general path decides."""
    parts = [_FLAT_DATA.split(bytes(b)) for b in bodies]
    skeleton = parts[0][0::2]
    if any(p[0::2] != skeleton for p in parts):
        return None
    try:
        doc = json.loads(parts[0][0] + b"".join(b'"data":[]' + t for t in skeleton[1:]))
    except (ValueError, UnicodeDecodeError):
        return None
    tensors = doc.get(side) if isinstance(doc, dict) else None
    if not isinstance(tensors, list) or len(tensors) != len(skeleton) - 1:
        return None  # a "data" array elsewhere, or one missing
    out: dict[str, np.ndarray] = {}
    n = len(bodies)
    for index, t in enumerate(tensors):
        if not isinstance(t, dict) or t.get("parameters") or t.get("data") != []:
            return None
        name, datatype, shape = t.get("name"), str(t.get("datatype")), t.get("shape")
        dtype = np.dtype(np.float32) if datatype == "BF16" else _DTYPES.get(datatype)
        if not isinstance(name, str) or dtype is None or datatype == "BOOL":
            return None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            return None
        per_body = math.prod(shape)
        if per_body == 0:
            out[name] = np.empty((n, *shape), dtype=dtype)
            continue
        text = b",".join(p[2 * index + 1] for p in parts).decode("ascii", "replace")
        parsed_as = _PARSED_AS.get(datatype, np.dtype(np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # text numpy could not read to its end
            try:
                values = np.fromstring(text, dtype=parsed_as, sep=",")
            except (ValueError, DeprecationWarning):
                return None
        if values.size != n * per_body:
            return None
        if dtype.kind in "iu" and parsed_as.kind == "f" and not np.all(values == np.trunc(values)):
            return None  # fractions in an integer tensor: the general path says what it does
        out[name] = values.astype(dtype, copy=False).reshape((n, *shape))
    return out
