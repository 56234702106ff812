"""Optimised variants of a converted ONNX model, each a separate file and a separate candidate.

Whether a variant is worth serving depends on the model and the machine, so nothing here
decides: each variant is written next to the base model, then parity-checked and benchmarked
like any other candidate, and the report picks. The variants:

- ``ort``: onnxruntime's extended graph optimisations (fusions, constant folding) saved to a
  file. It may contain ``com.microsoft`` operators, so it runs on onnxruntime only (Triton's
  onnxruntime backend), not TensorRT; onnxruntime applies the same fusions when it loads the
  base model, so the gain is mostly load time.
- ``onnxslim``: graph simplification that stays within standard ONNX (if installed).
- ``fp16``: weights and compute in float16 with float32 inputs and outputs kept
  (onnxconverter-common); meant for GPUs, often slower on CPUs.
- ``int8``: dynamic int8 quantisation of MatMul/Gemm weights (onnxruntime.quantization);
  meant for CPUs.

Approximate variants (fp16, int8) are checked against a looser tolerance, recorded in the
report, derived from the magnitude of the reference outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from converters.parity import Tolerance
from manager.errors import InvalidInput

log = logging.getLogger(__name__)

VARIANTS = ("ort", "onnxslim", "fp16", "int8")
APPROXIMATE = {"fp16", "int8"}
# Preference among candidates whose speed is about equal: exact before approximate.
FIDELITY = {"onnx": 0, "onnxslim": 1, "ort": 1, "tensorrt": 2, "fp16": 3, "int8": 3}


class VariantUnavailable(Exception):
    """A variant could not be produced (tool missing, model unsuitable); not a user error."""


def check_variant_names(names: Iterable[str]) -> tuple[str, ...]:
    chosen: list[str] = []
    for name in names:
        if name not in VARIANTS:
            raise InvalidInput(
                f"unknown optimisation {name!r}",
                hint="choose from " + ", ".join(VARIANTS),
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def variant_tolerance(
    name: str,
    base: Tolerance,
    *,
    scale: float,
    overrides: Mapping[str, Tolerance] | None = None,
) -> Tolerance:
    """The tolerance a variant is held to: the user's, or a looser one for fp16/int8."""
    if overrides and name in overrides:
        return overrides[name]
    if name == "fp16":
        return Tolerance(
            rtol=max(base.rtol, 1e-2),
            atol=max(base.atol, 1e-2 * scale),
            max_mismatch_fraction=max(base.max_mismatch_fraction, 0.02),
        )
    if name == "int8":
        return Tolerance(
            rtol=max(base.rtol, 5e-2),
            atol=max(base.atol, 5e-2 * scale),
            max_mismatch_fraction=max(base.max_mismatch_fraction, 0.05),
        )
    return base


def variant_path(base: Path, name: str) -> Path:
    return base.with_name(f"{base.stem}.{name}.onnx")


def build_variant(name: str, base: Path) -> Path:
    """Write variant ``name`` of the ONNX file ``base`` next to it and return its path."""
    target = variant_path(base, name)
    builders = {"ort": _ort, "onnxslim": _onnxslim, "fp16": _fp16, "int8": _int8}
    try:
        builders[name](base, target)
    except VariantUnavailable:
        raise
    except Exception as exc:  # third-party tools raise anything; the variant is just skipped
        raise VariantUnavailable(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    if not target.is_file():
        raise VariantUnavailable(f"{name} wrote no file")
    return target


def _ort(base: Path, target: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # EXTENDED, not ALL: level ALL adds layout transformations tied to this CPU (NCHWc).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(base), options, providers=["CPUExecutionProvider"])


def _onnxslim(base: Path, target: Path) -> None:
    try:
        import onnxslim
    except ImportError as exc:
        raise VariantUnavailable("onnxslim is not installed (pip install onnxslim)") from exc
    import onnx

    slimmed = onnxslim.slim(onnx.load(str(base)))
    if slimmed is None:
        raise VariantUnavailable("onnxslim returned no model")
    onnx.save(slimmed, str(target))


def _fp16(base: Path, target: Path) -> None:
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise VariantUnavailable(
            "onnxconverter-common is not installed (pip install onnxconverter-common)"
        ) from exc
    import onnx

    model = float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
    onnx.save(model, str(target))


def _int8(base: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = {node.op_type for node in onnx.load(str(base), load_external_data=False).graph.node}
    if not ops & {"MatMul", "Gemm"}:
        # Trees and linear models from skl2onnx/onnxmltools are ai.onnx.ml operators: nothing
        # for dynamic quantisation to work on.
        raise VariantUnavailable("int8: no MatMul/Gemm operator to quantise in this model")

    # reduce_range (7-bit weights): x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW,
    # whose 16-bit sums saturate at full range. Measured on this machine with random MLPs:
    # max error 11-23 % of the output range without it, 1-2 % with it (and per channel).
    quantize_dynamic(
        str(base),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
    )
