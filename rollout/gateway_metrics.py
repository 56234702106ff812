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
from prometheus_client.registry import Collector

from rollout.upstream_errors import error_class

# Seconds. Inference spans sub-millisecond CPU models to multi-second LLM calls.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip

UNKNOWN_ROUTE = "_unknown"  # one label for every unknown name: callers cannot blow up cardinality


class RouteTiming:
    """Non-cumulative bucket counts for one route; cumulated when rendered."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0


class GatewayStats:
    """Request counters by (route, target, code) and a latency histogram per route."""

    __slots__ = ("requests", "timings")

    def __init__(self) -> None:
        # code: the HTTP status (int) for HTTP, the gRPC status name ("OK", "NOT_FOUND") for gRPC
        self.requests: dict[tuple[str, str, int | str], int] = {}
        self.timings: dict[str, RouteTiming] = {}

    def observe(self, route: str, target: str, code: int | str, seconds: float) -> None:
        key = (route, target, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        timing = self.timings.get(route)
        if timing is None:
            timing = self.timings[route] = RouteTiming()
        timing.counts[bisect_left(BUCKETS, seconds)] += 1
        timing.total += seconds
        timing.count += 1

    def count(self, route: str, target: str, code: int | str) -> None:
        """A request refused by the gateway itself before any upstream saw it: counted, but
        kept out of the latency histogram (its near-zero time would hide real latencies)."""
        key = (route, target, code)
        self.requests[key] = self.requests.get(key, 0) + 1


@dataclass
class GaugeSource:
    """Callables the collector reads at scrape time (all cheap, none touch the network)."""

    generation: Callable[[], int | None]
    client_connections: Callable[[], int]
    upstream_connections: Callable[[], dict[str, int]]
    upstream_up: Callable[[], dict[str, bool]]


class GatewayCollector(Collector):
    """Renders GatewayStats and a few gauges in the Prometheus exposition format."""

    def __init__(self, stats: GatewayStats, gauges: GaugeSource) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "lastmile_gateway_requests",
            "Inference requests answered by the gateway, by public route, Triton target and "
            "status: the HTTP code (200, 404, ...) or the gRPC status name (OK, NOT_FOUND, ...).",
            labels=["route", "target", "code"],
        )
        items = sorted(self.stats.requests.items(), key=lambda kv: (*kv[0][:2], str(kv[0][2])))
        for (route, target, code), value in items:
            requests.add_metric([route, target, str(code)], value)
        yield requests

        # Derived at scrape time from the counters above: the hot path pays nothing for it.
        errors = CounterMetricFamily(
            "lastmile_gateway_errors",
            "Inference requests that failed, by public route, Triton target (empty: refused by "
            "the gateway before reaching one) and class: 'client' (HTTP 4xx; gRPC "
            "INVALID_ARGUMENT, NOT_FOUND, ...) or 'server' (HTTP 5xx; gRPC INTERNAL, "
            "UNAVAILABLE, ...).",
            labels=["route", "target", "class"],
        )
        by_class: dict[tuple[str, str, str], int] = {}
        for (route, target, code), value in self.stats.requests.items():
            kind = error_class(code)
            if kind is not None:
                key = (route, target, kind)
                by_class[key] = by_class.get(key, 0) + value
        for (route, target, kind), value in sorted(by_class.items()):
            errors.add_metric([route, target, kind], value)
        yield errors

        duration = HistogramMetricFamily(
            "lastmile_gateway_request_duration_seconds",
            "Time from a complete inference request to its complete response, per route.",
            labels=["route"],
        )
        for route, timing in sorted(self.stats.timings.items()):
            running = 0
            buckets = []
            for bound, count in zip(BUCKETS, timing.counts, strict=False):
                running += count
                buckets.append((repr(bound), running))
            buckets.append(("+Inf", timing.count))
            duration.add_metric([route], buckets, sum_value=timing.total)
        yield duration

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


def make_registry(stats: GatewayStats, gauges: GaugeSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(stats, gauges))
    return registry
