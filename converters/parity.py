"""Parity: does the converted model answer like the model the user trained?

Exporters fail silently as often as loudly: a traced branch frozen to one value, a float64
pipeline served in float32, a quantised weight. So every candidate is run on the same inputs
as the source framework and compared output by output. An element passes when
``|candidate - reference| <= atol + rtol * |reference|`` (numpy's ``allclose`` rule); integer,
boolean and string outputs (class labels) must be equal, except for a reported fraction of
near-tie flips allowed to approximate variants (int8, fp16).

The relative error is reported over elements whose reference magnitude is above ``atol``
(elsewhere it measures noise around zero, not the model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.common import (
    KSERVE_TO_NUMPY,
    Arrays,
    ConvertedModel,
    ParityError,
    arrays_from_specs,
)
from converters.onnx_import import OnnxInfo
from manager.domain import Signature
from manager.errors import InvalidInput


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate may stray from its reference."""

    rtol: float
    atol: float
    max_mismatch_fraction: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "max_mismatch_fraction": self.max_mismatch_fraction,
        }


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs_err: float
    max_rel_err: float
    mismatched: int
    total: int
    passed: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Strict JSON has no Infinity/NaN (PostgreSQL's json type refuses them): None instead.
        return {
            "name": self.name,
            "max_abs_err": _json_float(self.max_abs_err),
            "max_rel_err": _json_float(self.max_rel_err),
            "mismatched": self.mismatched,
            "total": self.total,
            "passed": self.passed,
            "note": self.note,
        }


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ParityReport:
    """One candidate against one reference, on ``batch`` rows of the same inputs."""

    reference: str
    candidate: str
    tolerance: Tolerance
    batch: int
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        parts = []
        for o in self.outputs:
            verdict = "ok" if o.passed else "FAIL"
            detail = o.note or (
                f"max abs {o.max_abs_err:.3g}, max rel {o.max_rel_err:.3g}, "
                f"{o.mismatched}/{o.total} outside tolerance"
            )
            parts.append(f"{o.name}: {verdict} ({detail})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "tolerance": self.tolerance.to_dict(),
            "batch": self.batch,
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def _is_exact_kind(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuOSU"


def _as_text(array: np.ndarray) -> np.ndarray:
    items = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.flat]
    return np.array(items, dtype=object)


def compare_output(
    name: str, candidate: np.ndarray, reference: np.ndarray, tolerance: Tolerance
) -> OutputParity:
    candidate, reference = np.asarray(candidate), np.asarray(reference)
    if candidate.size != reference.size:
        return OutputParity(
            name,
            float("inf"),
            float("inf"),
            max(candidate.size, reference.size),
            max(candidate.size, reference.size),
            False,
            note=f"shape {candidate.shape} vs reference {reference.shape}",
        )
    reference = reference.reshape(candidate.shape)
    total = int(candidate.size)
    allowed = int(np.floor(tolerance.max_mismatch_fraction * total))
    if _is_exact_kind(candidate) and _is_exact_kind(reference):
        if candidate.dtype.kind in "OSU" or reference.dtype.kind in "OSU":
            mismatched = int(np.count_nonzero(_as_text(candidate) != _as_text(reference)))
            max_abs = float(mismatched > 0)
        else:
            diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
            mismatched = int(np.count_nonzero(diff))
            max_abs = float(diff.max()) if total else 0.0
        return OutputParity(
            name,
            max_abs,
            0.0,
            mismatched,
            total,
            mismatched <= allowed,
            note=f"{mismatched}/{total} labels differ" if mismatched else None,
        )
    cand = candidate.astype(np.float64)
    ref = reference.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(cand)
    same_nonfinite = ~finite & ((cand == ref) | (np.isnan(cand) & np.isnan(ref)))
    diff = np.where(finite, np.abs(cand - ref), 0.0)
    bad = (finite & (diff > tolerance.atol + tolerance.rtol * np.abs(ref))) | (
        ~finite & ~same_nonfinite
    )
    mismatched = int(np.count_nonzero(bad))
    max_abs = float(diff.max()) if total else 0.0
    if np.any(~finite & ~same_nonfinite):
        max_abs = float("inf")
    significant = finite & (np.abs(ref) > max(tolerance.atol, np.finfo(np.float64).tiny))
    max_rel = (
        float((diff[significant] / np.abs(ref[significant])).max()) if significant.any() else 0.0
    )
    return OutputParity(name, max_abs, max_rel, mismatched, total, mismatched <= allowed)


def compare(
    candidate: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    *,
    reference_name: str,
    candidate_name: str,
    batch: int,
) -> ParityReport:
    outputs = []
    for name, ref in reference.items():
        if name not in candidate:
            outputs.append(
                OutputParity(name, float("inf"), float("inf"), 0, 0, False, note="missing")
            )
            continue
        outputs.append(compare_output(name, candidate[name], ref, tolerance))
    return ParityReport(
        reference=reference_name,
        candidate=candidate_name,
        tolerance=tolerance,
        batch=batch,
        outputs=tuple(outputs),
    )


def conform_inputs(
    arrays: Arrays, signature: Signature, warnings: list[str], *, bare: bool = False
) -> Arrays:
    """Feed exactly the signature's inputs, in its dtypes (a float64 sample becomes float32).

    A bare array (``bare``) was named before the model's input names were known (Keras and
    ONNX models name their own inputs), so it takes the name of the one model input.
    """
    names = [spec.name for spec in signature.inputs]
    if bare and len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if set(arrays) != set(names):
        raise InvalidInput(
            f"the inputs {sorted(arrays)} do not match the model's inputs {names}",
            hint="name sample_input / inputs after the model's inputs",
        )
    out: Arrays = {}
    for spec in signature.inputs:
        array = np.asarray(arrays[spec.name])
        dtype = KSERVE_TO_NUMPY[spec.datatype]
        if spec.datatype != "BYTES" and array.dtype != np.dtype(dtype):
            warnings.append(f"input {spec.name!r}: cast {array.dtype} to {np.dtype(dtype)}")
            array = array.astype(dtype)
        out[spec.name] = array
    return out


def parity_inputs(
    converted: ConvertedModel, sample: Arrays | None, info: OnnxInfo, batch: int
) -> Arrays:
    if converted.example is not None:
        return converted.example
    if sample is not None:
        return sample
    return arrays_from_specs(info.signature.inputs, batch=batch)


def run_onnx(path: Path, inputs: Arrays, *, threads: int | None = None) -> Arrays:
    """Run an ONNX file with onnxruntime on CPU and name its outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed), strict=True))


def output_scale(reference: Mapping[str, np.ndarray]) -> float:
    """Largest finite magnitude among the float outputs: the unit for loose tolerances."""
    scale = 0.0
    for array in reference.values():
        array = np.asarray(array)
        if array.dtype.kind == "f" and array.size:
            finite = array[np.isfinite(array)]
            if finite.size:
                scale = max(scale, float(np.abs(finite).max()))
    return scale or 1.0


def raise_if_failed(report: ParityReport, *, what: str) -> None:
    if report.passed:
        return
    tol = report.tolerance
    raise ParityError(
        f"{what}: the converted model differs from {report.reference} beyond rtol={tol.rtol:g}, "
        f"atol={tol.atol:g} on {report.batch} rows: {report.summary()}",
        hint="if the difference is expected (e.g. float64 trained, float32 served), loosen the "
        "tolerance (rtol/atol, --rtol/--atol); otherwise the export changed the model: check "
        "eval mode, data-dependent branches and custom ops",
    )
