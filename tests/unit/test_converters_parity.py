"""Parity arithmetic, the recommendation rule and argument parsing, without any framework."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converters.api import Candidate, choose_recommended, parse_input_spec
from converters.common import ParityError, normalize_sample, tile_batch
from converters.optimize import check_variant_names, variant_tolerance
from converters.parity import ParityReport, Tolerance, compare, compare_output, raise_if_failed
from converters.torch_onnx import archive_kind
from manager.domain import TensorSpec
from manager.errors import InvalidInput

TIGHT = Tolerance(rtol=1e-4, atol=1e-5)


def test_close_floats_pass_and_report_their_errors() -> None:
    ref = np.array([[1.0, -2.0], [0.0, 4.0]])
    cand = (ref + np.array([[1e-6, 0], [2e-6, -3e-5]])).astype(np.float32)
    result = compare_output("y", cand, ref, TIGHT)
    assert result.passed and result.mismatched == 0 and result.total == 4
    assert result.max_abs_err == pytest.approx(3e-5, rel=1e-2)
    assert result.max_rel_err == pytest.approx(7.5e-6, rel=1e-2)  # 3e-5 / 4, zero excluded


def test_one_element_outside_tolerance_fails_the_output() -> None:
    ref = np.zeros((3, 3), np.float32)
    cand = ref.copy()
    cand[1, 2] = 1e-3
    result = compare_output("y", cand, ref, TIGHT)
    assert (
        not result.passed and result.mismatched == 1 and result.max_abs_err == pytest.approx(1e-3)
    )


def test_labels_must_match_exactly_unless_a_fraction_is_allowed() -> None:
    ref = np.arange(100) % 3
    cand = ref.copy()
    cand[7] = (cand[7] + 1) % 3
    assert not compare_output("label", cand, ref, TIGHT).passed
    loose = Tolerance(rtol=0.05, atol=0.05, max_mismatch_fraction=0.02)
    assert compare_output("label", cand, ref, loose).passed
    words = np.array(["cat", "dog"], dtype=object)
    assert compare_output("label", words, np.array([b"cat", b"dog"]), TIGHT).passed


def test_shapes_reshape_when_sizes_agree_and_fail_when_not() -> None:
    assert compare_output("y", np.ones((4, 1)), np.ones(4), TIGHT).passed
    result = compare_output("y", np.ones((4, 2)), np.ones(4), TIGHT)
    assert not result.passed and "shape" in (result.note or "")


def test_nan_in_candidate_only_fails_but_matching_nan_passes() -> None:
    ref = np.array([1.0, np.nan])
    assert compare_output("y", np.array([1.0, np.nan]), ref, TIGHT).passed
    assert not compare_output("y", np.array([np.nan, np.nan]), ref, TIGHT).passed


def test_missing_output_fails_and_error_names_it() -> None:
    report = compare(
        {"a": np.ones(2)},
        {"a": np.ones(2), "b": np.ones(2)},
        TIGHT,
        reference_name="sklearn 1.0",
        candidate_name="onnx",
        batch=2,
    )
    assert not report.passed
    with pytest.raises(ParityError, match="b: FAIL \\(missing\\)") as caught:
        raise_if_failed(report, what="model.pkl")
    assert "loosen the tolerance" in (caught.value.hint or "")
    saved = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert saved["outputs"][1] == {
        "name": "b",
        "max_abs_err": None,
        "max_rel_err": None,
        "mismatched": 0,
        "total": 0,
        "passed": False,
        "note": "missing",
    }


def _candidate(name: str, latency: float, passed: bool = True, target: str = "cpu") -> Candidate:
    report = ParityReport("ref", name, TIGHT, 1, ())
    return Candidate(name, f"{name}.onnx", target, report, passed, latency_ms_p50=latency)


def test_recommendation_is_fastest_passing_preferring_exact_within_margin() -> None:
    assert choose_recommended([_candidate("onnx", 1.0), _candidate("int8", 0.5)]) == "int8"
    assert choose_recommended([_candidate("onnx", 1.0), _candidate("int8", 0.97)]) == "onnx"
    assert choose_recommended([_candidate("onnx", 1.0), _candidate("int8", 0.5, False)]) == "onnx"
    assert choose_recommended([_candidate("onnx", 1.0), _candidate("ort", 0.7)]) == "ort"
    gpu = [_candidate("onnx", 1.0), _candidate("tensorrt", 0.1, target="gpu")]
    assert choose_recommended(gpu) == "onnx"
    assert choose_recommended(gpu, target="gpu") == "tensorrt"
    assert choose_recommended([]) is None


def test_variant_tolerances_are_looser_for_approximate_formats_only() -> None:
    assert variant_tolerance("ort", TIGHT, scale=10.0) == TIGHT
    int8 = variant_tolerance("int8", TIGHT, scale=10.0)
    assert int8.rtol == 0.05 and int8.atol == pytest.approx(0.5)
    exact = Tolerance(0.0, 0.0)
    assert variant_tolerance("int8", TIGHT, scale=1.0, overrides={"int8": exact}) == exact
    assert check_variant_names(["int8", "ort", "int8"]) == ("int8", "ort")
    with pytest.raises(InvalidInput, match="unknown optimisation 'fast'"):
        check_variant_names(["fast"])


def test_input_specs_parse_numpy_and_kserve_names() -> None:
    assert parse_input_spec("x:float32:-1,8") == TensorSpec("x", "FP32", (-1, 8))
    assert parse_input_spec("ids:INT64:-1,16") == TensorSpec("ids", "INT64", (-1, 16))
    for bad in ("x:float32", "x:complex64:-1", "x:float32:-1,a", "../x:float32:-1", "x:float32:0"):
        with pytest.raises(InvalidInput):
            parse_input_spec(bad)


def test_samples_are_named_and_batches_tiled() -> None:
    arrays = normalize_sample(np.ones((3, 2)), [TensorSpec("x", "FP32", (-1, 2))])
    assert arrays is not None and list(arrays) == ["x"]
    with pytest.raises(InvalidInput, match="differ from the declared inputs"):
        normalize_sample({"y": np.ones((3, 2))}, [TensorSpec("x", "FP32", (-1, 2))])
    with pytest.raises(InvalidInput, match="give a batch"):
        normalize_sample(np.array(1.0, dtype=np.float32), None)
    tiled = tile_batch({"x": np.arange(3).reshape(3, 1)}, 7)
    assert tiled["x"].ravel().tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_torch_archive_kinds_are_told_apart_by_member_names(tmp_path: Path) -> None:
    def archive(name: str, members: list[str]) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            for member in members:
                zf.writestr(member, b"x")
        return path

    assert archive_kind(archive("s.pt", ["m/code/__torch__/m.py", "m/data.pkl"])) == "torchscript"
    assert archive_kind(archive("e.pt2", ["m/archive_format", "m/models/model.json"])) == "pt2"
    assert archive_kind(archive("p.pt", ["m/data.pkl", "m/version"])) == "pickle"
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02}q\x00.")
    assert archive_kind(legacy) == "pickle"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 truncated")
    assert archive_kind(junk) == "unknown"
