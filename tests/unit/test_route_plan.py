"""The gateway's routes as the store describes them: one per served pipeline, the rollout's
strategy and weights in force, built only from rollout.routing's types."""

from __future__ import annotations

import pytest

from manager.plan.routes import (
    Endpoint,
    Placement,
    ServedPipeline,
    placement,
    route_for,
    routing_table,
)
from rollout.routing import RoutingTable

EP = [Endpoint("http://127.0.0.1:8100", "127.0.0.1:8101")]
ENSEMBLES = {1: "ws.fraud.v1", 2: "ws.fraud.v2", 3: "ws.fraud.v3"}


def served(**kw: object) -> ServedPipeline:
    values: dict[str, object] = {"workspace": "ws", "pipeline": "fraud", "stable": 1,
                                 "ensembles": {1: "ws.fraud.v1"}}  # fmt: skip
    values.update(kw)
    return ServedPipeline(**values)  # type: ignore[arg-type]


def test_without_a_rollout_the_stable_version_takes_everything() -> None:
    route = route_for(served(), EP)
    assert route.key == "ws/fraud" and route.strategy == "weighted"
    [variant] = route.variants
    assert (variant.name, variant.version, variant.weight) == ("fraud/1", 1, 100.0)
    assert variant.targets[0].model == "ws.fraud.v1"


def test_canary_weights_and_zero_weight_variants_stay_addressable() -> None:
    route = route_for(
        served(ensembles=ENSEMBLES, strategy="canary", weights={1: 95, 2: 5, 3: 0}), EP
    )
    assert [(v.name, v.weight) for v in route.variants] == [
        ("fraud/1", 95.0), ("fraud/2", 5.0), ("fraud/3", 0.0),
    ]  # fmt: skip


def test_ab_is_sticky_and_shadow_mirrors_every_candidate() -> None:
    ab = route_for(
        served(ensembles=ENSEMBLES, strategy="ab", weights={1: 70, 2: 30, 3: 0},
               params={"sticky_header": "user", "sticky_parameter": "uid"}),
        EP,
    )  # fmt: skip
    assert ab.strategy == "sticky" and ab.sticky is not None
    assert (ab.sticky.header, ab.sticky.parameter) == ("user", "uid")
    shadow = route_for(
        served(ensembles=ENSEMBLES, strategy="shadow", weights={1: 100},
               params={"sample": 0.5, "timeout_s": 2.0, "max_queue": 8, "tolerance": 0.1}),
        EP,
    )  # fmt: skip
    assert shadow.strategy == "shadow" and shadow.shadow is not None
    assert [(m.variant, m.sample) for m in shadow.shadow.mirrors] == [
        ("fraud/2", 0.5), ("fraud/3", 0.5),
    ]  # fmt: skip
    assert [v.weight for v in shadow.variants] == [100.0, 0.0, 0.0]


def test_two_workspaces_may_serve_the_same_pipeline_name() -> None:
    table = routing_table(
        7, [served(), served(workspace="other", ensembles={1: "other.fraud.v1"})], EP
    )
    assert set(table.routes) == {"ws/fraud", "other/fraud"}
    assert table.resolve("fraud", "other").variants[0].targets[0].model == "other.fraud.v1"  # type: ignore[union-attr]
    assert table.resolve("fraud") is None  # neither is in the default workspace
    assert RoutingTable.from_json(table.to_json()) == table


def test_a_table_the_gateway_would_refuse_is_refused_here() -> None:
    with pytest.raises(ValueError, match=r"sticky\.header must be a lower-case HTTP header"):
        route_for(served(ensembles=ENSEMBLES, strategy="ab", weights={1: 100},
                         params={"sticky_header": "Bad Header"}), EP)  # fmt: skip
    with pytest.raises(ValueError, match="appears twice"):
        routing_table(1, [served(), served()], EP)


def test_weights_that_all_went_to_zero_leave_the_stable_version_serving() -> None:
    route = route_for(served(ensembles=ENSEMBLES, strategy="canary", weights={}), EP)
    assert [v.weight for v in route.variants] == [100.0, 0.0, 0.0]


POOL = [Endpoint(f"http://10.0.0.{i}:8000", f"10.0.0.{i}:8001") for i in range(1, 5)]


def _servers(route: object, version: int) -> list[str]:
    [variant] = [v for v in route.variants if v.version == version]  # type: ignore[attr-defined]
    return [t.url for t in variant.targets]


@pytest.mark.parametrize("strategy", ["canary", "ab", "shadow", "blue-green"])
def test_candidates_with_servers_of_their_own_never_share_the_stable_versions(
    strategy: str,
) -> None:
    route = route_for(
        served(ensembles=ENSEMBLES, strategy=strategy, weights={1: 50, 2: 50, 3: 0},
               params={"candidate_servers": 1}),
        POOL,
    )  # fmt: skip
    assert _servers(route, 1) == [e.http_url for e in POOL[:3]]
    assert _servers(route, 2) == _servers(route, 3) == [POOL[3].http_url]
    # each variant's targets name its own ensemble on its own servers
    assert {t.model for v in route.variants for t in v.targets if v.version == 2} == {"ws.fraud.v2"}


def test_too_few_servers_up_for_a_placement_shares_them_all() -> None:
    """Two servers asked for the candidates, two up: the stable version would have none, so
    every variant keeps every server (the rollout's status says it is not isolated)."""
    where = placement({"candidate_servers": 2}, POOL[:2])
    assert not where.isolated and where.stable == where.candidates == tuple(POOL[:2])
    route = route_for(
        served(ensembles=ENSEMBLES, strategy="shadow", params={"candidate_servers": 2}),
        POOL[:2],
    )
    assert _servers(route, 1) == _servers(route, 2) == [e.http_url for e in POOL[:2]]


def test_without_a_rollout_the_placement_of_an_ended_one_does_not_apply() -> None:
    route = route_for(served(params={"candidate_servers": 1}), POOL)
    assert _servers(route, 1) == [e.http_url for e in POOL]
    assert placement({}, POOL) == Placement(tuple(POOL), tuple(POOL), isolated=False)
