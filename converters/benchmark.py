"""Bounded micro-benchmarks that decide which candidate format to recommend.

The numbers only have to rank candidates measured side by side on the same machine, in the
same process, with the same thread count, so each measurement is bounded in wall time rather
than in iterations: a slow model gets fewer runs, never a longer import. Latency is the median
at batch 1 (what one caller feels); throughput is rows per second at a larger batch (what
Triton's dynamic batcher can reach).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.common import Arrays, tile_batch


@dataclass(frozen=True)
class BenchmarkResult:
    latency_ms_p50: float
    latency_ms_p90: float
    latency_runs: int
    throughput_per_s: float
    throughput_batch: int
    throughput_runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p90": self.latency_ms_p90,
            "latency_runs": self.latency_runs,
            "throughput_per_s": self.throughput_per_s,
            "throughput_batch": self.throughput_batch,
            "throughput_runs": self.throughput_runs,
        }


def measure(
    call: Callable[[], object],
    *,
    seconds: float,
    min_runs: int = 3,
    max_runs: int = 100_000,
    warmup: int = 2,
) -> list[float]:
    """Seconds per call, for as many calls as fit in ``seconds`` (at least ``min_runs``)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_runs:
        start = time.perf_counter()
        call()
        end = time.perf_counter()
        times.append(end - start)
        if end >= deadline and len(times) >= min_runs:
            break
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def benchmark_callable(
    run: Callable[[Arrays], object],
    single: Arrays,
    batch: Arrays,
    *,
    seconds: float,
) -> BenchmarkResult:
    """Latency of ``run(single)`` and throughput of ``run(batch)``, half the budget each."""
    latencies = measure(lambda: run(single), seconds=seconds / 2)
    rows = next(iter(batch.values())).shape[0]
    batch_times = measure(lambda: run(batch), seconds=seconds / 2)
    return BenchmarkResult(
        latency_ms_p50=statistics.median(latencies) * 1e3,
        latency_ms_p90=percentile(latencies, 0.9) * 1e3,
        latency_runs=len(latencies),
        throughput_per_s=rows / statistics.median(batch_times),
        throughput_batch=rows,
        throughput_runs=len(batch_times),
    )


def ort_session(path: Path, *, threads: int | None = None) -> Any:
    """A CPU onnxruntime session with the runtime's default graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def benchmark_onnx(
    path: Path,
    sample: Arrays,
    *,
    batch: int,
    seconds: float,
    threads: int | None = None,
    batched: bool = True,
) -> BenchmarkResult:
    """Benchmark one ONNX file with onnxruntime on this CPU.

    ``sample`` rows are repeated to build the batch-1 and batch-``batch`` inputs; a model
    without a dynamic batch dimension is measured at its fixed shape only.
    """
    session = ort_session(path, threads=threads)
    names = [o.name for o in session.get_outputs()]
    wanted = [i.name for i in session.get_inputs()]
    feed = {name: sample[name] for name in wanted}
    single = tile_batch(feed, 1) if batched else feed
    large = tile_batch(feed, batch) if batched else feed
    return benchmark_callable(
        lambda inputs: session.run(names, inputs), single, large, seconds=seconds
    )
