"""Triton's /metrics text -> series, and two scrapes of one server -> per-interval figures.

Triton's per-model families are cumulative counters since the model (version) was loaded.
Between two scrapes of the same server:

- a counter's growth is ``after - before``;
- a model whose counters went down was reloaded or its server restarted: every counter of that
  model (version) restarted from zero together, so the interval's growth is the new value
  (Prometheus' ``rate`` does the same). A reset followed by more traffic than before cannot be
  seen from the numbers alone; ``Scrape.empty`` after a restart the control plane knows of
  avoids that case;
- a series absent from the earlier scrape is new (a model loaded in between) and grew from 0;
- gauges are read as they are at the end of the interval.

So a rate is never negative, and the figures of consecutive intervals add up to the counters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from manager.observe.figures import Figure, Labels, labels_of

KEEP_PREFIX = "nv_"

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
INFERENCES = "nv_inference_count"
EXECUTIONS = "nv_inference_exec_count"
REQUEST_US = "nv_inference_request_duration_us"
QUEUE_US = "nv_inference_queue_duration_us"
COMPUTE_US = (
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
CACHE_HITS = "nv_cache_num_hits_per_model"
CACHE_MISSES = "nv_cache_num_misses_per_model"
PENDING = "nv_inference_pending_request_count"

# cumulative per-model families whose growth the figures are made of
MODEL_COUNTERS = frozenset(
    {SUCCESS, FAILURE, INFERENCES, EXECUTIONS, REQUEST_US, QUEUE_US, *COMPUTE_US, CACHE_HITS,
     CACHE_MISSES}
)  # fmt: skip
# counters whose growth per second is a figure of its own
COUNTED = (
    (INFERENCES, "inferences_per_s"),
    (EXECUTIONS, "executions_per_s"),
    (CACHE_HITS, "cache_hits_per_s"),
    (CACHE_MISSES, "cache_misses_per_s"),
)
# gauges stored as read: Triton family -> figure name (GPU families carry ``gpu_uuid``)
GAUGES = {
    PENDING: "pending_requests",
    "nv_cpu_utilization": "cpu_utilization",
    "nv_cpu_memory_used_bytes": "cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes": "cpu_memory_total_bytes",
    "nv_gpu_utilization": "gpu_utilization",
    "nv_gpu_memory_used_bytes": "gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes": "gpu_memory_total_bytes",
    "nv_gpu_power_usage": "gpu_power_w",
    "nv_gpu_power_limit": "gpu_power_limit_w",
}
GPU_LABEL = "gpu_uuid"

# (family, model, model version, other labels)
SeriesKey = tuple[str, str, str, Labels]


@dataclass(frozen=True)
class Sample:
    """One ``nv_*`` sample as Triton names it: the family (counters without the parser's
    ``_total``), the model and version labels taken out, the other labels kept."""

    family: str
    model: str
    version: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> Iterator[Sample]:
    """Every ``nv_*`` sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(KEEP_PREFIX):
                continue
            name = family.name if sample.name == f"{family.name}_total" else sample.name
            labels = dict(sample.labels)
            model = labels.pop("model", "")
            version = labels.pop("version", "")
            yield Sample(name, model, version, labels, float(sample.value))


@dataclass(frozen=True)
class Scrape:
    """One reading of one server: ``ts`` in seconds (epoch), series -> value."""

    ts: float
    series: Mapping[SeriesKey, float] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Iterable[Sample], *, ts: float) -> Scrape:
        series = {(s.family, s.model, s.version, labels_of(s.labels)): s.value for s in samples}
        return cls(ts=ts, series=series)

    @classmethod
    def parse(cls, text: str, *, ts: float) -> Scrape:
        return cls.of(parse_samples(text), ts=ts)

    @classmethod
    def empty(cls, ts: float) -> Scrape:
        """What a server restarted at ``ts`` had counted: nothing (its counters start at 0)."""
        return cls(ts=ts)


def _counters(scrape: Scrape) -> dict[tuple[str, str], dict[tuple[str, Labels], float]]:
    """(model, version) -> (family, labels) -> value, for the per-model counters."""
    groups: dict[tuple[str, str], dict[tuple[str, Labels], float]] = defaultdict(dict)
    for (family, model, version, labels), value in scrape.series.items():
        if family in MODEL_COUNTERS and model:
            groups[(model, version)][(family, labels)] = value
    return groups


def gauge_figures(scrape: Scrape) -> list[Figure]:
    out = []
    for (family, model, version, labels), value in scrape.series.items():
        name = GAUGES.get(family)
        if name is None:
            continue
        kept = tuple(("gpu", v) if k == GPU_LABEL else (k, v) for k, v in labels)
        out.append(Figure(name, value, model, version, labels_of(kept)))
    return out


def growth(
    before: Mapping[tuple[str, Labels], float], after: Mapping[tuple[str, Labels], float]
) -> dict[tuple[str, Labels], float]:
    """Each counter's growth over the interval; all of them from zero when any went down
    (the model was reloaded or its server restarted: they reset together)."""
    reset = any(value < before[key] for key, value in after.items() if key in before)
    return {
        key: value if reset or key not in before else value - before[key]
        for key, value in after.items()
    }


def model_figures(
    model: str, version: str, delta: Mapping[tuple[str, Labels], float], interval_s: float
) -> list[Figure]:
    """The figures of one model (version) from its counters' growth over ``interval_s``."""

    def grew(family: str) -> float:
        return sum(v for (f, _labels), v in delta.items() if f == family)

    def has(family: str) -> bool:
        return any(f == family for f, _labels in delta)

    def figure(name: str, value: float, labels: Labels = ()) -> Figure:
        return Figure(name, value, model, version, labels)

    success = grew(SUCCESS)
    out = [figure("requests_per_s", success / interval_s)]
    for (family, labels), value in sorted(delta.items()):
        if family == FAILURE and value > 0:
            out.append(figure("failures_per_s", value / interval_s, labels))
    for family, name in COUNTED:
        if has(family):
            out.append(figure(name, grew(family) / interval_s))
    if grew(EXECUTIONS) > 0:
        out.append(figure("batch_size_avg", grew(INFERENCES) / grew(EXECUTIONS)))
    if success > 0:
        if has(REQUEST_US):
            out.append(figure("request_ms_avg", grew(REQUEST_US) / success / 1000))
        if has(QUEUE_US):
            out.append(figure("queue_ms_avg", grew(QUEUE_US) / success / 1000))
    computed = success - grew(CACHE_HITS)
    if computed > 0 and any(has(f) for f in COMPUTE_US):
        compute_us = sum(grew(f) for f in COMPUTE_US)
        out.append(figure("compute_ms_avg", compute_us / computed / 1000))
    return out


def triton_figures(before: Scrape | None, after: Scrape) -> list[Figure]:
    """The figures of the interval between two scrapes of one server: gauges always, rates
    and averages only when there is an earlier scrape to compare with."""
    out = gauge_figures(after)
    if before is None or after.ts <= before.ts:
        return out
    interval_s = after.ts - before.ts
    earlier = _counters(before)
    for (model, version), now in sorted(_counters(after).items()):
        delta = growth(earlier.get((model, version), {}), now)
        out.extend(model_figures(model, version, delta, interval_s))
    return out
