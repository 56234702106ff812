"""The routing table contract between control plane and gateway."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from rollout.routing import RoutingTable


def table_dict(**route_overrides: Any) -> dict[str, Any]:
    target: dict[str, Any] = {
        "url": "http://127.0.0.1:8100", "model": "default.diamond.v1", "version": "", "weight": 1.0,
    }  # fmt: skip
    return {"generation": 3, "routes": {"diamond": {"targets": [dict(target, **route_overrides)]}}}


def test_valid_table_round_trips_through_json() -> None:
    raw = {
        "generation": 7,
        "routes": {
            "diamond": {
                "targets": [
                    {"url": "http://127.0.0.1:8100", "model": "default.diamond.v1",
                     "version": "", "weight": 9.0},
                    {"url": "http://triton-b:8000/", "model": "default.diamond.v2",
                     "version": "2", "weight": 1},
                ]
            },
            "fraud-scaler_2": {
                "targets": [{"url": "http://[::1]:9000", "model": "ws.fraud", "version": "",
                             "weight": 0.5}]
            },
        },
    }  # fmt: skip
    table = RoutingTable.from_json(json.dumps(raw).encode())
    assert table.generation == 7
    assert set(table.routes) == {"diamond", "fraud-scaler_2"}
    target = table.routes["diamond"].targets[1]
    assert (target.host, target.port, target.version, target.weight) == ("triton-b", 8000, "2", 1.0)
    assert table.routes["fraud-scaler_2"].targets[0].host == "::1"
    again = RoutingTable.from_json(table.to_json())
    assert again == table
    assert again.to_dict() == table.to_dict()
    assert RoutingTable.from_json(table.to_dict()) == table
    assert RoutingTable.from_json(table.to_json().decode()) == table
    assert table.upstreams() == {("127.0.0.1", 8100), ("triton-b", 8000), ("::1", 9000)}


def test_weight_defaults_to_one_and_version_to_latest() -> None:
    table = RoutingTable.from_json(
        {"generation": 0, "routes": {"a": {"targets": [{"url": "http://h:1", "model": "m"}]}}}
    )
    target = table.choose("a")
    assert (target.weight, target.version, target.label) == (1.0, "", "m")


def test_table_is_immutable() -> None:
    table = RoutingTable.from_json(table_dict())
    with pytest.raises(AttributeError):
        table.generation = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.routes["other"] = table.routes["diamond"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"weight": 0}, "route 'diamond': targets[0].weight must be a finite number > 0"),
        ({"weight": -1.5}, "targets[0].weight"),
        ({"weight": float("inf")}, "targets[0].weight"),
        ({"weight": "1"}, "targets[0].weight"),
        ({"weight": True}, "targets[0].weight"),
        ({"url": "https://127.0.0.1:8100"}, "targets[0].url must be http://host:port"),
        ({"url": "http://127.0.0.1"}, "targets[0].url"),
        ({"url": "http://127.0.0.1:8100/v2"}, "targets[0].url"),
        ({"url": "http://user:pw@127.0.0.1:8100"}, "targets[0].url"),
        ({"url": "http://127.0.0.1:8100?x=1"}, "targets[0].url"),
        ({"url": "http://127.0.0.1:99999"}, "targets[0].url"),
        ({"url": "http://bad host:1"}, "targets[0].url"),
        ({"url": 8100}, "targets[0].url must be a string"),
        ({"model": "a/b"}, "targets[0].model must be a Triton model name"),
        ({"model": ".."}, "targets[0].model"),
        ({"model": ""}, "targets[0].model"),
        ({"model": "x%2f"}, "targets[0].model"),
        ({"version": "01"}, "targets[0].version"),
        ({"version": 1}, "targets[0].version"),
        ({"version": "1/../2"}, "targets[0].version"),
        ({"extra": 1}, "targets[0]: unknown field(s) extra"),
    ],
)
def test_invalid_target_is_rejected_with_route_and_field(
    override: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError) as info:
        RoutingTable.from_json(table_dict(**override))
    assert fragment in str(info.value)
    assert "route 'diamond'" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        ({"routes": {}}, "generation must be an integer"),
        ({"generation": -1, "routes": {}}, "generation must be an integer >= 0"),
        ({"generation": True, "routes": {}}, "generation"),
        ({"generation": 1}, "routes must be an object"),
        ({"generation": 1, "routes": {}, "extra": 1}, "unknown field(s) extra"),
        ({"generation": 1, "routes": {"Diamond": {"targets": []}}}, "route 'Diamond': invalid"),
        ({"generation": 1, "routes": {"a/b": {"targets": []}}}, "route 'a/b': invalid name"),
        ({"generation": 1, "routes": {"d": {"targets": []}}}, "route 'd': targets must be"),
        ({"generation": 1, "routes": {"d": {}}}, "route 'd': targets must be a non-empty"),
        ({"generation": 1, "routes": {"d": []}}, "route 'd': must be an object"),
        ({"generation": 1, "routes": {"d": {"targets": [], "x": 1}}}, "unknown field(s) x"),
        ({"generation": 1, "routes": {"d": {"targets": ["http://h:1"]}}}, "targets[0] must be"),
    ],
)
def test_invalid_table_is_rejected_with_clear_message(raw: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        RoutingTable.from_json(raw)
    assert fragment in str(info.value)


def test_too_many_targets_is_rejected() -> None:
    targets = [{"url": "http://h:1", "model": f"m{i}"} for i in range(65)]
    with pytest.raises(ValueError, match="at most 64 targets"):
        RoutingTable.from_json({"generation": 1, "routes": {"d": {"targets": targets}}})


def test_empty_table_is_valid() -> None:
    table = RoutingTable.from_json({"generation": 0, "routes": {}})
    assert table.routes == {}
    assert table.upstreams() == set()


def test_choose_unknown_route_raises_key_error() -> None:
    table = RoutingTable.from_json(table_dict())
    with pytest.raises(KeyError):
        table.choose("nope")


def test_single_target_route_always_returns_it() -> None:
    table = RoutingTable.from_json(table_dict(weight=0.001))
    expected = table.routes["diamond"].targets[0]
    assert all(table.choose("diamond") is expected for _ in range(1000))


def test_weighted_choice_follows_weights() -> None:
    random.seed(1234)
    table = RoutingTable.from_json(
        {
            "generation": 1,
            "routes": {
                "d": {
                    "targets": [
                        {"url": "http://h:1", "model": "stable", "weight": 90},
                        {"url": "http://h:1", "model": "canary", "weight": 9},
                        {"url": "http://h:2", "model": "shadowy", "weight": 1},
                    ]
                }
            },
        }
    )
    draws = 100_000
    counts = Counter(table.choose("d").model for _ in range(draws))
    # binomial standard deviations are ~95, ~90 and ~31 draws: allow about 5 of them
    assert abs(counts["stable"] - 90_000) < 500
    assert abs(counts["canary"] - 9_000) < 450
    assert abs(counts["shadowy"] - 1_000) < 160


def test_choice_at_the_edges_of_the_random_range() -> None:
    table = RoutingTable.from_json(
        {
            "generation": 1,
            "routes": {
                "d": {
                    "targets": [
                        {"url": "http://h:1", "model": "a", "weight": 0.1},
                        {"url": "http://h:1", "model": "b", "weight": 0.2},
                    ]
                }
            },
        }
    )
    route = table.routes["d"]
    assert route.choose(lambda: 0.0).model == "a"
    assert route.choose(lambda: 0.3333).model == "a"
    assert route.choose(lambda: 0.3334).model == "b"
    assert route.choose(lambda: 0.9999999999999999).model == "b"
    assert route.choose(lambda: 1.0).model == "b"  # rounding guard: never IndexError
