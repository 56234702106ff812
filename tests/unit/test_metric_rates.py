"""Rates, averages and gauges from two Triton scrapes (manager.observe.triton): exact counts,
counter resets that never give a negative rate, failure reasons kept, GPU families named."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from manager.observe.figures import Figure
from manager.observe.triton import Scrape, parse_samples, triton_figures

# The shape of the embedded tritonserver 2.51's exposition (captured, then the values set
# per test); the GPU families are written as Triton documents them (none without a GPU).
TEMPLATE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="default.fraud.v1",version="1"}} {success}
nv_inference_request_success{{model="default.scaler",version="1"}} {scaler}
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{{model="default.fraud.v1",reason="OTHER",version="1"}} 0
nv_inference_request_failure{{model="default.fraud.v1",reason="BACKEND",version="1"}} {backend}
nv_inference_request_failure{{model="default.fraud.v1",reason="CANCELED",version="1"}} 0
nv_inference_request_failure{{model="default.fraud.v1",reason="REJECTED",version="1"}} {rejected}
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{{model="default.fraud.v1",version="1"}} {inferences}
# HELP nv_inference_exec_count Number of model executions performed
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{{model="default.fraud.v1",version="1"}} {executions}
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{{model="default.fraud.v1",version="1"}} {request_us}
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="default.fraud.v1",version="1"}} {queue_us}
# HELP nv_inference_compute_input_duration_us Cumulative compute input duration in microseconds
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{{model="default.fraud.v1",version="1"}} {input_us}
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in us
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{{model="default.fraud.v1",version="1"}} {infer_us}
# HELP nv_inference_compute_output_duration_us Cumulative inference compute output duration
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{{model="default.fraud.v1",version="1"}} {output_us}
# HELP nv_cache_num_hits_per_model Number of cache hits per model
# TYPE nv_cache_num_hits_per_model counter
nv_cache_num_hits_per_model{{model="default.fraud.v1",version="1"}} {hits}
# HELP nv_cache_num_misses_per_model Number of cache misses per model
# TYPE nv_cache_num_misses_per_model counter
nv_cache_num_misses_per_model{{model="default.fraud.v1",version="1"}} {misses}
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{{model="default.fraud.v1",version="1"}} {pending}
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization {cpu}
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{{gpu_uuid="GPU-7c1b"}} {gpu}
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{{gpu_uuid="GPU-7c1b"}} 2147483648
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{{gpu_uuid="GPU-7c1b"}} 71.5
# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started
# TYPE nv_energy_consumption counter
nv_energy_consumption{{gpu_uuid="GPU-7c1b"}} 12000
"""

ZERO = dict(
    success=0, scaler=0, backend=0, rejected=0, inferences=0, executions=0, request_us=0,
    queue_us=0, input_us=0, infer_us=0, output_us=0, hits=0, misses=0, pending=0, cpu=0.0,
    gpu=0.0,
)  # fmt: skip


def scrape(ts: float, **values: float) -> Scrape:
    return Scrape.parse(TEMPLATE.format(**{**ZERO, **values}), ts=ts)


Key = tuple[str, str, tuple[tuple[str, str], ...]]  # Triton model, figure, labels


def figures(before: Scrape | None, after: Scrape) -> dict[Key, float]:
    return {(f.model, f.name, f.labels): f.value for f in triton_figures(before, after)}


ENS = "default.fraud.v1"


def test_rate_times_interval_is_the_counters_growth() -> None:
    got = figures(
        scrape(100.0, success=1000, scaler=1000), scrape(105.0, success=1042, scaler=1042)
    )
    assert got[(ENS, "requests_per_s", ())] * 5.0 == pytest.approx(42)
    assert got[("default.scaler", "requests_per_s", ())] * 5.0 == pytest.approx(42)


def test_a_counter_reset_mid_stream_never_gives_a_negative_rate() -> None:
    """Served: 150 before the reload, then 20 and 30 more. Each interval's rate restarts from
    the new value after the reset, so the intervals add up to what was served since the first
    scrape (50 + 20 + 30), never below zero."""
    series = [
        scrape(0.0, success=100, request_us=10_000),
        scrape(5.0, success=150, request_us=15_000),
        scrape(10.0, success=20, request_us=4_000),  # reloaded: every counter restarted
        scrape(15.0, success=50, request_us=7_000),
    ]
    rates = []
    for before, after in itertools.pairwise(series):
        got = figures(before, after)
        rates.append(got[(ENS, "requests_per_s", ())])
        assert all(v >= 0 for v in got.values()), got
        # averages stay per request of the interval, the reset interval's included
        assert got[(ENS, "request_ms_avg", ())] == pytest.approx(0.1 if after.ts != 10 else 0.2)
    assert [r * 5 for r in rates] == pytest.approx([50, 20, 30])


def test_a_reset_of_one_model_leaves_the_others_alone() -> None:
    got = figures(scrape(0.0, success=100, scaler=100), scrape(5.0, success=10, scaler=130))
    assert got[(ENS, "requests_per_s", ())] * 5 == pytest.approx(10)
    assert got[("default.scaler", "requests_per_s", ())] * 5 == pytest.approx(30)


def test_a_restart_the_control_plane_saw_counts_everything_since_it() -> None:
    """After a restart with more traffic than before, the numbers alone cannot show the reset
    (600 > 500); from ``Scrape.empty`` at the restart the interval counts all of it."""
    got = figures(Scrape.empty(10.0), scrape(12.0, success=600))
    assert got[(ENS, "requests_per_s", ())] * 2 == pytest.approx(600)


def test_a_model_loaded_between_scrapes_grows_from_zero() -> None:
    before = Scrape.parse("", ts=0.0)
    got = figures(before, scrape(4.0, success=8, scaler=8))
    assert got[(ENS, "requests_per_s", ())] == pytest.approx(2.0)


def test_failures_keep_their_reason_and_only_failing_reasons_are_stored() -> None:
    got = figures(scrape(0.0, backend=1, rejected=0), scrape(2.0, backend=5, rejected=2))
    assert got[(ENS, "failures_per_s", (("reason", "BACKEND"),))] == pytest.approx(2.0)
    assert got[(ENS, "failures_per_s", (("reason", "REJECTED"),))] == pytest.approx(1.0)
    assert not [k for k in got if k[1] == "failures_per_s" and k[2][0][1] in ("OTHER", "CANCELED")]


def test_averages_are_per_request_and_per_execution() -> None:
    before = scrape(
        0.0, success=10, inferences=40, executions=10, request_us=20_000, queue_us=1_000,
        input_us=100, infer_us=5_000, output_us=100, hits=0, misses=10,
    )  # fmt: skip
    # 20 requests more, 5 of them answered from the cache; 15 computed in 5 batches of 12 items
    after = scrape(
        10.0, success=30, inferences=100, executions=15, request_us=60_000, queue_us=3_000,
        input_us=400, infer_us=20_000, output_us=400, hits=5, misses=25,
    )  # fmt: skip
    got = figures(before, after)
    assert got[(ENS, "requests_per_s", ())] == pytest.approx(2.0)
    assert got[(ENS, "request_ms_avg", ())] == pytest.approx(40_000 / 20 / 1000)
    assert got[(ENS, "queue_ms_avg", ())] == pytest.approx(2_000 / 20 / 1000)
    assert got[(ENS, "compute_ms_avg", ())] == pytest.approx(15_600 / 15 / 1000)
    assert got[(ENS, "batch_size_avg", ())] == pytest.approx(60 / 5)
    assert got[(ENS, "inferences_per_s", ())] == pytest.approx(6.0)
    assert got[(ENS, "executions_per_s", ())] == pytest.approx(0.5)
    assert got[(ENS, "cache_hits_per_s", ())] == pytest.approx(0.5)
    assert got[(ENS, "cache_misses_per_s", ())] == pytest.approx(1.5)


def test_an_idle_interval_has_rates_of_zero_and_no_averages() -> None:
    got = figures(scrape(0.0, success=7), scrape(5.0, success=7))
    assert got[(ENS, "requests_per_s", ())] == 0
    assert not [k for k in got if k[1].endswith("_avg")]


def test_gauges_are_stored_as_read_even_on_a_first_scrape() -> None:
    got = figures(None, scrape(0.0, success=5, pending=3, cpu=0.25, gpu=0.42))
    assert got[(ENS, "pending_requests", ())] == 3
    assert got[("", "cpu_utilization", ())] == 0.25
    assert not [k for k in got if k[1].endswith("_per_s")]  # no interval yet: no rates


def test_gpu_families_are_named_and_keep_the_gpu() -> None:
    gpu = (("gpu", "GPU-7c1b"),)
    got = figures(None, scrape(0.0, gpu=0.42))
    assert got[("", "gpu_utilization", gpu)] == 0.42
    assert got[("", "gpu_memory_used_bytes", gpu)] == 2147483648
    assert got[("", "gpu_power_w", gpu)] == 71.5


def test_samples_keep_triton_names_and_drop_other_families() -> None:
    text = (
        TEMPLATE.format(**ZERO)
        + "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n"
    )
    samples = list(parse_samples(text))
    assert {s.family for s in samples} >= {"nv_inference_request_success", "nv_energy_consumption"}
    assert not [s for s in samples if not s.family.startswith("nv_")]
    failure = next(s for s in samples if s.family == "nv_inference_request_failure")
    assert failure.model == ENS and failure.version == "1" and "reason" in failure.labels


def test_figures_compare_equal_when_labels_come_in_any_order() -> None:
    a = Scrape.parse('nv_cpu_utilization{a="1",b="2"} 1\n', ts=0)
    b = Scrape.parse('nv_cpu_utilization{b="2",a="1"} 1\n', ts=0)
    assert (
        triton_figures(None, a)
        == triton_figures(None, b)
        == [Figure("cpu_utilization", 1.0, "", "", (("a", "1"), ("b", "2")))]
    )


# A whole scrape of the embedded tritonserver (nvidia-pytriton 0.7.0, Triton 2.51) on an
# NVIDIA H200, GPU metrics on, serving the CPU-profile fraud chain and a KIND_GPU copy of its
# scaler after a few calls (two of them failed in the ensemble): the real exposition, unedited.
H200_SCRAPE = Path(__file__).parent / "data" / "triton_2_51_h200.metrics"
H200 = "GPU-edd528de-7af6-c7fe-d933-6d5c0078a48d"


def test_a_real_scrape_on_an_h200_gives_gpu_figures_per_gpu_and_model_rates() -> None:
    text = H200_SCRAPE.read_text()
    got = figures(Scrape.empty(90.0), Scrape.parse(text, ts=100.0))
    gpu = (("gpu", H200),)
    assert got[("", "gpu_utilization", gpu)] == 0
    assert got[("", "gpu_memory_used_bytes", gpu)] == 620756992
    assert got[("", "gpu_memory_total_bytes", gpu)] == 150754820096
    assert got[("", "gpu_power_w", gpu)] == pytest.approx(122.175)
    assert got[("", "gpu_power_limit_w", gpu)] == 700
    # per-model figures carry no GPU, even for the model whose instance runs on it
    assert got[("default.scaler_gpu", "requests_per_s", ())] == pytest.approx(1 / 10)
    assert got[("default.scaler_gpu", "batch_size_avg", ())] == 2
    assert got[("default.scaler_gpu", "queue_ms_avg", ())] == pytest.approx(0.266)
    assert got[("default.fraud.v1", "failures_per_s", (("reason", "OTHER"),))] == 2 / 10
    assert not [k for k in got if k[2] and k[2] != gpu and k[1] != "failures_per_s"]
    assert {s.family for s in parse_samples(text)} >= {"nv_energy_consumption"}
