"""ONNX to a TensorRT plan, built by us on the GPU that will serve it (DESIGN §5).

A plan is specific to a GPU model and a TensorRT version, so it is never uploaded: it is built
here from the parity-checked ONNX with the TensorRT Python API, with one optimisation profile
covering batch sizes min/opt/max (Triton's dynamic batcher sends any size in that range), a
timing cache kept next to the plan so a rebuild on the same GPU takes seconds instead of
minutes, and reduced precision:

- TensorRT 8/10: the ``FP16`` builder flag lets the builder pick FP16 kernels where it likes.
- TensorRT 11 removed that flag (networks are strongly typed), so the ONNX is first converted
  to float16 with float32 inputs and outputs kept (onnxconverter-common), then built.

The plan is then run on the parity inputs (cuda-python's runtime API moves the buffers) and
compared with onnxruntime. Without a GPU or without the ``tensorrt`` package nothing is
attempted and the report says "skipped" with the reason: that is the normal case on a laptop
and in CI, not an error.

Run alone: ``python -m converters.tensorrt_plan model.onnx --out model.plan``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.benchmark import benchmark_callable
from converters.common import Arrays, Progress, first_error_lines, tile_batch
from converters.parity import Tolerance, compare
from converters.report import Candidate

log = logging.getLogger(__name__)

DEFAULT_PROFILE = (1, 8, 64)
WORKSPACE_BYTES = 2 << 30


class TensorRTFailed(Exception):
    """TensorRT could not parse or build the model; reported, not raised to the user."""


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        from cuda import cudart  # older cuda-python

        return cudart


def unavailable_reason() -> str | None:
    """Why a plan cannot be built here, or None when TensorRT and a GPU are both present."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("tensorrt not installed (pip install 'lastmile[tensorrt]')")
    try:
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count == 0:
            missing.append(f"no GPU (CUDA runtime: {getattr(err, 'name', err)})")
    except ImportError:
        missing.append("no GPU runtime (cuda-python not installed)")
    except Exception as exc:  # driver missing: the bindings raise on first use
        missing.append(f"no GPU ({first_error_lines(exc, limit=200)})")
    return "; ".join(missing) or None


def _check(result: Any) -> Any:
    cudart = _cudart()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise TensorRTFailed(f"CUDA runtime error {err}")
    return rest[0] if len(rest) == 1 else rest


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class PlanInfo:
    path: Path
    tensorrt_version: str
    precision: str
    profile: tuple[int, int, int]
    timing_cache: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "tensorrt_version": self.tensorrt_version,
            "precision": self.precision,
            "profile": list(self.profile),
            "timing_cache": str(self.timing_cache),
        }


def _fp16_onnx(onnx_path: Path) -> Path:
    import onnx
    from onnxconverter_common import float16

    target = onnx_path.with_name(f"{onnx_path.stem}.trt-fp16.onnx")
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    sample: Arrays,
    profile: tuple[int, int, int] = DEFAULT_PROFILE,
    fp16: bool = True,
    timing_cache: Path | None = None,
) -> PlanInfo:
    """Build and serialise a plan; dims other than the batch are taken from ``sample``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _major(trt) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    source, precision = onnx_path, "fp32"
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
        precision = "fp16 (builder flag)"
    elif fp16:
        source, precision = _fp16_onnx(onnx_path), "fp16 (float16 ONNX, strongly typed)"
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTFailed("TensorRT cannot parse the ONNX model: " + " | ".join(errors[:3]))
    low, opt, high = profile
    shapes = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        known = sample[tensor.name].shape if tensor.name in sample else None
        fixed = [
            d if d >= 0 or axis == 0 or known is None else known[axis]
            for axis, d in enumerate(dims)
        ]
        if any(d < 0 for d in fixed[1:]):
            raise TensorRTFailed(f"input {tensor.name!r} has unknown dims {dims}")
        if dims and dims[0] < 0:
            shapes.set_shape(tensor.name, [low, *fixed[1:]], [opt, *fixed[1:]], [high, *fixed[1:]])
        else:
            shapes.set_shape(tensor.name, fixed, fixed, fixed)
    config.add_optimization_profile(shapes)
    cache_path = timing_cache or plan_path.with_suffix(".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTFailed("TensorRT failed to build the engine (see the TensorRT log)")
    plan_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return PlanInfo(plan_path, str(trt.__version__), precision, profile, cache_path)


class PlanRunner:
    """Runs a serialized plan on numpy inputs: host -> device, execute, device -> host."""

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise TensorRTFailed(f"{plan_path.name}: TensorRT cannot deserialize the plan")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def _device(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = int(_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def run(self, arrays: Arrays) -> Arrays:
        trt, cudart = self._trt, self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            host = np.ascontiguousarray(arrays[name], dtype=dtype)
            self.context.set_input_shape(name, host.shape)
            pointer = self._device(name, host.nbytes)
            _check(cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, h2d))
            self.context.set_tensor_address(name, pointer)
        results: Arrays = {}
        for name in self.outputs:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            results[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
            self.context.set_tensor_address(name, self._device(name, results[name].nbytes))
        if not self.context.execute_async_v3(int(self.stream)):
            raise TensorRTFailed("TensorRT execution failed")
        _check(cudart.cudaStreamSynchronize(self.stream))
        for name, host in results.items():
            pointer = self._buffers[name][0]
            _check(cudart.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, d2h))
        return results

    def close(self) -> None:
        for pointer, _size in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self.stream)


def plan_candidate(
    base: Path,
    *,
    inputs: Arrays,
    base_outputs: Arrays,
    tolerance: Tolerance,
    profile: tuple[int, int, int],
    bench_seconds: float,
    bench_batch: int,
    progress: Progress,
) -> tuple[Candidate | None, dict[str, Any]]:
    """Build, check against onnxruntime and benchmark a plan; report why when it cannot."""
    reason = unavailable_reason()
    if reason:
        progress(f"tensorrt: skipped: {reason}")
        return None, {"status": "skipped", "reason": f"skipped: {reason}"}
    plan_path = base.with_suffix(".plan")
    try:
        progress(f"tensorrt: building a plan, batch profile min/opt/max {profile}")
        info = build_plan(base, plan_path, sample=inputs, profile=profile)
        runner = PlanRunner(plan_path)
        try:
            outputs = runner.run(inputs)
            rows = next(iter(inputs.values())).shape[0]
            parity = compare(
                outputs,
                base_outputs,
                tolerance,
                reference_name="onnxruntime",
                candidate_name="tensorrt",
                batch=rows,
            )
            progress("tensorrt: benchmarking the plan on the GPU")
            bench = benchmark_callable(
                runner.run,
                tile_batch(inputs, 1),
                tile_batch(inputs, min(bench_batch, profile[2])),
                seconds=bench_seconds,
            )
        finally:
            runner.close()
    except Exception as exc:  # TensorRTFailed, CUDA errors: the ONNX candidates still stand
        log.warning("TensorRT plan not built: %s", exc)
        return None, {"status": "failed", "reason": first_error_lines(exc)}
    candidate = Candidate(
        "tensorrt",
        str(plan_path),
        "gpu",
        parity,
        parity.passed,
        latency_ms_p50=bench.latency_ms_p50,
        throughput_per_s=bench.throughput_per_s,
        benchmark=bench,
        note=None if parity.passed else f"parity failed: {parity.summary()}",
    )
    return candidate, {"status": "built", **info.to_dict(), "parity_passed": parity.passed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.tensorrt_plan",
        description="Build a TensorRT plan from an ONNX model (needs a GPU and tensorrt).",
    )
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="plan file to write")
    parser.add_argument("--profile", default="1,8,64", help="min,opt,max batch")
    parser.add_argument("--no-fp16", action="store_true")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(json.dumps({"status": "skipped", "reason": reason}))
        return 0
    import onnxruntime as ort

    from converters.common import arrays_from_specs
    from manager.domain import TensorSpec

    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    specs = [
        TensorSpec(i.name, "FP32", tuple(d if isinstance(d, int) else -1 for d in i.shape))
        for i in session.get_inputs()
    ]
    low, opt, high = (int(v) for v in args.profile.split(","))
    try:
        info = build_plan(
            args.onnx,
            args.out,
            sample=arrays_from_specs(specs, batch=opt),
            profile=(low, opt, high),
            fp16=not args.no_fp16,
        )
    except TensorRTFailed as exc:
        print(json.dumps({"status": "failed", "reason": str(exc)}))
        return 1
    print(json.dumps({"status": "built", **info.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
