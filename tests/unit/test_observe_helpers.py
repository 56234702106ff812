"""``--since`` durations, downsampling of old figures, the generated Prometheus configuration
(checked by Prometheus' own promtool where it is installed) and when its windows are read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from manager.errors import InvalidInput, PrometheusError, RuntimeSetupError
from manager.observe.downsample import Point, bucket_end, downsample
from manager.observe.durations import parse_duration
from manager.observe.prometheus_config import Target, prometheus_duration, render
from manager.services.prometheus_source import PrometheusSource, Puller
from manager.system import prometheus_puller
from tests.conftest import free_ports, make_settings
from tests.prometheus_harness import promtool_binary


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800), (" 5m ", 300)]
)
def test_since_accepts_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-5m", "5x", "5 minutes", "0s", "401d"])
def test_since_refuses_anything_else_and_says_what_it_takes(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_duration(text)
    assert repr(text) in err.value.message and "--since" in err.value.message
    assert err.value.hint and ("15m" in err.value.hint or "400d" in err.value.hint)


def test_downsampling_keeps_counts_and_weights_by_interval() -> None:
    # a rate of 10/s for 4 intervals of 5 s then 20/s for 2 intervals of 10 s, in one bucket
    points = [Point("r", 305.0 + 5 * i, 5.0, 10.0) for i in range(4)]
    points += [Point("r", 330.0 + 10 * i, 10.0, 20.0) for i in range(2)]
    points.append(Point("other", 400.0, 5.0, 1.0))
    merged = {p.key: p for p in downsample(points, 300)}
    assert merged["r"].ts == 600.0 and merged["r"].interval_s == 40.0
    assert merged["r"].value * merged["r"].interval_s == pytest.approx(4 * 50 + 2 * 200)
    assert merged["r"].value == pytest.approx(600 / 40)
    assert merged["other"].ts == 600.0


def test_an_interval_ending_on_a_bound_belongs_to_the_bucket_it_ends() -> None:
    assert bucket_end(300.0, 300) == 300.0
    assert bucket_end(300.1, 300) == 600.0
    split = downsample([Point("k", 300.0, 5, 1.0), Point("k", 301.0, 5, 3.0)], 300)
    assert sorted((p.ts, p.value) for p in split) == [(300.0, 1.0), (600.0, 3.0)]


TARGETS = [
    Target("triton", "http://127.0.0.1:8100", "http://127.0.0.1:8102/metrics", 0),
    Target("triton", "http://10.0.0.6:8000", "https://10.0.0.6:9443/triton/metrics", 1),
    Target("gateway", "http://127.0.0.1:8002/metrics", "http://127.0.0.1:8002/metrics"),
]


def test_the_config_names_jobs_and_labels_the_reader_relies_on() -> None:
    doc = yaml.safe_load(render(TARGETS, scrape_interval_s=1.0, origin="a test"))
    assert doc["global"]["scrape_interval"] == "1s"
    jobs = {j["job_name"]: j["static_configs"] for j in doc["scrape_configs"]}
    assert set(jobs) == {"lastmile-triton", "lastmile-gateway"}
    first, second = jobs["lastmile-triton"]
    assert first == {
        "targets": ["127.0.0.1:8102"],
        "labels": {"lastmile_component": "triton", "lastmile_server": "http://127.0.0.1:8100",
                   "lastmile_replica": "0"},
    }  # fmt: skip
    assert second["labels"]["__scheme__"] == "https"
    assert second["labels"]["__metrics_path__"] == "/triton/metrics"
    assert jobs["lastmile-gateway"][0]["labels"]["lastmile_server"] == TARGETS[2].server


def test_bad_targets_and_intervals_are_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot scrape triton"):
        render([Target("triton", "x", "ftp://host/metrics")], scrape_interval_s=5, origin="t")
    with pytest.raises(InvalidInput, match="no Triton server"):
        render([], scrape_interval_s=5, origin="t")
    with pytest.raises(InvalidInput, match="not positive"):
        prometheus_duration(0)
    assert prometheus_duration(0.25) == "250ms"


def test_promtool_accepts_the_generated_config(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(render(TARGETS, scrape_interval_s=5.0, origin="a test"))
    proc = subprocess.run(
        [promtool_binary(), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_windows_are_read_once_each_and_a_backlog_is_bounded() -> None:
    puller = Puller(PrometheusSource("http://127.0.0.1:9"), step_s=15, lag_s=2, max_windows=4)
    assert puller.due(now=1000.0) == (990.0, 990.0)  # the last window that ended 2 s ago
    puller.done_until = 990.0
    assert puller.due(now=1006.0) is None  # 1005 ended less than 2 s ago
    assert puller.due(now=1007.0) == (1005.0, 1005.0)
    assert puller.due(now=2000.0) == (1950.0, 1995.0)  # Prometheus was away: the last 4 only


def test_an_unreachable_prometheus_is_a_clear_error(tmp_path: Path) -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_ports(1)[0]}", timeout_s=2)
    try:
        with pytest.raises(PrometheusError) as err:
            source._query("up", 0.0, 15.0, 15)
    finally:
        source.close()
    assert "could not answer 'up'" in err.value.message
    assert err.value.hint and "LASTMILE_PROMETHEUS_URL" in err.value.hint


def test_prometheus_windows_must_hold_two_scrapes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, scrape_interval_s=5.0, prometheus_step_s=8,
                             prometheus_url="http://127.0.0.1:9090")  # fmt: skip
    with pytest.raises(RuntimeSetupError, match="fewer than two scrapes") as err:
        prometheus_puller(settings)
    assert err.value.hint and "LASTMILE_PROMETHEUS_STEP_S" in err.value.hint
    assert prometheus_puller(make_settings(tmp_path)) is None  # no URL: no reader
