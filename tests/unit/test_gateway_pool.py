"""Several gateways' per-variant figures as one (manager.services.gateway_pool): sums that only
grow through restarts, unreachable and departed gateways; discovery of ranges and of the
addresses a DNS name resolves to. Each gateway's exposition is the gateway's own collector's
(rollout.gateway_metrics), served over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from manager.errors import GatewayError
from manager.services.gateway_figures import parse
from manager.services.gateway_pool import GatewayPool, discover
from rollout.gateway_metrics import GatewayStats, GaugeSource, make_registry

ROUTE, STABLE, CANARY = "default/fraud", "fraud/1", "fraud/2"
GAUGES = GaugeSource(
    generation=lambda: 1, client_connections=lambda: 0, upstream_connections=dict, upstream_up=dict
)


def exposition(stats: GatewayStats) -> str:
    return generate_latest(make_registry(stats, GAUGES)).decode()


class Gateway:
    """A gateway's /metrics: its real collector over a real HTTP endpoint."""

    def __init__(self) -> None:
        self.stats = GatewayStats()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition(owner.stats).encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, n: int, variant: str = STABLE, code: int = 200) -> None:
        for _ in range(n):
            self.stats.observe(ROUTE, variant, "http", code, 0.002)

    def restart(self) -> None:
        self.stats = GatewayStats()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made = [Gateway(), Gateway()]
    yield made
    for g in made:
        g.close()


def test_the_pool_adds_every_gateways_traffic(gateways: list[Gateway]) -> None:
    one, two = gateways
    one.serve(40)
    two.serve(60)
    two.serve(5, code=503)
    two.serve(7, variant=CANARY)
    two.stats.enter(ROUTE, CANARY)
    pool = GatewayPool(two.url)
    got = pool.read(one.url)
    assert got[(ROUTE, STABLE)].requests == 105 and got[(ROUTE, STABLE)].errors == 5
    assert got[(ROUTE, CANARY)].requests == 7 and got[(ROUTE, CANARY)].inflight == 1
    # the merged histogram holds every answer once
    assert dict(got[(ROUTE, STABLE)].buckets)["+Inf"] == 105
    alone = parse(exposition(one.stats))[(ROUTE, STABLE)]
    assert alone.requests == 40  # what one gateway alone would have said


def test_a_gateway_restart_never_makes_the_sum_go_down(gateways: list[Gateway]) -> None:
    one, two = gateways
    pool = GatewayPool(two.url)
    one.serve(40)
    two.serve(60)
    assert pool.read(one.url)[(ROUTE, STABLE)].requests == 100
    two.restart()  # its counters start again from zero
    two.serve(3)
    assert pool.read(one.url)[(ROUTE, STABLE)].requests == 103
    two.serve(2)
    one.serve(1)
    assert pool.read(one.url)[(ROUTE, STABLE)].requests == 106


def test_an_unreachable_gateway_keeps_its_count_and_a_departed_one_too(
    gateways: list[Gateway],
) -> None:
    one, two = gateways
    one.serve(10)
    two.serve(20)
    two.stats.enter(ROUTE, STABLE)
    pool = GatewayPool(two.url)
    assert pool.read(one.url)[(ROUTE, STABLE)].inflight == 1
    two.close()  # down for now: what it counted still counts, its in-flight gauge does not
    got = pool.read(one.url)[(ROUTE, STABLE)]
    assert got.requests == 30 and got.inflight == 0
    pool.remote = None  # no longer listed (scaled in): what it counted is kept
    one.serve(1)
    assert pool.read(one.url)[(ROUTE, STABLE)].requests == 31
    one.close()
    with pytest.raises(GatewayError, match="could not be read"):
        pool.read(one.url)


def test_no_gateway_at_all_is_a_clear_error() -> None:
    with pytest.raises(GatewayError, match="no gateway is attached"):
        GatewayPool(None).read(None)


def test_discovery_expands_ranges_and_resolves_names() -> None:
    assert discover("http://gw-{0..2}.gw:8002/metrics, http://x:1/m") == [
        "http://gw-0.gw:8002/metrics",
        "http://gw-1.gw:8002/metrics",
        "http://gw-2.gw:8002/metrics",
        "http://x:1/m",
    ]
    # every address the name resolves to now (a headless Service's pods)
    assert "http://127.0.0.1:8002/metrics" in discover("dns+http://localhost:8002/metrics")
    assert discover("dns+http://no-such-gateway.invalid:8002/metrics") == []
    for bad in ("gw:8002/metrics", "http://gw-{3..1}:8002/metrics"):
        with pytest.raises(ValueError):
            discover(bad)
    with pytest.raises(ValueError):
        GatewayPool("ftp://gw:8002/metrics")  # refused when the system starts


def test_lastmile_up_refuses_a_malformed_gateway_list(tmp_path: Path) -> None:
    from manager.errors import RuntimeSetupError
    from manager.settings import Settings
    from manager.system import gateway_pool_of

    settings = Settings(home=tmp_path, gateway_metrics_urls="gw:8002/metrics")
    with pytest.raises(RuntimeSetupError, match="LASTMILE_GATEWAY_METRICS_URLS: a gateway"):
        gateway_pool_of(settings)
