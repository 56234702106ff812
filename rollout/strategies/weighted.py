"""A random draw by weight: hot-swap, canary and blue/green are weight changes of this."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable

from rollout.routing import Route
from rollout.strategies.base import Decision, RequestContext


class WeightedStrategy:
    """Variants with weight 0 are never drawn (but stay reachable by an explicit version)."""

    __slots__ = ("_cumulative", "_decisions", "_total", "needs_key", "rand", "route")

    def __init__(self, route: Route, rand: Callable[[], float] = random.random) -> None:
        self.route = route
        self.needs_key = False
        self.rand = rand
        live = [v for v in route.variants if v.weight > 0]
        # Decisions are immutable and prebuilt: a pick allocates nothing.
        self._decisions = tuple(Decision(primary=v) for v in live)
        running = 0.0
        cumulative = []
        for variant in live:
            running += variant.weight
            cumulative.append(running)
        self._cumulative = tuple(cumulative)
        self._total = running

    def pick(self, ctx: RequestContext) -> Decision:
        decisions = self._decisions
        if len(decisions) == 1:
            return decisions[0]
        index = bisect_right(self._cumulative, self.rand() * self._total)
        # rand() < 1.0, but float rounding of the running sum can land exactly on the total
        return decisions[index if index < len(decisions) else -1]
