"""The routing table's optional `grpc` address per target."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rollout.routing import RoutingTable, Target


def one(**target: Any) -> RoutingTable:
    raw = {"url": "http://127.0.0.1:8100", "model": "ws.d.v1", **target}
    return RoutingTable.from_json({"generation": 1, "routes": {"d": {"targets": [raw]}}})


def test_grpc_address_defaults_to_tritons_layout_http_port_plus_one() -> None:
    target = one().choose("d")
    assert (target.grpc, target.grpc_host, target.grpc_port) == ("", "127.0.0.1", 8101)
    assert "grpc" not in target.to_dict()  # tables without it read back exactly as pushed
    v6 = one(url="http://[::1]:9000").choose("d")
    assert (v6.grpc_host, v6.grpc_port) == ("::1", 9001)


@pytest.mark.parametrize(
    ("grpc", "host", "port"),
    [
        ("127.0.0.1:9001", "127.0.0.1", 9001),
        ("triton-b.svc.local:8001", "triton-b.svc.local", 8001),
        ("[::1]:8001", "::1", 8001),
        ("[fe80::1]:1", "fe80::1", 1),
    ],
)
def test_explicit_grpc_address(grpc: str, host: str, port: int) -> None:
    table = one(grpc=grpc)
    target = table.choose("d")
    assert (target.grpc_host, target.grpc_port) == (host, port)
    assert table.grpc_upstreams() == {(host, port)}
    assert table.upstreams() == {("127.0.0.1", 8100)}  # HTTP pools and health checks unchanged


def test_grpc_field_round_trips() -> None:
    table = one(grpc="[::1]:8001", version="2", weight=3)
    again = RoutingTable.from_json(table.to_json())
    assert again == table
    assert again.to_dict() == table.to_dict()
    assert json.loads(table.to_json())["routes"]["d"]["targets"][0]["grpc"] == "[::1]:8001"
    assert again.choose("d").grpc_port == 8001


def test_targets_differing_only_in_grpc_are_different() -> None:
    a = Target(url="http://h:1", model="m")
    assert a == Target(url="http://h:1", model="m", grpc="")
    assert a != Target(url="http://h:1", model="m", grpc="h:5")


@pytest.mark.parametrize(
    "grpc",
    [
        "127.0.0.1",  # no port
        "http://127.0.0.1:8001",  # no scheme
        "127.0.0.1:8001/x",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:8001",  # IPv6 needs brackets
        "[127.0.0.1]:8001",  # brackets are for IPv6 only
        "[::1]",
        "user@h:1",
        "bad host:1",
        " h:1",
        "h:1 ",
        "-h:1",
        "h:+1",
        "h:1\n",
    ],
)
def test_invalid_grpc_address_is_rejected_with_route_and_field(grpc: str) -> None:
    with pytest.raises(ValueError) as info:
        one(grpc=grpc)
    assert "route 'd': targets[0].grpc must be host:port" in str(info.value)


def test_grpc_must_be_a_string() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\].grpc must be a string"):
        one(grpc=8001)


def test_url_on_the_last_port_needs_an_explicit_grpc_address() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\].grpc must be set"):
        one(url="http://h:65535")
    assert one(url="http://h:65535", grpc="h:8001").choose("d").grpc_port == 8001
