"""The routing table contract (version 2) between control plane and gateway."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from rollout.routing import (
    Mirror,
    Route,
    RoutingTable,
    Shadow,
    Sticky,
    Target,
    Variant,
    route_key,
    variant_name,
)


def target(**overrides: Any) -> dict[str, Any]:
    return {
        "url": "http://127.0.0.1:8100",
        "model": "default.diamond.v1",
        "version": "",
        **overrides,
    }


def table_dict(route_overrides: dict[str, Any] | None = None, **target_overrides: Any) -> dict:
    route: dict[str, Any] = {
        "workspace": "default",
        "pipeline": "diamond",
        "strategy": "weighted",
        "variants": [
            {
                "name": "diamond/1",
                "version": 1,
                "weight": 100,
                "targets": [target(**target_overrides)],
            }
        ],
    }
    route.update(route_overrides or {})
    return {"generation": 3, "routes": {"default/diamond": route}}


def test_valid_table_round_trips_through_json() -> None:
    raw = {
        "generation": 7,
        "routes": {
            "default/diamond": {
                "workspace": "default", "pipeline": "diamond", "strategy": "weighted",
                "variants": [
                    {"name": "diamond/1", "version": 1, "weight": 90, "targets": [
                        {"url": "http://127.0.0.1:8100", "model": "default.diamond.v1",
                         "version": ""},
                        {"url": "http://triton-b:8000/", "model": "default.diamond.v1",
                         "version": "2", "grpc": "triton-b:9001"},
                    ]},
                    {"name": "diamond/2", "version": 2, "weight": 10.5, "targets": [
                        {"url": "http://[::1]:9000", "model": "default.diamond.v2"}]},
                ],
            },
            "teamb/diamond": {
                "workspace": "teamb", "pipeline": "diamond", "strategy": "sticky",
                "sticky": {"header": "x-user", "parameter": "user"},
                "variants": [{"name": "diamond/4", "version": 4, "weight": 1, "targets": [
                    {"url": "http://127.0.0.1:8100", "model": "teamb.diamond.v4"}]}],
            },
            "default/fraud-scaler_2": {
                "workspace": "default", "pipeline": "fraud-scaler_2", "strategy": "shadow",
                "shadow": {"mirrors": [{"variant": "fraud-scaler_2/3", "sample": 0.5}],
                           "timeout_s": 2.0, "max_queue": 8, "tolerance": 0.001},
                "variants": [
                    {"name": "fraud-scaler_2/2", "version": 2, "weight": 100, "targets": [
                        {"url": "http://127.0.0.1:8100", "model": "default.fraud-scaler_2.v2"}]},
                    {"name": "fraud-scaler_2/3", "version": 3, "weight": 0, "targets": [
                        {"url": "http://127.0.0.1:8100", "model": "default.fraud-scaler_2.v3"}]},
                ],
            },
        },
    }  # fmt: skip
    table = RoutingTable.from_json(json.dumps(raw).encode())
    assert table.generation == 7
    assert set(table.routes) == {"default/diamond", "teamb/diamond", "default/fraud-scaler_2"}
    diamond = table.routes["default/diamond"]
    second = diamond.variants[0].targets[1]
    assert (second.host, second.port, second.version) == ("triton-b", 8000, "2")
    assert (second.grpc_host, second.grpc_port) == ("triton-b", 9001)
    assert diamond.variants[1].weight == 10.5
    assert diamond.variants[1].targets[0].host == "::1"
    assert table.routes["teamb/diamond"].sticky == Sticky(header="x-user", parameter="user")
    shadow = table.routes["default/fraud-scaler_2"].shadow
    assert shadow == Shadow(
        mirrors=(Mirror("fraud-scaler_2/3", 0.5),), timeout_s=2.0, max_queue=8, tolerance=0.001
    )
    again = RoutingTable.from_json(table.to_json())
    assert again == table
    assert again.to_dict() == table.to_dict()
    assert RoutingTable.from_json(table.to_dict()) == table
    assert RoutingTable.from_json(table.to_json().decode()) == table
    assert table.upstreams() == {("127.0.0.1", 8100), ("triton-b", 8000), ("::1", 9000)}
    assert table.grpc_upstreams() == {("127.0.0.1", 8101), ("triton-b", 9001), ("::1", 9001)}


def test_tables_built_in_code_equal_the_parsed_ones() -> None:
    variant = Variant(
        name=variant_name("diamond", 1),
        version=1,
        weight=100.0,
        targets=(Target(url="http://127.0.0.1:8100", model="default.diamond.v1"),),
    )
    built = RoutingTable.build(
        3, [Route(workspace="default", pipeline="diamond", variants=(variant,))]
    )
    assert built == RoutingTable.from_json(table_dict())
    assert route_key("teamb", "fraud") == "teamb/fraud"
    with pytest.raises(ValueError, match="appears twice"):
        RoutingTable.build(1, [built.routes["default/diamond"]] * 2)


def test_defaults_weighted_strategy_latest_version_default_grpc_port() -> None:
    raw = table_dict()
    del raw["routes"]["default/diamond"]["strategy"]
    del raw["routes"]["default/diamond"]["variants"][0]["targets"][0]["version"]
    route = RoutingTable.from_json(raw).routes["default/diamond"]
    assert route.strategy == "weighted" and route.sticky is None and route.shadow is None
    t = route.variants[0].targets[0]
    assert (t.version, t.grpc_host, t.grpc_port) == ("", "127.0.0.1", 8101)


def test_resolve_by_workspace_and_pipeline() -> None:
    raw = table_dict()
    teamb = copy.deepcopy(raw["routes"]["default/diamond"])
    teamb["workspace"] = "teamb"
    raw["routes"]["teamb/diamond"] = teamb
    table = RoutingTable.from_json(raw)
    assert table.resolve("diamond") is table.routes["default/diamond"]
    assert table.resolve("diamond", "default") is table.routes["default/diamond"]
    assert table.resolve("diamond", "teamb") is table.routes["teamb/diamond"]
    assert table.resolve("diamond", "other") is None
    assert table.resolve("nope") is None
    route = table.routes["default/diamond"]
    assert route.by_version(1) is route.variants[0] and route.by_version(2) is None
    assert route.variant("diamond/1") is route.variants[0]
    with pytest.raises(KeyError):
        route.variant("diamond/2")


def test_table_is_immutable() -> None:
    table = RoutingTable.from_json(table_dict())
    with pytest.raises(AttributeError):
        table.generation = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.routes["other"] = table.routes["default/diamond"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"url": "https://127.0.0.1:8100"}, "targets[0]: target 'default.diamond.v1': url must"),
        ({"url": "http://127.0.0.1"}, "url must be http://host:port"),
        ({"url": "http://127.0.0.1:8100/v2"}, "url must be http://host:port"),
        ({"url": "http://user:pw@127.0.0.1:8100"}, "url must be"),
        ({"url": "http://127.0.0.1:8100?x=1"}, "url must be"),
        ({"url": "http://127.0.0.1:99999"}, "url must be"),
        ({"url": "http://bad host:1"}, "url must be"),
        ({"url": 8100}, "url must be a string"),
        ({"model": "a/b"}, "target model must be a Triton model name"),
        ({"model": ".."}, "target model must be"),
        ({"model": ""}, "target model must be"),
        ({"model": "x%2f"}, "target model must be"),
        ({"version": "01"}, "version must be '' or a positive integer"),
        ({"version": 1}, "version must be a string"),
        ({"version": "1/../2"}, "version must be"),
        ({"grpc": "http://h:1"}, "grpc must be host:port"),
        ({"weight": 1}, "targets[0]: unknown field(s) weight"),
        ({"extra": 1}, "targets[0]: unknown field(s) extra"),
    ],
)
def test_invalid_target_is_rejected_with_route_and_field(
    override: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError) as info:
        RoutingTable.from_json(table_dict(**override))
    assert fragment in str(info.value)
    assert str(info.value).startswith("route 'default/diamond': variants[0]")


def variants_with(*variants: dict[str, Any]) -> dict[str, Any]:
    return table_dict({"variants": list(variants)})


def one(name: str = "diamond/1", version: Any = 1, weight: Any = 100, **extra: Any) -> dict:
    return {"name": name, "version": version, "weight": weight, "targets": [target()], **extra}


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
        ({"generation": 1, "routes": {"d": []}}, "route 'd' must be an object"),
        (table_dict({"workspace": "Default"}), "workspace and pipeline must be names"),
        (table_dict({"pipeline": "a/b"}), "workspace and pipeline must be names"),
        (table_dict({"workspace": "teamb"}), "its key must be '<workspace>/<pipeline>'"),
        (table_dict({"strategy": "random"}), "strategy must be one of weighted, sticky, shadow"),
        (table_dict({"extra": 1}), "route 'default/diamond': unknown field(s) extra"),
        (variants_with(), "variants must be a non-empty list"),
        (variants_with(one(weight=0)), "at least one variant needs a weight > 0"),
        (variants_with(one(weight=-1)), "weight must be a finite number >= 0"),
        (variants_with(one(weight=float("inf"))), "weight must be a finite number >= 0"),
        (variants_with(one(weight=True)), "weight must be a finite number >= 0"),
        (variants_with(one(weight="1")), "weight must be a finite number >= 0"),
        (variants_with(one(version=0, name="diamond/0")), "version must be a positive integer"),
        (variants_with(one(version="1")), "version must be a positive integer, got '1'"),
        (variants_with(one(name="diamond/2")), "name must be '<pipeline>/<version>'"),
        (variants_with(one(name="other/1")), "must be named 'diamond/<version>'"),
        (variants_with(one(), one()), "each variant (and version) may appear once"),
        (variants_with(one(targets=[])), "targets must be a non-empty list"),
        (variants_with(one(x=1)), "variants[0]: unknown field(s) x"),
        (variants_with(*[one(f"diamond/{i}", i) for i in range(1, 18)]), "at most 16 variants"),
        (table_dict({"strategy": "sticky"}), "'sticky' is set exactly when the strategy is sticky"),
        (table_dict({"sticky": {"header": "k"}}), "'sticky' is set exactly when"),
        (
            table_dict({"strategy": "sticky", "sticky": {"header": "Bad Header"}}),
            "sticky.header must be a lower-case HTTP header name",
        ),
        (
            table_dict({"strategy": "sticky", "sticky": {"parameter": "a b"}}),
            "sticky.parameter must be a request parameter name",
        ),
        (table_dict({"strategy": "shadow"}), "'shadow' is set exactly when"),
        (
            table_dict({"strategy": "shadow", "shadow": {"mirrors": []}}),
            "shadow.mirrors must name at least one variant",
        ),
        (
            table_dict({"strategy": "shadow", "shadow": {"mirrors": [{"variant": "diamond/9"}]}}),
            "shadow mirror 'diamond/9' is not one of its variants (diamond/1)",
        ),
        (
            table_dict(
                {
                    "strategy": "shadow",
                    "shadow": {"mirrors": [{"variant": "diamond/1", "sample": 0}]},
                }
            ),
            "sample must be in (0, 1]",
        ),
        (
            table_dict(
                {
                    "strategy": "shadow",
                    "shadow": {"mirrors": [{"variant": "diamond/1"}], "max_queue": 0},
                }
            ),
            "shadow.max_queue must be in [1, 65536]",
        ),
        (
            table_dict(
                {
                    "strategy": "shadow",
                    "shadow": {"mirrors": [{"variant": "diamond/1"}], "timeout_s": 0},
                }
            ),
            "shadow.timeout_s must be in (0, 3600]",
        ),
    ],
)
def test_invalid_table_is_rejected_with_clear_message(raw: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        RoutingTable.from_json(raw)
    assert fragment in str(info.value)


def test_version_1_tables_are_refused() -> None:
    v1 = {"generation": 1, "routes": {"diamond": {"targets": [target()]}}}
    with pytest.raises(ValueError, match="route 'diamond': unknown field"):
        RoutingTable.from_json(v1)


def test_too_many_targets_is_rejected() -> None:
    targets = [{"url": "http://h:1", "model": f"m{i}"} for i in range(65)]
    with pytest.raises(ValueError, match="at most 64 targets"):
        RoutingTable.from_json(variants_with(one(targets=targets)))


def test_empty_table_is_valid() -> None:
    table = RoutingTable.from_json({"generation": 0, "routes": {}})
    assert table.routes == {}
    assert table.upstreams() == set()
    assert table.resolve("anything") is None
