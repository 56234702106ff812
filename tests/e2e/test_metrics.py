"""Metrics end to end: a real system (embedded tritonserver, gateway, API, scraper every
second) serving a two-step pipeline, and a real Prometheus scraping the same servers.

- Prometheus' figures agree with Lastmile's own within 5 % over the same windows.
- After N requests the stored rates, times their intervals, add up to N, and to Triton's own
  counter; a Triton killed and restarted mid-way leaves no negative rate and loses no count.
- ``lastmile metrics fraud`` finds the pipeline by its own name.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from loadtests._models import free_ports
from manager import store, supervisor
from manager.observe.triton import SUCCESS, parse_samples
from manager.sdk import Lastmile
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine, make_softmax_classifier
from tests.prometheus_harness import prometheus_binary, running_prometheus, targets_up

pytestmark = pytest.mark.e2e

STEP_S = 4  # LASTMILE_PROMETHEUS_STEP_S: Prometheus windows (it scrapes every second)
RATE, LOAD_S = 20, 16  # the paced load of the comparison: requests/s, seconds
BODY = {
    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]
}
ENSEMBLE = "default.fraud.v1"


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """A system of its own (a test kills its Triton) that reads Prometheus at a fixed port
    (Prometheus itself starts later, from the configuration the system generates)."""
    work = tmp_path_factory.mktemp("metrics")
    settings = make_settings(
        work / "home",
        scrape_interval_s=1.0,
        supervise_interval_s=0.5,
        reconcile_interval_s=0,
        prometheus_url=f"http://127.0.0.1:{free_ports(1)[0]}",
        prometheus_step_s=STEP_S,
    )
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    try:
        with Lastmile.from_settings(settings) as lm:
            lm.import_model(make_affine(work / "scaler.onnx", 4, 0.5, -1.0, output_name="z"),
                            name="scaler")  # fmt: skip
            lm.import_model(make_softmax_classifier(work / "clf.onnx", 4, 3, seed=3,
                                                    input_name="features"), name="clf")  # fmt: skip
            lm.create_pipeline("fraud", steps=["scaler", "clf"])
            lm.deploy("fraud", version=1)
        yield running
    finally:
        supervisor.stop(settings)


@pytest.fixture(scope="module")
def prometheus(observed: RunningSystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prometheus_binary()
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    observed.cli("prometheus-config", "--out", str(config))
    port = int(str(observed.settings.prometheus_url).rsplit(":", 1)[1])
    with running_prometheus(config, work, port) as url:
        wait_until(
            "Prometheus scrapes Triton and the gateway",
            lambda: targets_up(url) == {"triton": "up", "gateway": "up"},
            30,
        )
        yield url


def _infer(http: httpx.Client, gateway: str) -> int:
    try:
        return http.post(f"{gateway}/v2/models/fraud/infer", json=BODY).status_code
    except httpx.HTTPError:
        return 0


class PacedLoad:
    """``rate`` requests per second through the gateway on a fixed schedule, from ``clients``
    connections taking turns (a late request does not shift the ones after it, and a slow
    answer on one connection does not hold the others), so every window sees the same rate."""

    def __init__(self, gateway: str, rate: float, seconds: float, clients: int = 3) -> None:
        self.gateway, self.rate, self.seconds = gateway, rate, seconds
        self.codes: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i, clients)) for i in range(clients)
        ]

    def _run(self, first: int, every: int) -> None:
        with httpx.Client(timeout=10) as http:
            for k in range(first, int(self.rate * self.seconds), every):
                if self.stop.wait(max(0.0, self.start + k / self.rate - time.monotonic())):
                    return
                code = _infer(http, self.gateway)
                with self.lock:
                    self.codes[code] += 1

    def __enter__(self) -> PacedLoad:
        self.started, self.start = time.time(), time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(timeout=self.seconds + 60)
        self.stop.set()
        self.ended = time.time()


def _points(running: RunningSystem, **where: Any) -> list[store.MetricPoint]:
    engine = store.make_engine(running.settings.db_url)
    try:
        with Session(engine) as session:
            query = select(store.MetricPoint).where(
                store.MetricPoint.workspace == "default", store.MetricPoint.pipeline == "fraud"
            )
            for key, value in where.items():
                query = query.where(getattr(store.MetricPoint, key) == value)
            return list(session.exec(query.order_by(col(store.MetricPoint.ts))).all())
    finally:
        engine.dispose()


def _mean_rate(points: list[store.MetricPoint], after: float, until: float) -> float:
    """Rate over the points whose intervals end in (after, until], weighted by interval."""
    inside = [p for p in points if after < p.ts.timestamp() <= until]
    assert inside, f"no point ends in ({after}, {until}]"
    return sum(p.value * p.interval_s for p in inside) / sum(p.interval_s for p in inside)


def test_prometheus_figures_agree_with_the_direct_ones_within_5_percent(
    observed: RunningSystem, prometheus: str
) -> None:
    """Both sources measure the same stretch of steady traffic (RATE requests/s on a fixed
    schedule). Prometheus' points are rate() over windows of STEP_S seconds ending on
    multiples of STEP_S; the windows compared are those lying wholly inside the load (with a
    second of margin at each end, so no window holds its start or stop). The direct rate is
    the interval-weighted mean of Lastmile's own points ending in the same span: its
    intervals (one per second) start up to one scrape before the span, which under a steady
    rate changes nothing. Agreement is measured on the ensemble (Triton) and on the gateway's
    variant figure."""
    gateway = observed.state["gateway"]["http"]
    with PacedLoad(gateway, rate=RATE, seconds=LOAD_S) as load:
        pass
    assert set(load.codes) == {200}, load.codes
    # the windows (after, after + STEP_S], ... up to `until`: all inside the load, 1 s margins
    after = math.ceil((load.started + 1) / STEP_S) * STEP_S
    until = math.floor((load.ended - 1) / STEP_S) * STEP_S
    assert until - after >= 2 * STEP_S, (load.started, load.ended)

    def read_back(name: str, step: str = "") -> list[store.MetricPoint]:
        return _points(observed, source="prometheus", version=1, step=step, name=name)

    wait_until(
        "Prometheus' figures of the load's windows are stored",
        lambda: (
            any(p.ts.timestamp() >= until for p in read_back("gateway_requests_per_s"))
            and any(p.ts.timestamp() >= until for p in read_back("requests_per_s"))
        ),
        30,
    )
    agreement = {}
    for name in ("requests_per_s", "gateway_requests_per_s"):
        direct_source = "gateway" if name.startswith("gateway") else "triton"
        direct = _points(observed, source=direct_source, version=1, step="", name=name)
        prom = _mean_rate(read_back(name), after, until)
        mine = _mean_rate(direct, after, until)
        agreement[name] = (prom, mine, prom / mine - 1)
    print("\nPrometheus vs direct (rate/s, rate/s, relative difference):", agreement)
    for name, (prom, mine, diff) in agreement.items():
        assert abs(diff) < 0.05, (name, prom, mine)
        assert mine == pytest.approx(RATE, rel=0.15)  # the load's own rate

    def names(*sources: str) -> set[tuple[str, str]]:
        return {
            (p.step, p.name)
            for source in sources
            for p in _points(observed, source=source)
            if after < p.ts.timestamp() <= until
        }

    # the same figures, of the ensemble, its steps and the gateway's variant, from both
    assert names("prometheus") == names("triton", "gateway")
    assert {("", "request_ms_avg"), ("scaler", "batch_size_avg")} <= names("prometheus")
    shown = json.loads(observed.cli("metrics", "fraud", "--source", "prometheus",
                                    "--since", "2m", "--json").stdout)  # fmt: skip
    (variant,) = shown["variants"]
    assert variant["triton"]["requests_per_s"]["max"] > 0
    assert {"gateway_requests_per_s", "gateway_latency_p95_ms"} <= set(variant["gateway"])
    assert shown["steps"]["scaler:1"]["requests_per_s"]["total"] > 0


def _triton_success(lm: Lastmile) -> float:
    """Triton's own counter of the ensemble's successful requests, read directly."""
    metrics_url = lm.status()["triton"][0]["metrics"]
    text = httpx.get(f"{metrics_url}/metrics", timeout=5).text
    return next(s.value for s in parse_samples(text) if s.family == SUCCESS and s.model == ENSEMBLE)


def _totals(lm: Lastmile) -> tuple[float, float, float]:
    """Stored requests of the ensemble, of the shared scaler step, through the gateway."""
    lm.scrape()
    (v1,) = lm.pipeline_metrics("fraud", since="1h")["variants"]
    steps = lm.pipeline_metrics("fraud", since="1h", variant="1")["steps"]
    return (
        v1["triton"]["requests_per_s"]["total"],
        steps["scaler:1"]["requests_per_s"]["total"],
        v1["gateway"]["gateway_requests_per_s"]["total"],
    )


def test_stored_rates_add_up_to_the_counters_across_a_triton_restart(
    observed: RunningSystem,
) -> None:
    gateway = observed.state["gateway"]["http"]
    n, m = 40, 25
    with Lastmile.from_settings(observed.settings) as lm:
        ensemble0, scaler0, gateway0 = _totals(lm)
        with httpx.Client(timeout=10) as http:
            assert [_infer(http, gateway) for _ in range(n)] == [200] * n
        ensemble1, scaler1, gateway1 = _totals(lm)
        assert ensemble1 - ensemble0 == pytest.approx(n, abs=1e-6)
        assert scaler1 - scaler0 == pytest.approx(n, abs=1e-6)
        assert gateway1 - gateway0 == pytest.approx(n, abs=1e-6)
        # every count since the ensemble was loaded (its warm-up requests too) is stored
        assert ensemble1 == pytest.approx(_triton_success(lm), abs=1e-6)

        triton_pid = lm.status()["triton"][0]["pid"]
        os.kill(triton_pid, signal.SIGKILL)
        with httpx.Client(timeout=10) as http:
            wait_until("Triton serving again", lambda: _infer(http, gateway) == 200, 60)
            assert [_infer(http, gateway) for _ in range(m)] == [200] * m
        restarted_count = _triton_success(lm)  # warm-ups, the probe(s) and the m requests
        assert restarted_count >= m + 1
        ensemble2, _, _ = _totals(lm)
        assert ensemble2 == pytest.approx(ensemble1 + restarted_count, abs=1e-6)
        assert lm.status()["triton"][0]["restarts"] == 1
    negative = [(p.name, p.value) for p in _points(observed) if p.value < 0]
    assert negative == []

    shown = json.loads(observed.cli("metrics", "fraud", "--since", "1h", "--json").stdout)
    assert shown["pipeline"] == "fraud"
    assert shown["variants"][0]["triton"]["requests_per_s"]["total"] == pytest.approx(ensemble2)
    human = observed.cli("metrics", "fraud").stdout
    assert "fraud/1" in human and "requests_per_s" in human and "gateway_latency_p99_ms" in human
