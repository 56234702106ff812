"""How a request picks a variant: weighted draws, sticky keys, shadow mirrors."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

from rollout.routing import Mirror, Route, Shadow, Sticky, Target, Variant
from rollout.strategies import (
    Decision,
    RequestContext,
    ShadowStrategy,
    StickyStrategy,
    WeightedStrategy,
    strategy_for,
)

TARGET = (Target(url="http://127.0.0.1:8100", model="m"),)


def make_route(weights: dict[int, float], pipeline: str = "fraud", **extra: object) -> Route:
    variants = tuple(
        Variant(name=f"{pipeline}/{v}", version=v, weight=w, targets=TARGET)
        for v, w in weights.items()
    )
    return Route(workspace="default", pipeline=pipeline, variants=variants, **extra)  # type: ignore[arg-type]


def sequence(*values: float) -> Iterator[float]:
    return iter(values)


def names(decisions: list[Decision]) -> Counter[str]:
    return Counter(d.primary.name for d in decisions)


def test_strategy_for_builds_the_routes_kind() -> None:
    weighted = strategy_for(make_route({1: 1}))
    sticky = strategy_for(make_route({1: 1}, strategy="sticky", sticky=Sticky()))
    shadow = strategy_for(
        make_route({1: 1, 2: 0}, strategy="shadow", shadow=Shadow(mirrors=(Mirror("fraud/2"),)))
    )
    assert isinstance(weighted, WeightedStrategy) and not weighted.needs_key
    assert isinstance(sticky, StickyStrategy) and sticky.needs_key
    assert isinstance(shadow, ShadowStrategy) and not shadow.needs_key


def test_weighted_draw_follows_weights_and_never_draws_a_zero_weight() -> None:
    rng = random.Random(1234)
    strategy = WeightedStrategy(make_route({1: 70, 2: 30, 3: 0}), rand=rng.random)
    draws = 100_000
    counts = names([strategy.pick(RequestContext()) for _ in range(draws)])
    assert counts["fraud/3"] == 0
    # binomial standard deviation ~145 draws: allow about 5 of them
    assert abs(counts["fraud/1"] - 70_000) < 725
    assert abs(counts["fraud/2"] - 30_000) < 725


def test_a_single_live_variant_is_returned_without_a_draw() -> None:
    def no_draw() -> float:
        raise AssertionError("no random draw expected")

    route = make_route({1: 0.001, 2: 0})
    strategy = WeightedStrategy(route, rand=no_draw)
    first = strategy.pick(RequestContext())
    assert first.primary is route.variants[0] and first.mirrors == ()
    assert all(strategy.pick(RequestContext()) is first for _ in range(100))  # prebuilt


def constant(value: float) -> Callable[[], float]:
    return lambda: value


def test_weighted_draw_at_the_edges_of_the_random_range() -> None:
    route = make_route({1: 0.1, 2: 0.2})
    for value, expected in (
        (0.0, "fraud/1"),
        (0.3333, "fraud/1"),
        (0.3334, "fraud/2"),
        (0.9999999999999999, "fraud/2"),
        (1.0, "fraud/2"),  # rounding guard: never IndexError
    ):
        strategy = WeightedStrategy(route, rand=constant(value))
        assert strategy.pick(RequestContext()).primary.name == expected, value


def keys(count: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(count)]


def sticky_route(weights: dict[int, float], pipeline: str = "fraud") -> StickyStrategy:
    return StickyStrategy(make_route(weights, pipeline, strategy="sticky", sticky=Sticky()))


def test_a_sticky_key_always_lands_on_the_same_variant() -> None:
    strategy = sticky_route({1: 50, 2: 50})
    first = {key: strategy.pick(RequestContext(key)).primary.name for key in keys(200)}
    for _ in range(5):
        again = sticky_route({1: 50, 2: 50})  # a new table with the same variants
        assert {k: again.pick(RequestContext(k)).primary.name for k in keys(200)} == first
    assert set(first.values()) == {"fraud/1", "fraud/2"}


def test_sticky_keys_split_by_weight_and_a_zero_weight_gets_none() -> None:
    strategy = sticky_route({1: 70, 2: 30, 3: 0})
    counts = names([strategy.pick(RequestContext(key)) for key in keys(20_000)])
    assert counts["fraud/3"] == 0
    # binomial standard deviation ~65 keys: allow about 5 of them
    assert abs(counts["fraud/1"] - 14_000) < 325
    assert abs(counts["fraud/2"] - 6_000) < 325


def test_adding_a_variant_moves_only_the_keys_it_takes() -> None:
    before = sticky_route({1: 50, 2: 50})
    after = sticky_route({1: 50, 2: 50, 3: 50})
    moved: Counter[str] = Counter()
    for key in keys(9_000):
        old = before.pick(RequestContext(key)).primary.name
        new = after.pick(RequestContext(key)).primary.name
        if old != new:
            assert new == "fraud/3", (key, old, new)  # never from one old variant to another
            moved[old] += 1
    # the new variant takes about its share (1/3), evenly from both
    assert abs(sum(moved.values()) - 3_000) < 300
    assert abs(moved["fraud/1"] - moved["fraud/2"]) < 300


def test_raising_a_weight_moves_keys_only_to_that_variant() -> None:
    canary_5 = sticky_route({1: 95, 2: 5})
    canary_25 = sticky_route({1: 75, 2: 25})
    for key in keys(5_000):
        old = canary_5.pick(RequestContext(key)).primary.name
        if old == "fraud/2":
            assert canary_25.pick(RequestContext(key)).primary.name == "fraud/2"


def test_versions_of_a_long_pipeline_name_are_hashed_apart() -> None:
    strategy = sticky_route({1: 50, 2: 50}, pipeline="p" * 63)  # names over 64 bytes
    counts = names([strategy.pick(RequestContext(key)) for key in keys(2_000)])
    assert abs(counts["p" * 63 + "/1"] - 1_000) < 150


def test_a_request_without_a_key_gets_a_weighted_draw() -> None:
    strategy = sticky_route({1: 100, 2: 0})
    assert strategy.pick(RequestContext()).primary.name == "fraud/1"
    both = sticky_route({1: 50, 2: 50})
    assert set(names([both.pick(RequestContext()) for _ in range(200)])) == {"fraud/1", "fraud/2"}


def shadow_route(weights: dict[int, float], *mirrors: Mirror) -> Route:
    return make_route(weights, strategy="shadow", shadow=Shadow(mirrors=mirrors))


def test_shadow_answers_from_the_weighted_draw_and_mirrors_every_request() -> None:
    route = shadow_route({1: 100, 2: 0}, Mirror("fraud/2"))
    strategy = ShadowStrategy(route)
    for _ in range(100):
        decision = strategy.pick(RequestContext())
        assert decision.primary.name == "fraud/1"
        assert decision.mirrors == (Mirror("fraud/2"),)


def test_shadow_samples_each_mirror_and_skips_a_mirror_that_answers() -> None:
    route = shadow_route(
        {1: 50, 2: 50, 3: 0}, Mirror("fraud/2", sample=0.25), Mirror("fraud/3", sample=0.5)
    )
    # draws: primary, then one per mirror still considered
    values = sequence(0.1, 0.2, 0.6, 0.1, 0.3, 0.4, 0.9, 0.49)
    strategy = ShadowStrategy(route, rand=lambda: next(values))
    first = strategy.pick(RequestContext())  # primary fraud/1; 0.2 < .25 yes; 0.6 < .5 no
    assert first.primary.name == "fraud/1"
    assert [m.variant for m in first.mirrors] == ["fraud/2"]
    second = strategy.pick(RequestContext())  # fraud/1; 0.3 no; 0.4 yes
    assert [m.variant for m in second.mirrors] == ["fraud/3"]
    third = strategy.pick(RequestContext())  # primary fraud/2 (0.9): its own mirror is skipped
    assert third.primary.name == "fraud/2"
    assert [m.variant for m in third.mirrors] == ["fraud/3"]  # 0.49 < .5


def test_shadow_sample_rates_hold_over_many_requests() -> None:
    route = shadow_route({1: 100, 2: 0}, Mirror("fraud/2", sample=0.1))
    rng = random.Random(7)
    strategy = ShadowStrategy(route, rand=rng.random)
    mirrored = sum(bool(strategy.pick(RequestContext()).mirrors) for _ in range(20_000))
    assert abs(mirrored - 2_000) < 220  # ~5 standard deviations
