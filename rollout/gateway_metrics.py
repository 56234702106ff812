"""Gateway counters kept as plain dicts and lists, turned into Prometheus text only on scrape.

prometheus_client's Counter/Histogram take a lock and walk label dicts on every observation;
at several thousand requests per second on a 2-core box that is measurable. Here the hot path
does one dict increment and one bisect, the event loop being the only writer, and a custom
collector renders everything when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from rollout.upstream_errors import error_class

# Seconds. Inference spans sub-millisecond CPU models to multi-second LLM calls.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip

LOOP_PROBE_S = 0.01  # the event-loop lag probe's period (rollout.gateway)
UNKNOWN_ROUTE = "_unknown"  # one label for every unknown name: callers cannot blow up cardinality
PROTOCOLS = ("http", "grpc")
SHADOW_OUTCOMES = ("ok", "error", "timeout", "dropped")


class Timing:
    """Non-cumulative bucket counts of one histogram series; cumulated when rendered."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


class GatewayStats:
    """Live figures per (route, variant), one label scheme for HTTP and gRPC.

    The canary controller compares variants of one route with these, so every series is keyed
    by the route key ("<workspace>/<pipeline>") and the variant ("<pipeline>/<version>"; ""
    when the gateway refused a request before choosing one). `code` is always an HTTP status
    (gRPC statuses map through `grpc_code_to_http`). Only the event loop thread writes.
    """

    __slots__ = (
        "inflight",
        "loop_lag",
        "requests",
        "shadow_requests",
        "shadow_timings",
        "timings",
    )

    def __init__(self) -> None:
        # how late the event loop ran a timer (Gateway._watch_loop): what every request that
        # arrived meanwhile waited before the gateway looked at it
        self.loop_lag = Timing()
        self.requests: dict[tuple[str, str, str, int], int] = {}
        self.timings: dict[tuple[str, str], Timing] = {}
        self.inflight: dict[tuple[str, str], int] = {}
        self.shadow_requests: dict[tuple[str, str, str], int] = {}
        self.shadow_timings: dict[tuple[str, str], Timing] = {}

    def observe(self, route: str, variant: str, protocol: str, code: int, seconds: float) -> None:
        """A request answered (by the variant's upstream, or by the gateway on its behalf)."""
        key = (route, variant, protocol, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        series = (route, variant)
        timing = self.timings.get(series)
        if timing is None:
            timing = self.timings[series] = Timing()
        timing.add(seconds)

    def count(self, route: str, variant: str, protocol: str, code: int) -> None:
        """A request refused by the gateway itself before any upstream saw it: counted, but
        kept out of the latency histogram (its near-zero time would hide real latencies)."""
        key = (route, variant, protocol, code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def enter(self, route: str, variant: str) -> None:
        key = (route, variant)
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def leave(self, route: str, variant: str) -> None:
        key = (route, variant)
        self.inflight[key] = self.inflight.get(key, 0) - 1

    def shadow(self, route: str, variant: str, outcome: str, seconds: float | None) -> None:
        """One mirrored copy sent to `variant`: ok | error | timeout | dropped (never sent)."""
        key = (route, variant, outcome)
        self.shadow_requests[key] = self.shadow_requests.get(key, 0) + 1
        if seconds is not None:
            series = (route, variant)
            timing = self.shadow_timings.get(series)
            if timing is None:
                timing = self.shadow_timings[series] = Timing()
            timing.add(seconds)


@dataclass
class GaugeSource:
    """Callables the collector reads at scrape time (all cheap, none touch the network)."""

    generation: Callable[[], int | None]
    client_connections: Callable[[], int]
    upstream_connections: Callable[[], dict[str, int]]
    upstream_up: Callable[[], dict[str, bool]]
    grpc_paths: Callable[[], dict[str, int]] = dict
    # (captured, dropped) calls per route key (rollout.capture)
    capture: Callable[[], tuple[dict[str, int], dict[str, int]]] = lambda: ({}, {})
    # gateway processes by state ('up', 'down'): the leader's count of its workers
    # (rollout.gateway_workers); a follower reports none, so that a merged scrape counts once
    workers: Callable[[], dict[str, int]] = dict


def _histogram(
    family: HistogramMetricFamily, labels: list[str], timing: Timing
) -> HistogramMetricFamily:
    running = 0
    buckets = []
    for bound, count in zip(BUCKETS, timing.counts, strict=False):
        running += count
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", timing.count))
    family.add_metric(labels, buckets, sum_value=timing.total)
    return family


class GatewayCollector(Collector):
    """Renders GatewayStats and a few gauges in the Prometheus exposition format."""

    def __init__(self, stats: GatewayStats, gauges: GaugeSource) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        request_items = sorted(stats.requests.items())
        requests = CounterMetricFamily(
            "lastmile_gateway_requests",
            "Inference requests answered by the gateway, by route (workspace/pipeline), variant "
            "(pipeline/version; empty: refused before one was chosen), protocol (http, grpc) "
            "and code (the HTTP status; gRPC statuses as their HTTP equivalents).",
            labels=["route", "variant", "protocol", "code"],
        )
        for (route, variant, protocol, code), value in request_items:
            requests.add_metric([route, variant, protocol, str(code)], value)
        yield requests

        # Derived at scrape time from the counters above: the hot path pays nothing for it.
        errors = CounterMetricFamily(
            "lastmile_gateway_errors",
            "Inference requests that failed, by route, variant (empty: refused by the gateway "
            "before one was chosen) and class: 'client' (4xx) or 'server' (5xx), both "
            "protocols together.",
            labels=["route", "variant", "class"],
        )
        by_class: dict[tuple[str, str, str], int] = {}
        for (route, variant, _protocol, code), value in request_items:
            kind = error_class(code)
            if kind is not None:
                key = (route, variant, kind)
                by_class[key] = by_class.get(key, 0) + value
        for (route, variant, kind), value in sorted(by_class.items()):
            errors.add_metric([route, variant, kind], value)
        yield errors

        duration = HistogramMetricFamily(
            "lastmile_gateway_request_duration_seconds",
            "Time from a complete inference request to its complete response, per route and "
            "variant.",
            labels=["route", "variant"],
        )
        for (route, variant), timing in sorted(stats.timings.items()):
            _histogram(duration, [route, variant], timing)
        yield duration

        inflight = GaugeMetricFamily(
            "lastmile_gateway_inflight",
            "Inference requests forwarded to a variant and not answered yet.",
            labels=["route", "variant"],
        )
        for (route, variant), value in sorted(stats.inflight.items()):
            inflight.add_metric([route, variant], value)
        yield inflight

        shadow = CounterMetricFamily(
            "lastmile_gateway_shadow_requests",
            "Copies of requests mirrored to a shadow variant, by outcome: ok, error, timeout, "
            "or dropped (the route's mirror queue was full; never sent).",
            labels=["route", "variant", "outcome"],
        )
        for (route, variant, outcome), value in sorted(stats.shadow_requests.items()):
            shadow.add_metric([route, variant, outcome], value)
        yield shadow

        shadow_duration = HistogramMetricFamily(
            "lastmile_gateway_shadow_duration_seconds",
            "Latency of mirrored requests (to their answer, error or timeout), per route and "
            "shadow variant.",
            labels=["route", "variant"],
        )
        for (route, variant), timing in sorted(stats.shadow_timings.items()):
            _histogram(shadow_duration, [route, variant], timing)
        yield shadow_duration

        lag = HistogramMetricFamily(
            "lastmile_gateway_event_loop_lag_seconds",
            "How late the gateway's event loop ran a timer due every "
            f"{LOOP_PROBE_S * 1000:g} ms: the time a request that arrived meanwhile waited "
            "before the gateway looked at it (a burst of work on the loop, or a CPU shortage).",
        )
        yield _histogram(lag, [], stats.loop_lag)

        generation = self.gauges.generation()
        gen = GaugeMetricFamily(
            "lastmile_gateway_routing_generation",
            "Generation of the routing table in force (-1: none loaded).",
        )
        gen.add_metric([], -1 if generation is None else generation)
        yield gen

        clients = GaugeMetricFamily(
            "lastmile_gateway_client_connections", "Open client connections."
        )
        clients.add_metric([], self.gauges.client_connections())
        yield clients

        upstream_conns = GaugeMetricFamily(
            "lastmile_gateway_upstream_connections",
            "Open or opening connections to each upstream Triton.",
            labels=["upstream"],
        )
        for upstream, count in sorted(self.gauges.upstream_connections().items()):
            upstream_conns.add_metric([upstream], count)
        yield upstream_conns

        up = GaugeMetricFamily(
            "lastmile_gateway_upstream_up",
            "1 when the upstream answered /v2/health/ready recently.",
            labels=["upstream"],
        )
        for upstream, is_up in sorted(self.gauges.upstream_up().items()):
            up.add_metric([upstream], 1 if is_up else 0)
        yield up
        yield _grpc_paths(self.gauges.grpc_paths())
        yield _capture(*self.gauges.capture())
        workers = self.gauges.workers()
        if workers:
            family = GaugeMetricFamily(
                "lastmile_gateway_workers",
                "Gateway processes serving the data ports ('up') or being restarted ('down').",
                labels=["state"],
            )
            for state, count in sorted(workers.items()):
                family.add_metric([state], count)
            yield family


def _capture(captured: dict[str, int], dropped: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "lastmile_gateway_capture",
        "Inference calls sampled for data capture: 'captured' (queued to the spool) or "
        "'dropped' (the spool's memory or disk bound was reached).",
        labels=["route", "outcome"],
    )
    for outcome, counts in (("captured", captured), ("dropped", dropped)):
        for route, value in sorted(counts.items()):
            family.add_metric([route, outcome], value)
    return family


def _grpc_paths(counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "lastmile_gateway_grpc_calls",
        "gRPC calls by how the gateway's HTTP/2 relay handled them: 'fast' (a ModelInfer "
        "routed and answered at the frame level) or 'relayed' (handed to the full gRPC "
        "frontend: other methods, streams, compressed or refused calls).",
        labels=["path"],
    )
    for path, value in sorted(counts.items()):
        family.add_metric([path], value)
    return family


# Families whose merged value is the least of the processes' (rollout.gateway_workers): the
# generation every process serves, and an upstream only counts as up where all of them see it.
MERGED_BY_MIN = frozenset({"lastmile_gateway_routing_generation", "lastmile_gateway_upstream_up"})


def merge_exposition(texts: list[str]) -> list[Metric]:
    """The families of several processes' Prometheus text as one process's: counters,
    histograms and gauges summed per series (connections, requests in flight), except the
    MERGED_BY_MIN families."""
    families: dict[str, Metric] = {}
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                series[family.name] = {}
            values = series[family.name]
            by_min = family.name in MERGED_BY_MIN
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = values.get(key)
                if seen is None:
                    values[key] = sample.value
                else:
                    values[key] = min(seen, sample.value) if by_min else seen + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in series[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged_registry(texts: list[str]) -> CollectorRegistry:
    """A registry that renders `merge_exposition(texts)` (for generate_latest)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merge_exposition(texts)))
    return registry


def make_registry(stats: GatewayStats, gauges: GaugeSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(stats, gauges))
    return registry


# One vocabulary for the `code` label of both transports: the HTTP status. gRPC statuses map
# as KServe v2 and grpc-gateway map them; CANCELLED is nginx's 499 (client closed request).
_GRPC_HTTP = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def grpc_code_to_http(name: str) -> int:
    """The HTTP status that stands for gRPC status `name` in metric labels."""
    return _GRPC_HTTP.get(name, 500)
