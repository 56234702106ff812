"""Per-variant figures from two readings of the gateway's /metrics (manager.observe.gateway):
the exposition is the gateway's own collector's (rollout.gateway_metrics), read back by the
parser the rollouts use (manager.services.gateway_figures)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from manager.observe.gateway import variant_figures, variant_of
from manager.services import gateway_figures
from rollout.gateway_metrics import GatewayStats, GaugeSource, make_registry

ROUTE, VARIANT = "default/fraud", "fraud/2"


def reading(stats: GatewayStats) -> dict[tuple[str, str], object]:
    gauges = GaugeSource(
        generation=lambda: 1,
        client_connections=lambda: 0,
        upstream_connections=dict,
        upstream_up=dict,
    )
    text = generate_latest(make_registry(stats, gauges)).decode()
    return {k: v.counters() for k, v in gateway_figures.parse(text).items()}


def by_name(figures: list) -> dict[str, float]:  # type: ignore[type-arg]
    return {f.name: f.value for f in figures if (f.pipeline, f.version) == ("fraud", 2)}


def test_requests_errors_and_percentiles_of_the_interval_only() -> None:
    stats = GatewayStats()
    for _ in range(100):  # before the interval: fast answers
        stats.observe(ROUTE, VARIANT, "http", 200, 0.0008)
    before = reading(stats)
    for i in range(40):  # in the interval: slow answers, two server errors, one unknown model
        stats.observe(ROUTE, VARIANT, "http", 500 if i < 2 else 200, 0.2)
    stats.observe(ROUTE, VARIANT, "grpc", 404, 0.2)
    got = by_name(variant_figures(before, reading(stats), 4.0))  # type: ignore[arg-type]
    assert got["gateway_requests_per_s"] * 4 == pytest.approx(41)
    assert got["gateway_errors_per_s"] * 4 == pytest.approx(2)  # a 404 is the client's mistake
    # every answer of the interval took 200 ms: the percentiles sit in the (100, 250] ms bucket
    # (the cumulative histogram, mostly 0.8 ms answers, would say under 1 ms)
    for q in ("p50", "p95", "p99"):
        assert 100 < got[f"gateway_latency_{q}_ms"] <= 250


def test_a_gateway_restart_gives_the_new_counters_never_a_negative_rate() -> None:
    old = GatewayStats()
    for _ in range(500):
        old.observe(ROUTE, VARIANT, "http", 200, 0.001)
    new = GatewayStats()  # restarted: counting from zero again
    for _ in range(30):
        new.observe(ROUTE, VARIANT, "http", 200, 0.001)
    got = by_name(variant_figures(reading(old), reading(new), 2.0))  # type: ignore[arg-type]
    assert got["gateway_requests_per_s"] * 2 == pytest.approx(30)
    assert all(v >= 0 for v in got.values())


def test_a_first_reading_gives_no_figures_and_a_new_variant_counts_from_zero() -> None:
    stats = GatewayStats()
    stats.observe(ROUTE, VARIANT, "http", 200, 0.001)
    assert variant_figures(None, reading(stats), 5.0) == []  # type: ignore[arg-type]
    got = by_name(variant_figures({}, reading(stats), 5.0))  # type: ignore[arg-type]
    assert got["gateway_requests_per_s"] == pytest.approx(0.2)


def test_series_of_no_pipeline_version_are_left_out() -> None:
    stats = GatewayStats()
    stats.count("_unknown", "", "http", 404)
    stats.observe("default/fraud", "other/1", "http", 200, 0.001)
    assert variant_figures({}, reading(stats), 1.0) == []  # type: ignore[arg-type]
    assert variant_of("default/fraud", "fraud/12") == ("default", "fraud", 12)
    assert variant_of("_unknown", "") is None
