"""One entry point for every conversion: ``convert(...) -> ConversionReport``.

The services layer, the CLI and the SDK all call this, so the steps and their order live in
one place: (1) the framework module writes ``model.onnx``; (2) ``inspect_onnx`` runs the
checker and shape inference and reads the signature Triton will be told about; (3) the source
framework and onnxruntime answer the same inputs and must agree within the tolerance, or
nothing goes further; (4) optional variants are built, each checked the same way; (5) on a
GPU a TensorRT plan is built and checked against onnxruntime; (6) every candidate is
benchmarked on this machine and the fastest that passed parity is recommended, preferring an
exact format when an approximate one is less than ``RECOMMEND_MARGIN`` faster (see
``converters.report``).

Heavy frameworks are imported by the framework modules, inside their functions, so importing
this module costs only numpy, onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.benchmark import benchmark_onnx
from converters.common import (
    KSERVE_TO_NUMPY,
    NUMPY_TO_KSERVE,
    Arrays,
    ConvertedModel,
    check_source_file,
    describe_object,
    first_error_lines,
    noop_progress,
    normalize_sample,
    sha256_file,
    source_path,
)
from converters.onnx_import import check_external_data, inspect_onnx
from converters.optimize import (
    VariantUnavailable,
    build_variant,
    check_variant_names,
    variant_tolerance,
)
from converters.parity import (
    Tolerance,
    compare,
    conform_inputs,
    output_scale,
    parity_inputs,
    raise_if_failed,
    run_onnx,
)
from converters.report import (
    Candidate,
    ConversionReport,
    choose_recommended,
    lineage,
)
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile, LastmileError
from manager.names import check_tensor_name

log = logging.getLogger(__name__)

FRAMEWORKS = ("onnx", "pytorch", "torchscript", "sklearn", "xgboost", "lightgbm", "keras")
REPORT_NAME = "conversion_report.json"


def _import_onnx(source: object, out_path: Path, *, max_bytes: int) -> ConvertedModel:
    import onnx

    path = source_path(source)
    if path is not None:
        inspect_onnx(path, max_bytes=max_bytes)  # size, decoding, external data, checker
        model = onnx.load(str(path), load_external_data=False)
        locations = check_external_data(path, model, max_bytes=max_bytes)
        if path.resolve() != out_path.resolve():
            shutil.copyfile(path, out_path)
            for location in locations:
                target = out_path.parent / location
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path.parent / location, target)
        described, sha256 = f"file {path.name}", sha256_file(path, max_bytes=max_bytes)
    elif isinstance(source, onnx.ModelProto):
        data = source.SerializeToString()
        if len(data) > max_bytes:
            raise InvalidModelFile(f"the ONNX model is over the limit of {max_bytes} bytes")
        out_path.write_bytes(data)
        described, sha256 = describe_object(source), None
    else:
        raise InvalidInput(f"framework onnx expects a path or an onnx.ModelProto, got {source!r}")
    return ConvertedModel(
        onnx_path=out_path,
        reference=lambda arrays: run_onnx(out_path, arrays),
        example=None,
        framework="onnx",
        framework_version=onnx.__version__,
        converter="none (already ONNX)",
        converter_version=onnx.__version__,
        source=described,
        source_sha256=sha256,
    )


def _to_onnx(
    framework: str,
    source: object,
    out_path: Path,
    *,
    inputs: list[TensorSpec] | None,
    sample: Arrays | None,
    trust_pickle: bool,
    max_bytes: int,
    progress: Callable[[str], None],
) -> ConvertedModel:
    common: dict[str, Any] = {
        "out_path": out_path,
        "inputs": inputs,
        "sample": sample,
        "trust_pickle": trust_pickle,
        "max_bytes": max_bytes,
        "progress": progress,
    }
    if framework == "onnx":
        return _import_onnx(source, out_path, max_bytes=max_bytes)
    if framework in ("pytorch", "torchscript"):
        from converters.torch_onnx import convert_torch

        return convert_torch(source, framework=framework, **common)
    if framework == "sklearn":
        from converters.sklearn_onnx import convert_sklearn

        return convert_sklearn(source, **common)
    if framework in ("xgboost", "lightgbm"):
        from converters.boosters_onnx import convert_booster

        return convert_booster(source, framework=framework, **common)
    from converters.keras_onnx import convert_keras

    return convert_keras(source, **common)


def _check_candidate(
    name: str,
    path: Path,
    *,
    inputs: Arrays,
    reference: Arrays,
    reference_name: str,
    tolerance: Tolerance,
    max_bytes: int,
) -> Candidate:
    inspect_onnx(path, max_bytes=max_bytes)
    outputs = run_onnx(path, inputs)
    rows = next(iter(inputs.values())).shape[0]
    parity = compare(
        outputs,
        reference,
        tolerance,
        reference_name=reference_name,
        candidate_name=name,
        batch=rows,
    )
    note = None if parity.passed else f"parity failed: {parity.summary()}"
    return Candidate(name, str(path), "cpu", parity, parity.passed, note=note)


def convert(
    source: Path | object,
    *,
    framework: str,
    out_dir: Path,
    inputs: list[TensorSpec] | None = None,
    sample_input: Mapping[str, np.ndarray] | np.ndarray | None = None,
    trust_pickle: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    optimize: Sequence[str] = (),
    tensorrt: bool = False,
    max_bytes: int,
    progress: Callable[[str], None] | None = None,
    variant_tolerances: Mapping[str, Tolerance] | None = None,
    benchmark_seconds: float = 1.0,
    benchmark_batch: int = 64,
    threads: int | None = None,
    tensorrt_profile: tuple[int, int, int] = (1, 8, 64),
    parity_batch: int = 16,
) -> ConversionReport:
    """Convert ``source`` to ONNX in ``out_dir``, check it, optimise it, benchmark it.

    Raises ``InvalidInput`` (bad arguments, refused file, pickle without trust),
    ``InvalidModelFile`` (unreadable file), ``ConversionError`` (the exporter failed),
    ``ParityError`` (the ONNX model answers differently), all HTTP 422, and
    ``MissingDependency`` (a ``RuntimeSetupError``, 500: the framework's extra is not
    installed). Variant and TensorRT problems are reported, not raised. On error, nothing is
    left in ``out_dir`` if this call created it (else ``model.onnx`` is removed).
    """
    say = progress or noop_progress
    framework = framework.lower()
    if framework not in FRAMEWORKS:
        raise InvalidInput(
            f"unknown framework {framework!r}", hint="one of " + ", ".join(FRAMEWORKS)
        )
    variants = check_variant_names(optimize)
    if rtol < 0 or atol < 0:
        raise InvalidInput("rtol and atol must be >= 0")
    if max_bytes <= 0:
        raise InvalidInput("max_bytes must be positive")
    specs = list(inputs) if inputs else None
    for spec in specs or ():
        check_tensor_name(spec.name, where="inputs")
        if spec.datatype not in KSERVE_TO_NUMPY:
            raise InvalidInput(f"input {spec.name!r} has unknown datatype {spec.datatype!r}")
    sample = normalize_sample(sample_input, specs)
    path = source_path(source)
    if path is not None:
        check_source_file(path, max_bytes=max_bytes)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "model.onnx"
    try:
        return _run(
            source,
            framework=framework,
            out_dir=out_dir,
            base=base,
            specs=specs,
            sample=sample,
            bare=isinstance(sample_input, np.ndarray) and not specs,
            trust_pickle=trust_pickle,
            tolerance=Tolerance(rtol=rtol, atol=atol),
            variants=variants,
            tensorrt=tensorrt,
            max_bytes=max_bytes,
            say=say,
            variant_tolerances=variant_tolerances,
            benchmark_seconds=benchmark_seconds,
            benchmark_batch=benchmark_batch,
            threads=threads,
            tensorrt_profile=tensorrt_profile,
            parity_batch=parity_batch,
        )
    except BaseException:
        # A failed conversion leaves nothing a later step could mistake for a result.
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            base.unlink(missing_ok=True)
        raise


def _run(
    source: object,
    *,
    framework: str,
    out_dir: Path,
    base: Path,
    specs: list[TensorSpec] | None,
    sample: Arrays | None,
    bare: bool,
    trust_pickle: bool,
    tolerance: Tolerance,
    variants: tuple[str, ...],
    tensorrt: bool,
    max_bytes: int,
    say: Callable[[str], None],
    variant_tolerances: Mapping[str, Tolerance] | None,
    benchmark_seconds: float,
    benchmark_batch: int,
    threads: int | None,
    tensorrt_profile: tuple[int, int, int],
    parity_batch: int,
) -> ConversionReport:
    warnings: list[str] = []

    say(f"[1/6] convert: {framework} -> ONNX")
    converted = _to_onnx(
        framework,
        source,
        base,
        inputs=specs,
        sample=sample,
        trust_pickle=trust_pickle,
        max_bytes=max_bytes,
        progress=say,
    )
    warnings += converted.warnings
    say("[2/6] check: onnx.checker, shape inference, signature")
    info = inspect_onnx(base, max_bytes=max_bytes)
    if not info.signature.batched:
        warnings.append("the signature has no dynamic batch dimension: Triton cannot batch it")

    inputs_for_parity = conform_inputs(
        parity_inputs(converted, sample, info, parity_batch), info.signature, warnings, bare=bare
    )
    rows = next(iter(inputs_for_parity.values())).shape[0]
    reference_name = f"{converted.framework} {converted.framework_version}"
    say(f"[3/6] parity: {reference_name} vs onnxruntime on {rows} rows")
    reference = converted.reference(inputs_for_parity)
    try:
        base_outputs = run_onnx(base, inputs_for_parity)
    except Exception as exc:  # onnxruntime's own exception types
        raise InvalidModelFile(
            f"onnxruntime cannot run the converted model: {first_error_lines(exc)}",
            hint="an operator onnxruntime does not implement, or inputs of the wrong shape",
        ) from exc
    parity = compare(
        base_outputs,
        reference,
        tolerance,
        reference_name=reference_name,
        candidate_name="onnx",
        batch=rows,
    )
    raise_if_failed(parity, what=f"{converted.source} ({framework})")
    candidates = [Candidate("onnx", str(base), "cpu", parity, True)]

    scale = output_scale(reference)
    for name in variants:
        say(f"[4/6] optimise: {name}")
        try:
            candidate = _check_candidate(
                name,
                build_variant(name, base),
                inputs=inputs_for_parity,
                reference=reference,
                reference_name=reference_name,
                tolerance=variant_tolerance(
                    name, tolerance, scale=scale, overrides=variant_tolerances
                ),
                max_bytes=max_bytes,
            )
        except (VariantUnavailable, InvalidInput) as exc:
            warnings.append(f"variant {name} not available: {exc}")
            continue
        except Exception as exc:  # onnxruntime could not run the variant
            warnings.append(f"variant {name} cannot run: {first_error_lines(exc, limit=300)}")
            continue
        if not candidate.passed:
            warnings.append(
                f"variant {name} failed parity: {candidate.parity and candidate.parity.summary()}"
            )
        candidates.append(candidate)

    trt_status: dict[str, Any] = {"status": "not requested"}
    if tensorrt:
        say("[5/6] tensorrt: ONNX -> TensorRT plan")
        from converters.tensorrt_plan import plan_candidate

        trt_candidate, trt_status = plan_candidate(
            base,
            inputs=inputs_for_parity,
            base_outputs=base_outputs,
            tolerance=variant_tolerance(
                "fp16", tolerance, scale=scale, overrides=variant_tolerances
            ),
            profile=tensorrt_profile,
            bench_seconds=benchmark_seconds,
            bench_batch=benchmark_batch,
            progress=say,
        )
        if trt_candidate is not None:
            candidates.append(trt_candidate)
        if trt_status["status"] == "failed":
            warnings.append(f"tensorrt: {trt_status['reason']}")

    for candidate in candidates:
        if candidate.target != "cpu":
            continue
        say(f"[6/6] benchmark: {candidate.name} (onnxruntime, CPU)")
        bench = benchmark_onnx(
            Path(candidate.path),
            inputs_for_parity,
            batch=benchmark_batch,
            seconds=benchmark_seconds,
            threads=threads,
            batched=info.signature.batched,
        )
        candidate.benchmark = bench
        candidate.latency_ms_p50 = bench.latency_ms_p50
        candidate.throughput_per_s = bench.throughput_per_s

    recommended = choose_recommended(candidates)
    chosen = next((c for c in candidates if c.name == recommended), None)
    gpu = choose_recommended(candidates, target="gpu")
    report = ConversionReport(
        onnx_path=base,
        signature=info.signature,
        parity=parity,
        candidates=candidates,
        recommended=recommended,
        recommended_path=Path(chosen.path) if chosen else None,
        recommended_gpu=gpu,
        tensorrt=trt_status,
        lineage=lineage(converted, info, trt_status),
        warnings=warnings,
    )
    (out_dir / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    say(f"done: recommended {recommended}" + (f", on GPU {gpu}" if gpu else ""))
    return report


def parse_input_spec(text: str) -> TensorSpec:
    """``NAME:DTYPE:SHAPE`` (``x:float32:-1,8``) -> TensorSpec; DTYPE numpy or KServe."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise InvalidInput(
            f"invalid input spec {text!r}", hint="write NAME:DTYPE:SHAPE, e.g. x:float32:-1,8"
        )
    name, dtype, shape_text = parts
    check_tensor_name(name, where="--input")
    datatype = dtype.upper() if dtype.upper() in KSERVE_TO_NUMPY else None
    if datatype is None:
        try:
            datatype = NUMPY_TO_KSERVE.get(np.dtype(dtype).name)
        except TypeError:
            datatype = None
    if datatype is None:
        raise InvalidInput(f"unknown dtype {dtype!r} in {text!r}", hint="e.g. float32, int64, FP32")
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
    except ValueError as exc:
        raise InvalidInput(f"invalid shape {shape_text!r} in {text!r}", hint="e.g. -1,8") from exc
    if any(d == 0 or d < -1 for d in shape):
        raise InvalidInput(f"invalid shape {shape_text!r}: dims are positive or -1")
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def _load_sample(path: Path) -> Arrays | np.ndarray:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    return np.load(path, allow_pickle=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.api",
        description="Convert a model to ONNX, check parity, optimise and benchmark it.",
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--input", action="append", default=[], help="NAME:DTYPE:SHAPE")
    parser.add_argument("--sample", type=Path, help=".npy (one input) or .npz (named inputs)")
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--optimize", default="", help="comma list: ort,onnxslim,fp16,int8")
    parser.add_argument("--tensorrt", action="store_true")
    parser.add_argument("--max-bytes", type=int, default=2 * 1024**3)
    parser.add_argument("--benchmark-seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = convert(
            args.source,
            framework=args.framework,
            out_dir=args.out_dir,
            inputs=[parse_input_spec(t) for t in args.input] or None,
            sample_input=_load_sample(args.sample) if args.sample else None,
            trust_pickle=args.trust_pickle,
            rtol=args.rtol,
            atol=args.atol,
            optimize=[v for v in args.optimize.split(",") if v],
            tensorrt=args.tensorrt,
            max_bytes=args.max_bytes,
            benchmark_seconds=args.benchmark_seconds,
            progress=lambda message: print(message, file=sys.stderr),
        )
    except LastmileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    for c in report.candidates:
        print(
            f"{c.name:10s} {c.target:4s} parity={'ok' if c.passed else 'FAIL'} "
            f"p50={c.latency_ms_p50 or float('nan'):.3f} ms "
            f"throughput={c.throughput_per_s or float('nan'):.0f}/s  {c.path}"
        )
    print(f"recommended: {report.recommended} ({report.recommended_path})")
    print(f"tensorrt: {report.tensorrt.get('status')} {report.tensorrt.get('reason', '')}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
