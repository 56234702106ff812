"""What the first of several gateway processes adds up for the others (rollout.gateway_workers):
Prometheus text merged series by series, shadow output-diff figures merged exactly, the
followers' configuration, the --workers flag, and connections dealt in turn
(rollout.conn_handoff) over real Unix channels; and the allocator tuning every gateway process
starts with (rollout.malloc_tuning)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from rollout.conn_handoff import Acceptor, Receiver, channel_pair
from rollout.gateway_config import GatewayConfig, parse_args
from rollout.gateway_metrics import (
    GatewayStats,
    GaugeSource,
    make_registry,
    merge_exposition,
    merged_registry,
)
from rollout.gateway_workers import dump_config, follower_config, load_config
from rollout.shadow_diff import DiffCollector, RawResponse
from rollout.shadow_report import merge_reports
from tests.unit.test_gateway_harness import samples

TIMEOUT = 10.0


def _text(stats: GatewayStats, generation: int, up: dict[str, bool], clients: int) -> str:
    gauges = GaugeSource(
        generation=lambda: generation,
        client_connections=lambda: clients,
        upstream_connections=dict,
        upstream_up=lambda: up,
    )
    return generate_latest(make_registry(stats, gauges)).decode()


def test_metrics_of_several_processes_add_up_series_by_series() -> None:
    a, b = GatewayStats(), GatewayStats()
    for _ in range(3):
        a.observe("ws/p", "p/1", "http", 200, 0.002)
    a.observe("ws/p", "p/2", "grpc", 503, 0.2)
    for _ in range(5):
        b.observe("ws/p", "p/1", "http", 200, 0.04)
    text_a = _text(a, 7, {"t:1": True, "t:2": True}, clients=4)
    text_b = _text(b, 6, {"t:1": True, "t:2": False}, clients=2)

    merged = generate_latest(merged_registry([text_a, text_b])).decode()
    values = samples(merged)
    ok = (("code", "200"), ("protocol", "http"), ("route", "ws/p"), ("variant", "p/1"))
    key = ("lastmile_gateway_requests_total", ok)
    assert values[key] == 8.0
    assert values[("lastmile_gateway_client_connections", ())] == 6.0
    # histograms: every cumulative bucket, the count and the sum add up
    bucket = lambda le: ("lastmile_gateway_request_duration_seconds_bucket",  # noqa: E731
                         (("le", le), ("route", "ws/p"), ("variant", "p/1")))  # fmt: skip
    assert values[bucket("0.0025")] == 3.0 and values[bucket("0.05")] == 8.0
    count = ("lastmile_gateway_request_duration_seconds_count",
             (("route", "ws/p"), ("variant", "p/1")))  # fmt: skip
    assert values[count] == 8.0
    # the generation every process serves, and an upstream only up where all see it up
    assert values[("lastmile_gateway_routing_generation", ())] == 6.0
    assert values[("lastmile_gateway_upstream_up", (("upstream", "t:1"),))] == 1.0
    assert values[("lastmile_gateway_upstream_up", (("upstream", "t:2"),))] == 0.0
    # a series only one process has is kept as it is
    failed = (("code", "503"), ("protocol", "grpc"), ("route", "ws/p"), ("variant", "p/2"))
    only_a = ("lastmile_gateway_requests_total", failed)
    assert values[only_a] == 1.0
    # one process's text merged alone is that text
    assert samples(generate_latest(merged_registry([text_a])).decode()) == samples(text_a)
    assert {f.name for f in merge_exposition([text_a, text_b])} >= {
        "lastmile_gateway_requests",
        "lastmile_gateway_request_duration_seconds",
    }


def _http(values: list[float]) -> RawResponse:
    import json

    body = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, len(values)],
                         "data": values}]}  # fmt: skip
    return RawResponse("http", json.dumps(body).encode())


def test_shadow_figures_of_several_processes_merge_to_those_of_one() -> None:
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(40):
        primary = rng.normal(size=4).round(3).tolist()
        candidate = [v + (0.5 if i % 4 == 0 else 0.0) for v in primary]
        pairs.append((_http(primary), _http(candidate), 0.001 * (i + 1), 0.003 * (i + 1)))
    one = DiffCollector(max_rate=1e9)
    halves = [DiffCollector(max_rate=1e9), DiffCollector(max_rate=1e9)]
    for collector in (one, *halves):
        collector.start()
    try:
        for i, (p, c, ps, cs) in enumerate(pairs):
            assert one.submit("ws/r", "r/2", p, c, ps, cs, 1e-6)
            assert halves[i % 2].submit("ws/r", "r/2", p, c, ps, cs, 1e-6)
        for collector in (one, *halves):
            assert collector.drain(TIMEOUT)
        merged = merge_reports([h.snapshot() for h in halves])
        alone = one.reports()
    finally:
        for collector in (one, *halves):
            collector.stop()
    report = merged["ws/r"]["r/2"]
    assert report["pairs"] == 40 and report["sampled"] == 40
    output = report["outputs"]["y"]
    assert output["agreement"] == pytest.approx(0.75)
    assert output["max_abs_diff"] == pytest.approx(0.5)
    assert output["mean_abs_diff"] == pytest.approx(alone["ws/r"]["r/2"]["outputs"]["y"]
                                                    ["mean_abs_diff"])  # fmt: skip
    assert report["latency"] == pytest.approx(alone["ws/r"]["r/2"]["latency"])
    single = alone["ws/r"]["r/2"]
    for name in ("pairs", "sampled", "not_sampled", "dropped", "decode_errors", "tolerance"):
        assert report[name] == single[name], name
    assert output == pytest.approx(single["outputs"]["y"])


def test_a_follower_is_configured_from_its_leader_and_survives_the_file() -> None:
    leader = GatewayConfig(
        host="0.0.0.0",
        http_port=0,
        grpc_port=8001,
        http_fd=5,
        routes_file=Path("/srv/routes.json"),
        routes_url="http://manager/api/v1/gateway/routes",
        routes_token="pull",
        admin_token="admin",
        allowed_upstreams=frozenset({("127.0.0.1", 8100), ("10.0.0.2", 8000)}),
        capture_dir="/srv/capture",
        capture_url="http://manager/api/v1/gateway/capture",
        shadow_diff_rate=90.0,
        workers=3,
    )
    follower = follower_config(
        leader, ports={"http": 18000, "grpc": 8001}, routes_file=Path("/tmp/r-1.json"), token="t"
    )
    assert (follower.http_port, follower.http_fd, follower.grpc_fd) == (18000, None, None)
    assert (follower.admin_port, follower.metrics_port, follower.metrics_host) == (
        0,
        0,
        "127.0.0.1",
    )
    assert follower.routes_url is None and follower.capture_url is None  # the leader's jobs
    assert follower.capture_dir == "/srv/capture" and follower.admin_token == "t"
    assert follower.shadow_diff_rate == pytest.approx(30.0) and follower.workers == 1
    assert load_config(dump_config(follower)) == follower


def test_workers_flag_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--workers", "4"]).workers == 4
    for bad in ("0", "65"):
        with pytest.raises(SystemExit):
            parse_args(["--workers", bad])
        assert "--workers must be between 1 and 64 processes" in capsys.readouterr().err


class _Counting(asyncio.Protocol):
    def __init__(self, seen: list[str], name: str) -> None:
        self.seen, self.name = seen, name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.seen.append(self.name)
        transport.close()


def test_connections_are_dealt_in_turn_and_a_closed_channel_stops_its_receiver() -> None:
    async def scenario() -> tuple[list[str], list[str], bool]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        here: list[str] = []
        there: list[str] = []
        ours, theirs = channel_pair()
        gone = asyncio.Event()
        receiver = Receiver(
            loop,
            theirs,
            {"http": lambda: _Counting(there, "http"), "grpc": lambda: _Counting(there, "grpc")},
            on_leader_gone=gone.set,
        )
        receiver.start()
        acceptor = Acceptor(
            loop,
            {"http": listener},
            {"http": lambda: _Counting(here, "http")},
            channels=lambda: [ours],
        )
        acceptor.start()
        for _ in range(6):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        while len(here) + len(there) < 6:
            await asyncio.sleep(0.01)
        acceptor.close()
        ours.close()  # the leader's end goes: the follower is told
        await asyncio.wait_for(gone.wait(), TIMEOUT)
        return here, there, receiver.channel.fileno() == -1

    here, there, closed = asyncio.run(scenario())
    assert (len(here), len(there)) == (3, 3) and set(there) == {"http"}
    assert closed


def test_workers_without_a_writable_temporary_folder_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile
    from types import SimpleNamespace

    from rollout.gateway_workers import Workers

    # no usable folder (a pod's read-only root file system; root ignores mode bits, so here
    # the folder is missing)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    leader: Any = SimpleNamespace(config=GatewayConfig(workers=2))  # only its config is read
    with pytest.raises(OSError, match="point TMPDIR at one"):
        Workers(leader, {"http": 8000})


def test_the_allocator_is_tuned_unless_the_user_tuned_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from rollout.malloc_tuning import tune_malloc

    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")  # the user's choice stands
    assert tune_malloc() is False
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    if platform.libc_ver()[0] == "glibc":
        assert tune_malloc() is True
