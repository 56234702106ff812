"""PyTorch -> ONNX through the real exporter and onnxruntime: objects, archives, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    import torch
else:
    torch = pytest.importorskip("torch", reason="the 'torch' extra is not installed")

from converters import tensorrt_plan
from converters.api import REPORT_NAME, convert
from converters.common import ConversionError, ParityError
from converters.parity import Tolerance
from converters.report import RECOMMEND_MARGIN
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile

LIMIT = 50 * 1024 * 1024
FAST: dict[str, Any] = {"max_bytes": LIMIT, "benchmark_seconds": 0.1}


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ).eval()


def _rows(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)


@torch.library.custom_op("lastmile_test::odd_scale", mutates_args=())
def _odd_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_odd_scale.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOpModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _odd_scale(x) + 1


class ExportDivergent(torch.nn.Module):
    """Behaves differently under torch.export than in eager mode (a real class of bugs)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if torch.compiler.is_exporting():
            return y + 0.5
        return y


def test_mlp_object_converts_with_dynamic_batch_and_parity(tmp_path: Path) -> None:
    steps: list[str] = []
    report = convert(
        _mlp(),
        framework="pytorch",
        out_dir=tmp_path,
        sample_input={"x": _rows()},
        progress=steps.append,
        **FAST,
    )
    assert report.onnx_path == tmp_path / "model.onnx" and report.onnx_path.is_file()
    assert report.signature.inputs == (TensorSpec("x", "FP32", (-1, 16)),)
    assert report.signature.outputs == (TensorSpec("output", "FP32", (-1, 4)),)
    assert report.signature.batched
    assert report.parity.passed and report.parity.batch == 32
    assert report.parity.outputs[0].max_abs_err < 1e-5
    assert report.lineage["exporter"] == "torch.onnx.export(dynamo=True)"
    assert report.lineage["opset"] == 18
    assert report.lineage["framework_version"] == torch.__version__
    assert report.recommended == "onnx"
    assert [s[:5] for s in steps if s.startswith("[")] == [
        "[1/6]",
        "[2/6]",
        "[3/6]",
        "[6/6]",
    ]
    saved = json.loads((tmp_path / REPORT_NAME).read_text())
    assert saved["parity"]["passed"] and saved["signature"]["batched"]


def test_torchscript_archive_needs_no_trust_and_declares_inputs(tmp_path: Path) -> None:
    archive = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(_mlp()), str(archive))
    report = convert(
        archive,
        framework="torchscript",
        out_dir=tmp_path / "out",
        inputs=[TensorSpec("features", "FP32", (-1, 16))],
        **FAST,
    )
    assert report.signature.inputs == (TensorSpec("features", "FP32", (-1, 16)),)
    assert report.signature.batched and report.parity.passed
    assert report.lineage["exporter"] == "torch.onnx.export(dynamo=False, TorchScript)"
    assert report.lineage["source"] == "file mlp.pt"
    assert len(report.lineage["source_sha256"]) == 64


def test_torch_export_archive_is_a_pickle_and_needs_trust(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _mlp(), (torch.from_numpy(_rows(4)),), dynamic_shapes=({0: batch},)
    )
    archive = tmp_path / "mlp.pt2"
    torch.export.save(program, str(archive))
    with pytest.raises(InvalidInput, match=r"torch\.export archive.*pickle"):
        convert(archive, framework="pytorch", out_dir=tmp_path / "refused", **FAST)
    report = convert(
        archive, framework="pytorch", out_dir=tmp_path / "out", trust_pickle=True, **FAST
    )
    assert report.signature.batched and report.parity.passed


def test_full_torch_save_refused_without_trust(tmp_path: Path) -> None:
    pickled = tmp_path / "mlp.pt"
    torch.save(_mlp(), str(pickled))
    with pytest.raises(InvalidInput, match=r"torch\.save file is a pickle") as caught:
        convert(pickled, framework="pytorch", out_dir=tmp_path / "a", inputs=None, **FAST)
    assert "--trust-pickle" in (caught.value.hint or "")
    with pytest.raises(InvalidModelFile, match="not a TorchScript archive"):
        convert(pickled, framework="torchscript", out_dir=tmp_path / "b", **FAST)
    assert not (tmp_path / "a" / "model.onnx").exists()


def test_truncated_torchscript_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(_mlp()), str(archive))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelFile, match="truncated"):
        convert(archive, framework="torchscript", out_dir=tmp_path / "out", **FAST)


def test_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    archive = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(_mlp()), str(archive))
    with pytest.raises(InvalidModelFile, match="over the limit of 100 bytes"):
        convert(archive, framework="torchscript", out_dir=tmp_path / "out", max_bytes=100)


def test_module_without_sample_or_inputs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not carry its input signature"):
        convert(_mlp(), framework="pytorch", out_dir=tmp_path, **FAST)


def test_unsupported_operator_is_a_conversion_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"lastmile_test\.odd_scale") as caught:
        convert(
            CustomOpModel(),
            framework="pytorch",
            out_dir=tmp_path,
            sample_input=_rows(4),
            **FAST,
        )
    assert "custom op" in (caught.value.hint or "")


def test_parity_failure_is_an_error_unless_tolerance_is_loosened(tmp_path: Path) -> None:
    model = ExportDivergent().eval()
    with pytest.raises(ParityError, match=r"output: FAIL \(max abs 0\.5"):
        convert(model, framework="pytorch", out_dir=tmp_path / "a", sample_input=_rows(), **FAST)
    assert not (tmp_path / "a").exists()  # nothing left that looks like a result
    report = convert(
        model,
        framework="pytorch",
        out_dir=tmp_path / "b",
        sample_input=_rows(),
        atol=0.6,
        **FAST,
    )
    assert report.parity.passed
    assert report.parity.outputs[0].max_abs_err == pytest.approx(0.5, abs=1e-5)


def test_ort_and_int8_variants_are_checked_benchmarked_and_ranked(tmp_path: Path) -> None:
    report = convert(
        _mlp(),
        framework="pytorch",
        out_dir=tmp_path,
        sample_input=_rows(64),
        optimize=["ort", "int8"],
        **FAST,
    )
    names = [c.name for c in report.candidates]
    assert names == ["onnx", "ort", "int8"]
    for candidate in report.candidates:
        assert Path(candidate.path).is_file()
        assert candidate.latency_ms_p50 and candidate.latency_ms_p50 > 0
        assert candidate.throughput_per_s and candidate.throughput_per_s > 0
        assert candidate.parity is not None and candidate.passed
    int8 = report.candidate("int8")
    assert int8 is not None and int8.parity is not None
    assert int8.parity.tolerance.rtol == 0.05  # looser, and recorded
    fastest = min(c.latency_ms_p50 or 0 for c in report.candidates)
    chosen = report.candidate(report.recommended or "")
    assert chosen is not None and chosen.passed
    assert (chosen.latency_ms_p50 or 0) <= fastest * (1 + RECOMMEND_MARGIN)
    assert report.recommended_path == Path(chosen.path)


def test_int8_with_exact_tolerance_fails_and_is_never_recommended(tmp_path: Path) -> None:
    report = convert(
        _mlp(),
        framework="pytorch",
        out_dir=tmp_path,
        sample_input=_rows(),
        optimize=["int8"],
        variant_tolerances={"int8": Tolerance(rtol=0.0, atol=0.0)},
        **FAST,
    )
    int8 = report.candidate("int8")
    assert int8 is not None and not int8.passed
    assert int8.note and "parity failed" in int8.note
    assert report.recommended == "onnx"
    assert any("int8 failed parity" in w for w in report.warnings)


def test_tensorrt_without_gpu_is_reported_as_skipped(tmp_path: Path) -> None:
    reason = tensorrt_plan.unavailable_reason()
    if reason is None:
        pytest.skip("a GPU and tensorrt are present: the gpu test covers this machine")
    report = convert(
        _mlp(), framework="pytorch", out_dir=tmp_path, sample_input=_rows(), tensorrt=True, **FAST
    )
    assert report.tensorrt["status"] == "skipped"
    assert report.tensorrt["reason"].startswith("skipped: ")
    assert report.recommended_gpu is None
    assert [c.name for c in report.candidates] == ["onnx"]


@pytest.mark.gpu
def test_tensorrt_plan_builds_and_matches_onnxruntime(tmp_path: Path) -> None:
    reason = tensorrt_plan.unavailable_reason()
    if reason:
        pytest.skip(f"TensorRT plan not built here: {reason}")
    report = convert(
        _mlp(),
        framework="pytorch",
        out_dir=tmp_path,
        sample_input=_rows(),
        tensorrt=True,
        tensorrt_profile=(1, 16, 64),
        **FAST,
    )
    assert report.tensorrt["status"] == "built", report.tensorrt
    plan = report.candidate("tensorrt")
    assert plan is not None and plan.target == "gpu" and plan.passed
    assert Path(plan.path).stat().st_size > 0
    assert Path(report.tensorrt["timing_cache"]).is_file()
    assert report.recommended_gpu == "tensorrt"
    assert plan.latency_ms_p50 and plan.latency_ms_p50 > 0
