"""The conversion report: candidates, the recommendation rule, lineage.

Kept apart from the pipeline in ``api`` because the registry stores and reads these (as
JSON, through ``to_dict``) long after the conversion ran. The recommendation is the fastest
candidate that passed parity by p50 latency at batch 1, but among candidates within
``RECOMMEND_MARGIN`` of the fastest the most exact format wins: on a busy 2-core machine a few
percent is noise, not a reason to serve int8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.benchmark import BenchmarkResult
from converters.common import ConvertedModel
from converters.onnx_import import OnnxInfo
from converters.optimize import FIDELITY
from converters.parity import ParityReport
from manager.domain import Signature

RECOMMEND_MARGIN = 0.05


@dataclass
class Candidate:
    """One servable format of the model, with its parity and its measured speed."""

    name: str
    path: str
    target: str  # "cpu" (onnxruntime here) or "gpu" (TensorRT)
    parity: ParityReport | None
    passed: bool
    latency_ms_p50: float | None = None
    throughput_per_s: float | None = None
    benchmark: BenchmarkResult | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "target": self.target,
            "passed": self.passed,
            "latency_ms_p50": self.latency_ms_p50,
            "throughput_per_s": self.throughput_per_s,
            "parity": self.parity.to_dict() if self.parity else None,
            "benchmark": self.benchmark.to_dict() if self.benchmark else None,
            "note": self.note,
        }


@dataclass
class ConversionReport:
    """Everything the registry stores with the version: what, from where, how good, how fast."""

    onnx_path: Path
    signature: Signature
    parity: ParityReport
    candidates: list[Candidate]
    recommended: str | None
    recommended_path: Path | None
    recommended_gpu: str | None
    tensorrt: dict[str, Any]
    lineage: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)

    @property
    def chosen_path(self) -> Path:
        """The ONNX file to register: the recommended candidate, else the plain conversion."""
        return self.recommended_path or self.onnx_path

    def record(self) -> dict[str, Any]:
        """What the registry keeps: the report without the paths of this conversion's
        scratch folder, which mean nothing once it is gone."""
        data = self.to_dict()
        data.pop("onnx_path")
        data.pop("recommended_path")
        for candidate in data["candidates"]:
            candidate.pop("path", None)
        return data

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_path": str(self.onnx_path),
            "signature": self.signature.to_dict(),
            "parity": self.parity.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "recommended": self.recommended,
            "recommended_path": str(self.recommended_path) if self.recommended_path else None,
            "recommended_gpu": self.recommended_gpu,
            "tensorrt": self.tensorrt,
            "lineage": self.lineage,
            "warnings": list(self.warnings),
        }


def choose_recommended(candidates: Sequence[Candidate], *, target: str = "cpu") -> str | None:
    """Fastest passing candidate by p50 latency; within the margin, the most exact wins."""
    timed = [
        c for c in candidates if c.passed and c.target == target and c.latency_ms_p50 is not None
    ]
    if not timed:
        return None
    best = min(c.latency_ms_p50 or 0.0 for c in timed)
    close = [c for c in timed if (c.latency_ms_p50 or 0.0) <= best * (1 + RECOMMEND_MARGIN)]
    close.sort(key=lambda c: (FIDELITY.get(c.name, 9), c.latency_ms_p50))
    return close[0].name


def lineage(converted: ConvertedModel, info: OnnxInfo, trt: Mapping[str, Any]) -> dict[str, Any]:
    import onnx
    import onnxruntime

    lineage: dict[str, Any] = {
        "source": converted.source,
        "source_sha256": converted.source_sha256,
        "framework": converted.framework,
        "framework_version": converted.framework_version,
        "converter": converted.converter,
        "converter_version": converted.converter_version,
        **converted.details,
        "opset": info.opset,
        "ir_version": info.ir_version,
        "producer": info.producer,
        "onnx_sha256": info.sha256,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
    if trt.get("tensorrt_version"):
        lineage["tensorrt_version"] = trt["tensorrt_version"]
    return lineage
