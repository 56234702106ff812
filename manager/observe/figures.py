"""The names of the stored figures, one vocabulary for every source.

A figure is a number about one interval (ending at its timestamp): a rate (``*_per_s``), an
average per request (``*_ms_avg``, ``batch_size_avg``), a latency percentile, or a gauge read
at the end of the interval. The direct scraper and the Prometheus reader produce the same
names from the same definitions, so the two sources can be compared and read by one query.

Per Triton model (an ensemble is a pipeline version, a step model is a step):

    requests_per_s       successful requests (nv_inference_request_success)
    failures_per_s       failed requests, label ``reason`` (BACKEND, REJECTED, ...); only
                         stored when some failed in the interval
    inferences_per_s     inferences, counting each item of a batch (nv_inference_count)
    executions_per_s     model executions (batches) (nv_inference_exec_count)
    batch_size_avg       inferences per execution
    request_ms_avg       end-to-end time per successful request, ms
    queue_ms_avg         time in the scheduler's queue per successful request, ms
    compute_ms_avg       input + infer + output compute per request that was computed (not
                         answered from the response cache), ms
    cache_hits_per_s     response-cache hits (models with the cache on)
    cache_misses_per_s   response-cache misses
    pending_requests     requests waiting or running at the end of the interval (gauge)

Per server (workspace and pipeline empty; ``gpu`` label for GPU figures, where present):

    cpu_utilization, cpu_memory_used_bytes, cpu_memory_total_bytes,
    gpu_utilization, gpu_memory_used_bytes, gpu_memory_total_bytes, gpu_power_w,
    gpu_power_limit_w

Per gateway variant (what clients saw, both protocols together):

    gateway_requests_per_s, gateway_errors_per_s (answers that count against the variant:
    rollout's is_error), gateway_latency_p50_ms / _p95_ms / _p99_ms (from the interval's
    histogram, Prometheus' histogram_quantile)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

RATE_SUFFIX = "_per_s"
GATEWAY_PREFIX = "gateway_"

GATEWAY_FIGURES = (
    "gateway_requests_per_s",
    "gateway_errors_per_s",
    "gateway_latency_p50_ms",
    "gateway_latency_p95_ms",
    "gateway_latency_p99_ms",
)
QUANTILES = (("gateway_latency_p50_ms", 0.5), ("gateway_latency_p95_ms", 0.95),
             ("gateway_latency_p99_ms", 0.99))  # fmt: skip


# the order figures are shown in: what a person looks at first, first
ORDER = (
    *GATEWAY_FIGURES,
    "requests_per_s", "failures_per_s", "request_ms_avg", "queue_ms_avg", "compute_ms_avg",
    "batch_size_avg", "inferences_per_s", "executions_per_s", "cache_hits_per_s",
    "cache_misses_per_s", "pending_requests", "cpu_utilization", "cpu_memory_used_bytes",
    "cpu_memory_total_bytes", "gpu_utilization", "gpu_memory_used_bytes",
    "gpu_memory_total_bytes", "gpu_power_w", "gpu_power_limit_w",
)  # fmt: skip


def display_rank(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def labels_of(mapping: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """Labels in their one canonical order (sorted by name), so equal labels compare and
    store equal."""
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted((str(k), str(v)) for k, v in items))


def is_rate(name: str) -> bool:
    """Rates add up over time: their value x interval is a count."""
    return name.endswith(RATE_SUFFIX)


def figure_key(name: str, labels: Mapping[str, str]) -> str:
    """How a figure is shown: ``failures_per_s{reason="BACKEND"}`` (Prometheus' notation)."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of one interval of one Triton server: about a Triton model (``model`` and
    its ``model_version`` as Triton names them) or the whole server (``model`` empty)."""

    name: str
    value: float
    model: str = ""
    model_version: str = ""
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class VariantFigure:
    """One figure of one interval of one gateway variant (a pipeline version)."""

    workspace: str
    pipeline: str
    version: int
    name: str
    value: float
