"""The CLI's pure helpers: framework from a model file, samples from a file, exit codes."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
import typer

from converters.api import FRAMEWORKS
from converters.common import ConversionError, MissingDependency, ParityError, normalize_sample
from manager import errors
from manager.cli.exits import EXIT_CODES, EXIT_USAGE, exit_code
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile, PayloadTooLarge
from manager.model_files import (
    KNOWN_EXTENSIONS,
    infer_framework,
    known_extensions_text,
    load_sample,
    needs_trust_pickle,
    sample_from_npz_bytes,
    sample_to_npz_bytes,
)

# --- infer_framework ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "framework"),
    [
        ("m.onnx", "onnx"),
        ("M.ONNX", "onnx"),
        ("m.pt2", "pytorch"),
        ("m.joblib", "sklearn"),
        ("m.pkl", "sklearn"),
        ("m.pickle", "sklearn"),
        ("m.json", "xgboost"),
        ("m.ubj", "xgboost"),
        ("m.txt", "lightgbm"),
        ("m.keras", "keras"),
        ("m.h5", "keras"),
        ("m.hdf5", "keras"),
    ],
)
def test_framework_follows_the_extension(tmp_path: Path, name: str, framework: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    assert infer_framework(path) == framework
    assert framework in FRAMEWORKS


def test_every_known_extension_names_converter_frameworks() -> None:
    for ext, label in KNOWN_EXTENSIONS.items():
        names = label.split(" (")[0].split(" or ")
        assert names and all(n in FRAMEWORKS for n in names), ext
    assert ".onnx onnx" in known_extensions_text()


@pytest.mark.parametrize("name", ["model.bin", "model", "model.safetensors"])
def test_unknown_extension_names_the_file_and_the_known_ones(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(InvalidInput) as info:
        infer_framework(path)
    assert name in info.value.message
    assert ".onnx" in info.value.message and ".pt2" in info.value.message
    assert info.value.hint == "pass --framework NAME"


def test_missing_or_empty_torch_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        infer_framework(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InvalidInput, match="is empty"):
        infer_framework(tmp_path / "empty.pt")


def test_a_pt_file_torch_cannot_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InvalidModelFile, match="TorchScript"):
        infer_framework(path)


try:  # torch.save pickles a module's class by reference: it must live at module level
    import torch
except ImportError:  # pragma: no cover - torch is an optional extra
    torch = None  # type: ignore[assignment]
else:

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if torch is None:
        pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch")
    model = Tiny().eval()
    files = {
        "script": folder / "scripted.pt",
        "pickled": folder / "pickled.pt",
        "legacy": folder / "legacy.pth",
        "state_dict": folder / "weights.pth",
        "exported": folder / "exported.pt2",
        "exported_pt": folder / "exported.pt",
    }
    torch.jit.save(torch.jit.script(model), str(files["script"]))
    torch.save(model, files["pickled"])
    torch.save(model, files["legacy"], _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), files["state_dict"])
    program = torch.export.export(model, (torch.randn(2, 3),))
    torch.export.save(program, str(files["exported"]))
    torch.export.save(program, str(files["exported_pt"]))
    return files


def test_torchscript_archive_and_pickled_module_are_told_apart(
    torch_files: dict[str, Path],
) -> None:
    assert infer_framework(torch_files["script"]) == "torchscript"
    assert infer_framework(torch_files["pickled"]) == "pytorch"
    assert infer_framework(torch_files["legacy"]) == "pytorch"  # pre-1.6 non-zip torch.save
    assert infer_framework(torch_files["state_dict"]) == "pytorch"  # the converter explains
    assert infer_framework(torch_files["exported"]) == "pytorch"
    assert infer_framework(torch_files["exported_pt"]) == "pytorch"


def test_torch_files_that_unpickle_need_trust(torch_files: dict[str, Path]) -> None:
    assert not needs_trust_pickle(torch_files["script"], "torchscript")
    assert needs_trust_pickle(torch_files["pickled"], "pytorch")
    assert needs_trust_pickle(torch_files["exported"], "pytorch")


def test_pickles_and_hdf5_need_trust_native_formats_do_not(tmp_path: Path) -> None:
    assert needs_trust_pickle(tmp_path / "m.joblib", "sklearn")
    assert needs_trust_pickle(tmp_path / "m.pkl", "xgboost")
    assert needs_trust_pickle(tmp_path / "m.h5", "keras")
    assert not needs_trust_pickle(tmp_path / "m.keras", "keras")
    assert not needs_trust_pickle(tmp_path / "m.json", "xgboost")
    assert not needs_trust_pickle(tmp_path / "m.onnx", "onnx")


def test_booster_model_files_are_told_apart_by_content(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = (x[:, 0] > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=y), 2)
    for ext in ("json", "ubj"):
        booster.save_model(str(tmp_path / f"x.{ext}"))
        assert infer_framework(tmp_path / f"x.{ext}") == "xgboost"
    with pytest.warns(UserWarning):  # "Saving model in the UBJSON format as default"
        booster.save_model(str(tmp_path / "x.model"))
    assert infer_framework(tmp_path / "x.model") == "xgboost"
    light = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 1},
        lgb.Dataset(x, label=y),
        num_boost_round=2,
    )
    light.save_model(str(tmp_path / "l.txt"))
    light.save_model(str(tmp_path / "l.model"))
    assert infer_framework(tmp_path / "l.txt") == "lightgbm"
    assert infer_framework(tmp_path / "l.model") == "lightgbm"
    (tmp_path / "l.bst").write_bytes((tmp_path / "l.model").read_bytes())
    assert infer_framework(tmp_path / "l.bst") == "lightgbm"


# --- load_sample: csv --------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_without_header_is_float32_rows(tmp_path: Path) -> None:
    sample = load_sample(_write(tmp_path / "s.csv", "1,2,3\n4,5.5,-6e-1\n\n"))
    assert isinstance(sample, np.ndarray)
    assert sample.dtype == np.float32 and sample.shape == (2, 3)
    np.testing.assert_array_equal(sample, np.array([[1, 2, 3], [4, 5.5, -0.6]], np.float32))


def test_csv_header_is_detected_and_skipped(tmp_path: Path) -> None:
    text = "\ufeffage, income ,score\n30,1000,0.5\n40,2000,0.25\n"
    sample = load_sample(_write(tmp_path / "s.csv", text))
    assert isinstance(sample, np.ndarray) and sample.shape == (2, 3)
    assert sample[1, 1] == 2000


def test_csv_single_column_is_n_by_1(tmp_path: Path) -> None:
    sample = load_sample(_write(tmp_path / "s.csv", "x\n1\n2\n3\n"))
    assert isinstance(sample, np.ndarray) and sample.shape == (3, 1)


def test_csv_dtype_can_be_chosen(tmp_path: Path) -> None:
    sample = load_sample(_write(tmp_path / "s.csv", "1,2\n3,4\n"), dtype="int64")
    assert isinstance(sample, np.ndarray) and sample.dtype == np.int64
    with pytest.raises(InvalidInput, match=r"row 1, column 2: '2\.5' is not an integer"):
        load_sample(_write(tmp_path / "f.csv", "1,2.5\n"), dtype=np.int64)
    with pytest.raises(InvalidInput, match="out of the range of float16"):
        load_sample(_write(tmp_path / "big.csv", "1e10\n"), dtype=np.float16)


def test_csv_bad_cell_names_its_row_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", "age,income\n30,1000\n40,n/a\n")
    with pytest.raises(InvalidInput) as info:
        load_sample(path)
    message = info.value.message
    assert "bad.csv" in message and "row 3, column 2 ('income')" in message and "'n/a'" in message
    assert info.value.hint


def test_csv_mixed_first_row_is_a_bad_cell_not_a_header(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"row 1, column 2: 'b' is not a number"):
        load_sample(_write(tmp_path / "s.csv", "1,b\n2,3\n"))


def test_csv_ragged_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="row 3 has 1 columns, row 1 has 2"):
        load_sample(_write(tmp_path / "s.csv", "a,b\n1,2\n3\n"))


@pytest.mark.parametrize(("text", "words"), [("", "is empty"), ("a,b\n", "no data rows")])
def test_csv_without_rows_is_refused(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        load_sample(_write(tmp_path / "s.csv", text))


def test_csv_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(b"\xff\xfe1\x002\x00")
    with pytest.raises(InvalidInput, match="UTF-8"):
        load_sample(path)


# --- load_sample: npy, npz, files --------------------------------------------------------------


def test_missing_sample_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist") as info:
        load_sample(tmp_path / "nope.npy")
    assert info.value.hint
    with pytest.raises(InvalidInput, match=r"unknown extension \.xlsx"):
        load_sample(_write(tmp_path / "s.xlsx", "1"))


def test_npy_round_trips_as_a_bare_array(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "s.npy", array)
    sample = load_sample(tmp_path / "s.npy")
    assert isinstance(sample, np.ndarray)
    back = sample_from_npz_bytes(sample_to_npz_bytes(sample), max_bytes=1 << 20)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype
    named = normalize_sample(back, None)
    assert named is not None and list(named) == ["input"]


def test_npz_round_trips_as_named_arrays(tmp_path: Path) -> None:
    arrays = {
        "ids": np.array([[1, 2], [3, 4]], dtype=np.int64),
        "mask": np.array([[True, False], [False, True]]),
        "x": np.asfortranarray(np.random.default_rng(0).standard_normal((2, 5))),
        "file": np.zeros((2, 1), np.float16),  # a key np.savez itself could not take
    }
    np.savez(tmp_path / "s.npz", **{k: v for k, v in arrays.items() if k != "file"})
    sample = load_sample(tmp_path / "s.npz")
    assert isinstance(sample, dict) and list(sample) == ["ids", "mask", "x"]
    back = sample_from_npz_bytes(sample_to_npz_bytes(arrays), max_bytes=1 << 20)
    assert isinstance(back, dict) and list(back) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
        assert back[name].dtype == array.dtype
    with np.load(io.BytesIO(sample_to_npz_bytes(arrays)), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(arrays)  # numpy reads what we write


def test_inputs_order_and_check_the_sample(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", b=np.ones((2, 1)), a=np.zeros((2, 1)))
    sample = load_sample(tmp_path / "s.npz", inputs=["a", "b"])
    assert isinstance(sample, dict) and list(sample) == ["a", "b"]
    specs = [TensorSpec(name=n, datatype="FP64", shape=(-1, 1)) for n in ("a", "b")]
    assert normalize_sample(sample, specs) is not None  # the order convert() insists on
    with pytest.raises(InvalidInput, match=r"missing \['c'\]; not inputs \['b'\]"):
        load_sample(tmp_path / "s.npz", inputs=["a", "c"])
    np.save(tmp_path / "s.npy", np.ones((2, 3)))
    assert isinstance(load_sample(tmp_path / "s.npy", inputs=["x"]), np.ndarray)
    with pytest.raises(InvalidInput, match="one array, the model has 2 inputs"):
        load_sample(tmp_path / "s.npy", inputs=["x", "y"])


def test_object_array_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="pickle") as info:
        load_sample(tmp_path / "o.npy")
    assert "o.npy" in info.value.message and info.value.hint


def test_object_array_npz_is_refused_locally_and_on_the_server(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array(["a", 1], dtype=object))  # np.savez pickles object arrays
    (tmp_path / "o.npz").write_bytes(buffer.getvalue())
    with pytest.raises(InvalidInput, match="object"):
        load_sample(tmp_path / "o.npz")
    with pytest.raises(InvalidInput, match="object"):
        sample_from_npz_bytes(buffer.getvalue(), max_bytes=1 << 20)
    with pytest.raises(InvalidInput, match="cannot be sent"):
        sample_to_npz_bytes({"x": np.array([None, 1], dtype=object)})


def test_empty_and_scalar_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(InvalidInput, match=r"shape \(0, 3\)"):
        load_sample(tmp_path / "e.npy")
    np.save(tmp_path / "s.npy", np.float32(1.0))
    with pytest.raises(InvalidInput, match=r"shape \(\)"):
        load_sample(tmp_path / "s.npy")


def test_oversize_sample_is_refused_before_decoding() -> None:
    data = sample_to_npz_bytes(np.zeros((1000, 100), np.float32))  # 400 kB
    with pytest.raises(PayloadTooLarge, match="sample limit"):
        sample_from_npz_bytes(data, max_bytes=100_000)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((4000, 1000), np.float32))  # 16 MB in a few kB
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(PayloadTooLarge):
        sample_from_npz_bytes(buffer.getvalue(), max_bytes=1_000_000)
    with pytest.raises(PayloadTooLarge, match="arrays"):
        sample_from_npz_bytes(
            sample_to_npz_bytes({f"x{i}": np.zeros(1) for i in range(5)}),
            max_bytes=1 << 20,
            max_arrays=4,
        )


def test_a_header_that_lies_about_its_size_is_refused_without_allocating() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(PayloadTooLarge, match="declares 8000000000000 bytes"):
        sample_from_npz_bytes(buffer.getvalue(), max_bytes=1 << 20)
    truncated = io.BytesIO()
    with zipfile.ZipFile(truncated, "w") as archive:
        archive.writestr("x.npy", sample_to_npz_bytes_member(np.ones(4))[:-8])
    with pytest.raises(InvalidInput, match="its header says 32"):
        sample_from_npz_bytes(truncated.getvalue(), max_bytes=1 << 20)


def sample_to_npz_bytes_member(array: np.ndarray) -> bytes:
    handle = io.BytesIO()
    np.lib.format.write_array(handle, array, allow_pickle=False)
    return handle.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        sample_to_npz_bytes_member(np.ones((2, 2))),  # a bare .npy is not an .npz
    ],
)
def test_non_npz_upload_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"not an \.npz archive"):
        sample_from_npz_bytes(data, max_bytes=1 << 20)


def test_npz_with_foreign_members_or_bad_names_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", sample_to_npz_bytes_member(np.ones((2, 2))))
        archive.writestr("evil.py", b"print('hi')")
    with pytest.raises(InvalidInput, match=r"'evil\.py' is not a \.npy array"):
        sample_from_npz_bytes(buffer.getvalue(), max_bytes=1 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../x.npy", sample_to_npz_bytes_member(np.ones((2, 2))))
    with pytest.raises(InvalidInput, match="invalid tensor name"):
        sample_from_npz_bytes(buffer.getvalue(), max_bytes=1 << 20)


# --- load_sample: parquet ----------------------------------------------------------------------


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "s.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(InvalidInput, match="pyarrow") as info:
        load_sample(path)
    assert info.value.hint and "pip install pyarrow" in info.value.hint


def test_parquet_numeric_columns_become_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": [True, False, True]})
    pq.write_table(table, tmp_path / "s.parquet")
    sample = load_sample(tmp_path / "s.parquet")
    assert isinstance(sample, np.ndarray)
    assert sample.dtype == np.float32 and sample.shape == (3, 3)
    np.testing.assert_array_equal(sample, [[1, 0.5, 1], [2, 1.5, 0], [3, 2.5, 1]])
    with pytest.raises(InvalidInput, match="not integers, the dtype is int64"):
        load_sample(tmp_path / "s.parquet", dtype=np.int64)
    pq.write_table(pa.table({"a": [1, 2], "name": ["x", "y"]}), tmp_path / "t.parquet")
    with pytest.raises(InvalidInput, match="column 'name' is string, not numeric"):
        load_sample(tmp_path / "t.parquet")
    pq.write_table(pa.table({"a": [1.0, None]}), tmp_path / "n.parquet")
    with pytest.raises(InvalidInput, match=r"column 'a' is empty \(null\) in row 2"):
        load_sample(tmp_path / "n.parquet")
    _write(tmp_path / "bad.parquet", "not parquet")
    with pytest.raises(InvalidInput, match="cannot be read as Parquet"):
        load_sample(tmp_path / "bad.parquet")


# --- exit codes --------------------------------------------------------------------------------

EXPECTED_EXIT = {
    errors.LastmileError: 1,
    errors.RuntimeSetupError: 1,
    errors.InvalidInput: 6,
    errors.InvalidModelFile: 6,
    errors.PipelineError: 6,
    errors.BadRequest: 6,
    errors.PayloadTooLarge: 6,
    errors.UnsupportedMedia: 6,
    errors.Unauthenticated: 5,
    errors.Forbidden: 5,
    errors.NotFound: 3,
    errors.Conflict: 4,
    errors.PreconditionFailed: 4,
    errors.ApiUnreachable: 7,
    errors.TritonError: 7,
    errors.TritonUnavailable: 7,
    errors.GatewayError: 7,
    errors.PrometheusError: 7,
    errors.StorageFull: 7,
}


@pytest.mark.parametrize("cls", list(EXPECTED_EXIT), ids=lambda c: c.__name__)
def test_exit_code_of_every_error_class(cls: type[errors.LastmileError]) -> None:
    assert exit_code(cls("x")) == EXPECTED_EXIT[cls]


def test_every_error_class_has_a_decided_exit_code() -> None:
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.LastmileError)
    }
    assert defined == set(EXPECTED_EXIT), "decide the exit code of the new error class"


def test_converter_errors_take_their_parents_code() -> None:
    assert exit_code(ConversionError("x")) == 6
    assert exit_code(ParityError("x")) == 6
    assert exit_code(MissingDependency("x")) == 1

    class Subclassed(errors.PreconditionFailed):
        pass

    assert exit_code(Subclassed("x")) == 4


def test_exit_codes_outside_lastmile_errors() -> None:
    assert exit_code(ValueError("x")) == 1
    assert exit_code(KeyboardInterrupt()) == 1
    assert exit_code(click.UsageError("bad option")) == EXIT_USAGE == 2
    assert exit_code(click.BadParameter("bad value")) == 2
    assert exit_code(typer.BadParameter("bad value")) == 2  # typer's vendored click
    assert exit_code(click.exceptions.Exit(4)) == 4
    assert exit_code(typer.Exit(code=0)) == 0
    assert exit_code(typer.Exit(code=6)) == 6
    assert exit_code(typer.Abort()) == 1
    assert exit_code(SystemExit(3)) == 3
    assert exit_code(SystemExit(None)) == 0
    assert exit_code(SystemExit("message")) == 1


def test_exit_code_table_is_complete() -> None:
    assert sorted(EXIT_CODES) == list(range(8))
    assert set(EXPECTED_EXIT.values()) <= set(EXIT_CODES)
    assert all(EXIT_CODES[code] for code in EXIT_CODES)
