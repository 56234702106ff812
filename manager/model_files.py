"""Model and sample files as users have them: shared by the CLI (before it uploads) and the
API (what it receives). Pure helpers, no printing, no network:

- ``infer_framework``: the converter framework for a model file, from its extension and, where
  one extension covers several formats (``.pt``, ``.model``), from the file's first bytes or zip
  member names, with the same rules the converters apply (``converters.torch_onnx.archive_kind``).
- ``load_sample``: real rows for the parity check from ``.npy``, ``.npz``, ``.csv`` or
  ``.parquet``, in the shapes ``converters.api.convert(sample_input=...)`` takes (a bare array,
  named later after the model's one input, or a dict of input name -> array).
- ``sample_to_npz_bytes`` / ``sample_from_npz_bytes``: the upload format of a sample. The server
  side reads an untrusted archive, so it never unpickles, and it refuses an archive whose
  declared sizes are over the limit before decompressing or allocating anything.

Every failure is an ``InvalidInput`` that says what was wrong, where, and how to fix it.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np
from numpy.typing import DTypeLike

from manager.errors import (
    InvalidInput,
    InvalidModelFile,
    PayloadTooLarge,
)
from manager.names import check_tensor_name

Sample = dict[str, np.ndarray] | np.ndarray

# --- model files -> framework ------------------------------------------------------------------

BY_CONTENT = "by content"
KNOWN_EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {
        ".onnx": "onnx",
        ".pt": f"torchscript or pytorch ({BY_CONTENT})",
        ".pth": f"torchscript or pytorch ({BY_CONTENT})",
        ".pt2": "pytorch",
        ".joblib": "sklearn",
        ".pkl": "sklearn",
        ".pickle": "sklearn",
        ".json": "xgboost",
        ".ubj": "xgboost",
        ".bst": f"xgboost or lightgbm ({BY_CONTENT})",
        ".model": f"xgboost or lightgbm ({BY_CONTENT})",
        ".txt": "lightgbm",
        ".keras": "keras",
        ".h5": "keras",
        ".hdf5": "keras",
    }
)
"""Extension -> the framework ``infer_framework`` picks (for the help text)."""

_BY_SUFFIX = {k: v for k, v in KNOWN_EXTENSIONS.items() if BY_CONTENT not in v}
_PICKLE_SUFFIXES = frozenset({".joblib", ".pkl", ".pickle"})


def known_extensions_text() -> str:
    """``.onnx onnx, .pt torchscript or pytorch (by content), ...`` for help and errors."""
    return ", ".join(f"{ext} {framework}" for ext, framework in KNOWN_EXTENSIONS.items())


def _require_file(path: Path, *, what: str) -> None:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise InvalidInput(
            f"{what} {path}: file does not exist", hint="check the path and the current directory"
        ) from exc
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: cannot be read ({exc.strerror})") from exc
    if not path.is_file():
        raise InvalidInput(
            f"{what} {path}: is not a regular file", hint="pass a file, not a folder"
        )
    if info.st_size == 0:
        raise InvalidInput(f"{what} {path}: is empty", hint="the file may not have been written")


def _torch_framework(path: Path) -> str:
    # The converter's own test, so the CLI and the server never disagree about a file.
    from converters.torch_onnx import archive_kind

    _require_file(path, what="model file")
    try:
        kind = archive_kind(path)
    except OSError as exc:
        raise InvalidInput(f"model file {path}: cannot be read ({exc.strerror})") from exc
    if kind == "torchscript":
        return "torchscript"
    if kind in ("pickle", "pt2"):
        return "pytorch"
    raise InvalidModelFile(
        f"model file {path}: is not a TorchScript archive, a torch.export archive or a "
        "torch.save file (truncated, or another format)",
        hint="save it with torch.jit.save, torch.export.save or torch.save, or pass --framework",
    )


def _booster_framework(path: Path) -> str:
    # LightGBM's text format starts with "tree"; XGBoost writes JSON or UBJSON under any name.
    _require_file(path, what="model file")
    with open(path, "rb") as handle:
        return "lightgbm" if handle.read(4) == b"tree" else "xgboost"


def infer_framework(path: Path) -> str:
    """The ``converters.api.FRAMEWORKS`` name for a model file (``--framework`` overrides it).

    ``.pt``/``.pth`` are told apart by their zip members: a TorchScript archive
    (``torch.jit.save``, members ``*/code/...``) is ``torchscript``; a ``torch.save`` pickle or a
    ``torch.export.save`` archive is ``pytorch`` (both need ``--trust-pickle``). ``.model`` and
    ``.bst`` are LightGBM when the file starts with ``tree`` (its text format), else XGBoost.
    Raises ``InvalidInput`` for an unknown extension, ``InvalidModelFile`` for a ``.pt`` that
    no torch loader can read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return _torch_framework(path)
    if suffix in (".bst", ".model"):
        return _booster_framework(path)
    framework = _BY_SUFFIX.get(suffix)
    if framework is None:
        raise InvalidInput(
            f"{path.name}: cannot tell the framework from the extension "
            f"{suffix or '(none)'}; known extensions: {known_extensions_text()}",
            hint="pass --framework NAME",
        )
    return framework


def needs_trust_pickle(path: Path, framework: str) -> bool:
    """Whether converting this file unpickles it (the server then needs ``--trust-pickle``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return True
    if framework == "keras":
        return suffix in (".h5", ".hdf5")
    if framework in ("pytorch", "torchscript") and path.is_file():
        from converters.torch_onnx import archive_kind

        return archive_kind(path) in ("pickle", "pt2")
    return False


# --- samples -----------------------------------------------------------------------------------

SAMPLE_EXTENSIONS = (".npy", ".npz", ".csv", ".parquet")
_ARRAY_KINDS = "biufSU"  # bool, integers, floats, fixed-width strings; never objects
_SAMPLE_HINT = "save the rows with np.save / np.savez, or as numeric .csv / .parquet"


def _check_array(array: np.ndarray, *, where: str) -> np.ndarray:
    if array.dtype.hasobject or array.dtype.kind not in _ARRAY_KINDS:
        raise InvalidInput(
            f"{where}: has dtype {array.dtype}, which cannot be sent to a model",
            hint="use numeric arrays (e.g. x.astype(np.float32)); object arrays are refused "
            "because loading them unpickles",
        )
    if array.ndim == 0 or array.shape[0] == 0:
        raise InvalidInput(
            f"{where}: has shape {array.shape}",
            hint="give a batch: the first dimension is the rows and must not be empty",
        )
    return array


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays, pickles, bad headers
        pickled = "pickle" in str(exc).lower()
        raise InvalidInput(
            f"sample {path}: "
            + ("holds Python objects (a pickle), which are not loaded" if pickled else str(exc)),
            hint=_SAMPLE_HINT,
        ) from exc
    except (OSError, EOFError) as exc:
        raise InvalidInput(f"sample {path}: is not a readable .npy file ({exc})") from exc
    if not isinstance(array, np.ndarray):  # an .npz under an .npy name
        array.close()
        raise InvalidInput(f"sample {path}: is an .npz archive", hint="rename it to .npz")
    return _check_array(array, where=f"sample {path}")


def _read_header(handle: IO[bytes], *, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)  # type: ignore[no-any-return]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)  # type: ignore[no-any-return]
    raise InvalidInput(f"{where}: .npy format version {version} is not supported")


def _read_member(handle: IO[bytes], *, where: str, room: int | None) -> np.ndarray:
    """One ``.npy`` member, its declared size checked against ``room`` before it is read."""
    shape, fortran, dtype = _read_header(handle, where=where)
    if dtype.hasobject or dtype.kind not in _ARRAY_KINDS:
        raise InvalidInput(
            f"{where}: has dtype {dtype}; object and structured arrays are refused "
            "(loading them unpickles)",
            hint="send numeric arrays (e.g. x.astype(np.float32))",
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if room is not None and nbytes > room:
        raise PayloadTooLarge(
            f"{where}: declares {nbytes} bytes of data, over the sample limit",
            hint="send fewer rows: a few hundred are enough for the parity check",
        )
    data = handle.read(nbytes + 1)
    if len(data) != nbytes:
        raise InvalidInput(f"{where}: holds {len(data)} bytes of data, its header says {nbytes}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return _check_array(array.copy(), where=where)


def _read_npz(
    source: Path | IO[bytes], *, where: str, max_bytes: int | None, max_arrays: int
) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            if not members:
                raise InvalidInput(f"{where}: the .npz archive holds no arrays", hint=_SAMPLE_HINT)
            if len(members) > max_arrays:
                raise PayloadTooLarge(f"{where}: holds {len(members)} arrays, over {max_arrays}")
            if max_bytes is not None and sum(m.file_size for m in members) > max_bytes:
                raise PayloadTooLarge(
                    f"{where}: decodes to more than the sample limit of {max_bytes} bytes",
                    hint="send fewer rows: a few hundred are enough for the parity check",
                )
            arrays: dict[str, np.ndarray] = {}
            used = 0
            for member in members:
                if member.is_dir() or not member.filename.endswith(".npy"):
                    raise InvalidInput(
                        f"{where}: member {member.filename!r} is not a .npy array",
                        hint="write the archive with np.savez",
                    )
                name = member.filename[: -len(".npy")]
                check_tensor_name(name, where=where)
                if name in arrays:
                    raise InvalidInput(f"{where}: holds the array {name!r} twice")
                room = None if max_bytes is None else max_bytes - used
                with archive.open(member) as handle:
                    array = _read_member(handle, where=f"{where}: array {name!r}", room=room)
                used += array.nbytes
                arrays[name] = array
            return arrays
    except InvalidInput:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError) as exc:
        raise InvalidInput(
            f"{where}: is not a readable .npz archive ({exc})", hint=_SAMPLE_HINT
        ) from exc


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _tabular_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        target = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidInput(f"unknown dtype {dtype!r}", hint="e.g. float32, int64") from exc
    if target.kind not in "iuf":
        raise InvalidInput(
            f"a .csv / .parquet sample is read as numbers, not {target}",
            hint="e.g. float32, float64, int64",
        )
    return target


def _cast(array: np.ndarray, target: np.dtype, *, where: str) -> np.ndarray:
    if target.kind in "iu":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise InvalidInput(f"{where}: has values that are not integers, the dtype is {target}")
        limits = np.iinfo(target)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise InvalidInput(f"{where}: has values out of the range of {target}")
        return array.astype(target)
    with np.errstate(over="ignore"):
        cast = array.astype(target)
    if np.any(np.isinf(cast) & np.isfinite(array)):
        raise InvalidInput(
            f"{where}: has values out of the range of {target}", hint="pass a wider dtype"
        )
    return cast


def _load_csv(path: Path, target: np.dtype) -> np.ndarray:
    where = f"sample {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where}: is not UTF-8 text", hint="save the CSV as UTF-8") from exc
    header: list[str] | None = None
    rows: list[list[Any]] = []
    first: tuple[int, int] | None = None  # (line, columns) of the header or first row
    parse: Any = int if target.kind in "iu" else float
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            line = reader.line_num
            if header is None and not rows and all(_number(c) is None for c in row):
                header = [c.strip() for c in row]
                first = (line, len(header))
                continue
            if first is None:
                first = (line, len(row))
            if len(row) != first[1]:
                raise InvalidInput(
                    f"{where}: row {line} has {len(row)} columns, row {first[0]} has {first[1]}",
                    hint="every row needs the same number of comma-separated values",
                )
            values = []
            for column, cell in enumerate(row, start=1):
                try:
                    values.append(parse(cell.strip()))
                except ValueError:
                    name = f" ({header[column - 1]!r})" if header and header[column - 1] else ""
                    kind = "an integer" if parse is int else "a number"
                    raise InvalidInput(
                        f"{where}: row {line}, column {column}{name}: {cell!r} is not {kind}",
                        hint="the sample must be numbers only (encode categories first); "
                        "a header row must have no numbers in it",
                    ) from None
            rows.append(values)
    except csv.Error as exc:
        raise InvalidInput(f"{where}: line {reader.line_num}: {exc}") from exc
    if not rows:
        found = "a header but no data rows" if header else "no rows"
        raise InvalidInput(f"{where}: has {found}", hint="add at least one row of numbers")
    try:
        array = np.array(rows, dtype=np.int64 if parse is int else np.float64)
    except OverflowError as exc:
        raise InvalidInput(f"{where}: has integers out of the range of int64") from exc
    return _cast(array, target, where=where)


def _load_parquet(path: Path, target: np.dtype) -> np.ndarray:
    where = f"sample {path}"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidInput(
            f"{where}: reading Parquet needs pyarrow, which is not installed",
            hint="pip install pyarrow, or save the rows as .npy / .npz / .csv",
        ) from exc
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{where}: cannot be read as Parquet ({exc})") from exc
    if table.num_columns == 0 or table.num_rows == 0:
        raise InvalidInput(f"{where}: has no rows", hint="add at least one row of numbers")
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise InvalidInput(
                f"{where}: column {name!r} is {kind}, not numeric",
                hint="keep numeric columns only (drop or encode the others first)",
            )
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InvalidInput(
                f"{where}: column {name!r} is empty (null) in row {row + 1}",
                hint="fill or drop missing values first",
            )
        columns.append(column.to_numpy())
    return _cast(np.column_stack(columns), target, where=where)


def _fit_inputs(sample: Sample, inputs: Sequence[str] | None, *, where: str) -> Sample:
    """Check a sample against the declared input names; a dict comes back in their order."""
    if isinstance(sample, dict):
        for name in sample:
            check_tensor_name(name, where=where)
    if not inputs:
        return sample
    declared = list(inputs)
    if isinstance(sample, np.ndarray):
        if len(declared) != 1:
            raise InvalidInput(
                f"{where}: is one array, the model has {len(declared)} inputs {declared}",
                hint="save one array per input with np.savez(path, **{name: array})",
            )
        return sample
    missing = [n for n in declared if n not in sample]
    extra = [n for n in sample if n not in declared]
    if missing or extra:
        raise InvalidInput(
            f"{where}: holds the arrays {list(sample)}, the inputs are {declared}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not inputs {extra}" if extra else ""),
            hint="name the arrays after the inputs: np.savez(path, **{name: array})",
        )
    return {name: sample[name] for name in declared}


def load_sample(
    path: Path, *, inputs: list[str] | None = None, dtype: DTypeLike = np.float32
) -> dict[str, np.ndarray] | np.ndarray:
    """Real rows for the parity check, as ``convert(sample_input=...)`` takes them.

    ``.npy`` gives a bare array and ``.npz`` a dict of named arrays (neither is unpickled);
    ``.csv`` and ``.parquet`` give one 2-D array (rows x columns, ``dtype``, float32 by
    default; a CSV header row, one with no numbers in it, is skipped). With ``inputs`` (the
    declared input names) the sample must fit them: one bare array for one input, or a dict
    with exactly those names, returned in their order.
    """
    path = Path(path)
    _require_file(path, what="sample")
    suffix = path.suffix.lower()
    sample: Sample
    if suffix == ".npy":
        sample = _load_npy(path)
    elif suffix == ".npz":
        sample = _read_npz(path, where=f"sample {path}", max_bytes=None, max_arrays=1 << 16)
    elif suffix == ".csv":
        sample = _load_csv(path, _tabular_dtype(dtype))
    elif suffix in (".parquet", ".pq"):
        sample = _load_parquet(path, _tabular_dtype(dtype))
    else:
        raise InvalidInput(
            f"sample {path}: unknown extension {suffix or '(none)'}; "
            f"known: {', '.join(SAMPLE_EXTENSIONS)}",
            hint=_SAMPLE_HINT,
        )
    return _fit_inputs(sample, inputs, where=f"sample {path}")


BARE_KEY = "sample"
"""The archive key of a bare array (one the model's single input will be named for)."""


def sample_to_npz_bytes(sample: Mapping[str, np.ndarray] | np.ndarray) -> bytes:
    """``load_sample``'s result as ``.npz`` bytes (``np.savez``'s format, never pickled)."""
    if isinstance(sample, np.ndarray):
        arrays = {BARE_KEY: sample}
    elif isinstance(sample, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
    else:
        raise InvalidInput(
            f"a sample is a numpy array or a dict of arrays, not {type(sample).__name__}"
        )
    if not arrays:
        raise InvalidInput("the sample holds no arrays")
    buffer = io.BytesIO()
    # np.savez's own layout, written here so that no key can clash with np.savez's arguments
    # and nothing is pickled.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            check_tensor_name(name, where="the sample")
            _check_array(array, where=f"sample array {name!r}")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def sample_from_npz_bytes(
    data: bytes, *, max_bytes: int, max_arrays: int = 256
) -> dict[str, np.ndarray] | np.ndarray:
    """The server's side of ``sample_to_npz_bytes``: an untrusted upload, read safely.

    Never unpickles; refuses object and structured dtypes, more than ``max_arrays`` arrays and
    more than ``max_bytes`` of decoded data (checked on the declared sizes before anything is
    decompressed or allocated: ``PayloadTooLarge``), and anything that is not an ``.npz``
    archive. A lone array under ``BARE_KEY`` comes back bare.
    """
    if max_bytes <= 0:
        raise InvalidInput("max_bytes must be positive")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"the sample is {type(data).__name__}, not bytes")
    buffer = io.BytesIO(bytes(data))
    if not zipfile.is_zipfile(buffer):
        raise InvalidInput(
            "the sample is not an .npz archive",
            hint="send the bytes np.savez writes (lastmile does this from .npy/.npz/.csv files)",
        )
    buffer.seek(0)
    arrays = _read_npz(buffer, where="the sample", max_bytes=max_bytes, max_arrays=max_arrays)
    if list(arrays) == [BARE_KEY]:
        return arrays[BARE_KEY]
    return arrays
