"""ONNX external data: where a model's weights may live, and reading them into the model.

An ONNX tensor may keep its bytes in another file, named by a ``location`` relative to the
model's folder. Whoever loads the model (onnx, onnxruntime in Triton) opens that file, so a
crafted location reads any file the server can see (``../../etc/shadow``, an absolute path, a
symbolic link) or, once deployed, the files Lastmile writes next to the model in Triton's
version folder (``model.py``, ``config.pbtxt``, ``model.onnx`` itself). Every location is
checked on the parsed protobuf before anything is opened (DESIGN §5), and read component by
component without following a link. The import embeds the data into the stored model, so a
stored version is one file and a deploy copies exactly that.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import TensorProto

from manager.errors import InvalidModelFile

log = logging.getLogger(__name__)


def _refuse(path: Path, problem: str, hint: str | None = None) -> InvalidModelFile:
    return InvalidModelFile(f"{path.name}: {problem}", hint=hint)


# Element size in bits, for the byte size of a tensor (packed sub-byte types round up).
# STRING is absent: its size is not known from its shape.
_BITS_BY_NAME = {
    **dict.fromkeys(("UINT2", "INT2"), 2),
    **dict.fromkeys(("UINT4", "INT4", "FLOAT4E2M1"), 4),
    **dict.fromkeys(("FLOAT6E2M3", "FLOAT6E3M2"), 6),
    **dict.fromkeys(("UINT8", "INT8", "BOOL", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ"), 8),
    **dict.fromkeys(("FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"), 8),
    **dict.fromkeys(("UINT16", "INT16", "FLOAT16", "BFLOAT16"), 16),
    **dict.fromkeys(("FLOAT", "INT32", "UINT32"), 32),
    **dict.fromkeys(("DOUBLE", "INT64", "UINT64", "COMPLEX64"), 64),
    "COMPLEX128": 128,
}
ELEMENT_BITS: dict[int, int] = {
    TensorProto.DataType.Value(name): bits
    for name, bits in _BITS_BY_NAME.items()
    if name in TensorProto.DataType.keys()  # noqa: SIM118 - an enum wrapper, not a dict
}


def _all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor that may carry data: initializers and constants, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


# Files Lastmile writes into a Triton version folder, next to the model: external data named
# like one of them would make onnxruntime read our generated code or config as weights.
GENERATED_NAMES = frozenset({"model.onnx", "model.py", "config.pbtxt", "model.plan"})
# ONNX's protobuf cap: a model stored as one file (external data embedded) must fit in it.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class _External:
    """One tensor whose bytes live in a file next to the model, checked but not yet read."""

    tensor: TensorProto
    location: str
    parts: tuple[str, ...]
    offset: int
    length: int


def _location_parts(path: Path, where: str, location: str) -> tuple[str, ...]:
    """The location's path components, refused unless it names a file inside the folder."""
    to_file = "external data must be a file next to the model, e.g. 'model.onnx.data'"
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise _refuse(path, f"{where}, an absolute path", hint=to_file)
    if ".." in posix.parts or ".." in windows.parts:
        raise _refuse(path, f"{where}, which leaves the model's folder", hint="remove '..' from it")
    if "\\" in location or "\x00" in location:
        raise _refuse(path, f"{where}, which holds a backslash or NUL", hint="separate with '/'")
    parts = posix.parts
    if not parts:
        raise _refuse(path, f"{where}, which names the folder, not a file", hint=to_file)
    name = parts[-1].lower()
    if name == path.name.lower():
        raise _refuse(path, f"{where}, the model file itself", hint=to_file)
    if name in GENERATED_NAMES:
        raise _refuse(
            path,
            f"{where}, a name Lastmile writes into Triton's version folder "
            f"({', '.join(sorted(GENERATED_NAMES))})",
            hint="rename the data file when exporting, e.g. 'model.onnx.data'",
        )
    return parts


def _size_of_file_inside(path: Path, where: str, parts: tuple[str, ...]) -> int:
    """Walk ``parts`` from the model's folder without following a symbolic link anywhere."""
    current = path.parent
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError as exc:
            raise _refuse(
                path,
                f"{where}, which does not exist next to the model",
                hint="an upload is one file: save the model with its weights inside "
                "(onnx.save(model, path, save_as_external_data=False)), or import it from a "
                "folder that holds the data file",
            ) from exc
        except OSError as exc:
            raise _refuse(path, f"{where}, which cannot be read ({exc.strerror})") from exc
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(
                path,
                f"{where}, a symbolic link (it could lead outside the model's folder)",
                hint="copy the data file next to the model instead of linking it",
            )
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            raise _refuse(path, f"{where}, whose folder {part!r} is not a folder")
        if last and not stat.S_ISREG(info.st_mode):
            raise _refuse(path, f"{where}, which is not a regular file")
    return info.st_size


def _span(path: Path, where: str, entries: dict[str, str], size: int) -> tuple[int, int]:
    """(offset, length) of the tensor's bytes, refused unless they lie inside the file."""
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else size - offset
    except ValueError as exc:
        raise _refuse(path, f"{where}, with an offset or length that is not a number") from exc
    if offset < 0 or length < 0 or offset + length > size:
        raise _refuse(
            path,
            f"{where}, at offset {offset} length {length}, past the end of that {size}-byte file",
            hint="the data file is truncated or belongs to another export; save both again",
        )
    return offset, length


def _expected_bytes(tensor: TensorProto) -> int | None:
    bits = ELEMENT_BITS.get(tensor.data_type)
    if bits is None:
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def _external_tensors(path: Path, model: onnx.ModelProto, *, max_bytes: int) -> list[_External]:
    found: list[_External] = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if not location:
            raise _refuse(path, f"tensor {tensor.name!r} has external data without a location")
        where = f"tensor {tensor.name!r} stores its data in {location!r}"
        parts = _location_parts(path, where, location)
        size = _size_of_file_inside(path, where, parts)
        if size > max_bytes:
            raise _refuse(path, f"{where}, which is over the limit of {max_bytes} bytes")
        offset, length = _span(path, where, entries, size)
        expected = _expected_bytes(tensor)
        if expected is None:
            kind = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type else "unset"
            raise _refuse(path, f"{where}, but {kind} tensors cannot be stored as external data")
        if length != expected:
            raise _refuse(
                path,
                f"{where}: {length} bytes, but its shape {list(tensor.dims)} needs {expected}",
                hint="the data file belongs to another export; save the model and data again",
            )
        found.append(_External(tensor, location, parts, offset, length))
    return found


def check_external_data(path: Path, model: onnx.ModelProto, *, max_bytes: int) -> list[str]:
    """Refuse external-data locations that are not plain files inside the model's folder;
    return the locations used.

    Checked on the parsed protobuf, before anything reads the data, so a crafted location
    (``../../etc/passwd``, an absolute path, a symbolic link, ``model.py`` or
    ``config.pbtxt`` of the Triton version folder the model is deployed into) is never
    opened. Call it wherever the file is used: at import on the uploaded folder, and before a
    deploy on the stored file (``converters.onnx_limits.check_deployable`` does).
    """
    locations: list[str] = []
    for external in _external_tensors(path, model, max_bytes=max_bytes):
        if external.location not in locations:
            locations.append(external.location)
    return locations


def _open_inside(folder: Path, parts: tuple[str, ...]) -> int:
    """Open ``folder/parts`` component by component, never following a link (no race with a
    link swapped in after the check)."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], os.O_RDONLY | nofollow, dir_fd=fd)
    finally:
        os.close(fd)


def _read_span(fd: int, offset: int, length: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, min(length, 64 * 1024 * 1024), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def embed_external_data(path: Path, model: onnx.ModelProto, *, max_bytes: int) -> list[str]:
    """Read every external tensor of ``model`` (loaded from ``path``) into the model; return
    the locations read, sorted (empty: nothing to embed, the model is untouched).

    Each location is checked first (``check_external_data``), then opened without following
    links; the result must fit ONNX's 2 GiB protobuf limit. On error the model is left
    partly embedded: discard it.
    """
    externals = _external_tensors(path, model, max_bytes=max_bytes)
    if not externals:
        return []
    total = model.ByteSize() + sum(e.length for e in externals)
    if total > PROTOBUF_LIMIT:
        raise _refuse(
            path,
            f"with its external data it is {total} bytes, over ONNX's 2 GiB limit for one file",
            hint="Lastmile stores a model version as one file; models this large are not "
            "supported yet (quantize it, or split it into pipeline steps)",
        )
    handles: dict[str, int] = {}
    try:
        for external in externals:
            fd = handles.get(external.location)
            if fd is None:
                where = f"tensor {external.tensor.name!r} stores its data in {external.location!r}"
                try:
                    fd = _open_inside(path.parent, external.parts)
                except OSError as exc:
                    raise _refuse(
                        path, f"{where}, which cannot be opened safely ({exc.strerror})"
                    ) from exc
                handles[external.location] = fd
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise _refuse(path, f"{where}, which is not a regular file")
            data = _read_span(fd, external.offset, external.length)
            if len(data) != external.length:
                raise _refuse(
                    path,
                    f"external data {external.location!r} changed while it was read",
                    hint="import it again once written",
                )
            tensor = external.tensor
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            tensor.raw_data = data
    finally:
        for fd in handles.values():
            os.close(fd)
    log.info("%s: embedded external data from %s", path.name, sorted(handles))
    return sorted(handles)
