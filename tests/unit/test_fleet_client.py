"""How a Triton pool answers the control plane (manager.triton.fleet): calls fan out to the
live replicas, a model is ready only where every live replica has it, a restore loads only
where it is missing. The replicas are stand-ins (the fan-out is the subject; the real servers
are in tests/e2e/test_fleet.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from manager.errors import TritonUnavailable
from manager.triton.fleet import FleetClient


class StandIn:
    def __init__(self, url: str, ready: dict[str, str], live: bool = True) -> None:
        self.url = url
        self.ready = ready  # name -> state
        self.live = live
        self.loads: list[str] = []

    def is_live(self) -> bool:
        return self.live

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return self.ready.get(name) == "READY"

    def repository_index(self) -> list[dict[str, Any]]:
        return [{"name": n, "version": "1", "state": s} for n, s in self.ready.items()]

    def load_model(self, name: str, **_: Any) -> None:
        self.loads.append(name)
        self.ready[name] = "READY"

    def close(self) -> None:
        return None


def _fleet(*replicas: StandIn) -> FleetClient:
    return FleetClient(list(replicas))  # type: ignore[arg-type]


def test_ready_only_where_every_live_replica_serves_it() -> None:
    a = StandIn("a", {"m": "READY", "e": "READY"})
    b = StandIn("b", {"m": "READY", "e": "LOADING"})
    c = StandIn("c", {}, live=False)  # down: not asked
    fleet = _fleet(a, b, c)
    index = {e["name"]: e["state"] for e in fleet.repository_index()}
    assert index == {"m": "READY", "e": "LOADING"}
    assert fleet.is_model_ready("m") and not fleet.is_model_ready("e")
    b.ready.pop("m")
    assert {e["name"]: e["state"] for e in fleet.repository_index()}["m"] == "UNAVAILABLE"


def test_a_load_goes_to_every_live_replica_and_a_restore_only_where_missing() -> None:
    a, b = StandIn("a", {"m": "READY"}), StandIn("b", {})
    fleet = _fleet(a, b)
    fleet.only_where_missing([1]).load_model("m")
    assert (a.loads, b.loads) == ([], ["m"])
    fleet.load_model("m")  # a deploy: every replica, changed or not
    assert (a.loads, b.loads) == (["m"], ["m", "m"])


def test_no_live_replica_is_unavailable() -> None:
    fleet = _fleet(StandIn("a", {}, live=False), StandIn("b", {}, live=False))
    with pytest.raises(TritonUnavailable, match="no Triton server answers"):
        fleet.load_model("m")
    assert not fleet.is_model_ready("m")


def test_the_pool_is_made_from_the_settings(tmp_path: Any) -> None:
    from manager.errors import RuntimeSetupError
    from manager.settings import Settings
    from manager.system import make_runtime

    s = Settings(home=tmp_path, triton_replicas=3, triton_http_port=9100, triton_port_stride=10)
    ports = [r.endpoints.http_url for r in make_runtime(s).replicas]
    assert ports == ["http://127.0.0.1:9100", "http://127.0.0.1:9110", "http://127.0.0.1:9120"]
    external = Settings(home=tmp_path, triton_url="http://10.0.0.5:8000, http://10.0.0.6:8000")
    grpc = [r.endpoints.grpc_url for r in make_runtime(external).replicas]
    assert grpc == ["10.0.0.5:8001", "10.0.0.6:8001"]
    twice = Settings(home=tmp_path, triton_url="http://a:8000,http://a:8000")
    with pytest.raises(RuntimeSetupError, match="lists a server twice"):
        make_runtime(twice)
    metrics = Settings(
        home=tmp_path, triton_url="http://a:8000,http://b:8000", triton_metrics_url="http://a:8002"
    )
    with pytest.raises(RuntimeSetupError, match="names one server"):
        make_runtime(metrics)
    # a StatefulSet's pods as a range, gRPC addresses too
    pods = Settings(
        home=tmp_path,
        triton_url="http://t-{0..2}.h:8000",
        triton_grpc_url="t-{0..2}.h:9001",
    )
    fleet = make_runtime(pods)
    assert [r.endpoints.http_url for r in fleet.replicas] == [
        f"http://t-{i}.h:8000" for i in range(3)
    ]
    assert [r.endpoints.grpc_url for r in fleet.replicas] == [f"t-{i}.h:9001" for i in range(3)]
    for bad in ("http://t-{2..0}.h:8000", "http://t-{0..1000}.h:8000"):
        with pytest.raises(RuntimeSetupError, match=r"LASTMILE_TRITON_URL: the range"):
            make_runtime(Settings(home=tmp_path, triton_url=bad))


def test_external_grpc_addresses_and_the_control_protocol(tmp_path: Any) -> None:
    from manager.errors import RuntimeSetupError
    from manager.settings import Settings
    from manager.system import make_runtime

    two = "http://a:8000,http://b:9000"
    grpc = Settings(
        home=tmp_path,
        triton_url=two,
        triton_grpc_url="a:7001, grpc://b:7002",
        triton_control_protocol="grpc",
    )
    replicas = make_runtime(grpc).replicas
    assert [r.endpoints.grpc_url for r in replicas] == ["a:7001", "b:7002"]
    with replicas[1].client() as client:  # loads go to the gRPC address
        assert client.grpc_url == "b:7002"
    (http,) = make_runtime(Settings(home=tmp_path, triton_url="http://a:8000")).replicas
    with http.client() as client:  # the default: loads over HTTP
        assert client.grpc_url is None
    for bad, message in (
        ("a:7001", "lists 1 distinct address"),
        ("a:7001,a:7001", "lists 1 distinct address"),
        ("a:7001,b", "invalid LASTMILE_TRITON_GRPC_URL entry 'b'"),
        ("a:7001,http://b:7002", "invalid LASTMILE_TRITON_GRPC_URL entry"),
    ):
        with pytest.raises(RuntimeSetupError, match=message):
            make_runtime(Settings(home=tmp_path, triton_url=two, triton_grpc_url=bad))


def test_a_pool_of_external_servers_none_of_which_answers_does_not_start() -> None:
    from manager.errors import TritonUnavailable
    from manager.triton.fleet import TritonFleet
    from manager.triton.runtime import ExternalTriton

    closed = []
    for _ in range(2):
        with socket.socket() as s:  # a port nothing listens on once closed
            s.bind(("127.0.0.1", 0))
            closed.append(s.getsockname()[1])
    fleet = TritonFleet([ExternalTriton(f"http://127.0.0.1:{p}") for p in closed])
    with pytest.raises(TritonUnavailable, match="none of the Triton servers became ready"):
        fleet.start_external(timeout_s=0.0)
    assert fleet.up == [False, False]
    assert fleet.serving_replicas() == fleet.replicas  # none up: the table still names the pool
