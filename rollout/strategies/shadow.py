"""Shadow: the answer comes from a weighted draw; mirrors get a sampled copy of the request."""

from __future__ import annotations

import random
from collections.abc import Callable

from rollout.routing import Route
from rollout.strategies.base import Decision, RequestContext
from rollout.strategies.weighted import WeightedStrategy


class ShadowStrategy:
    """Mirrors never answer the client: the transport sends their copies off the client's
    path, bounded by the route's ``shadow.max_queue`` and ``shadow.timeout_s``."""

    __slots__ = ("_primary", "mirrors", "needs_key", "rand", "route")

    def __init__(self, route: Route, rand: Callable[[], float] = random.random) -> None:
        assert route.shadow is not None
        self.route = route
        self.needs_key = False
        self.rand = rand
        self.mirrors = route.shadow.mirrors
        self._primary = WeightedStrategy(route, rand)

    def pick(self, ctx: RequestContext) -> Decision:
        primary = self._primary.pick(ctx).primary
        rand = self.rand
        mirrors = tuple(
            m
            for m in self.mirrors
            if m.variant != primary.name and (m.sample >= 1.0 or rand() < m.sample)
        )
        return Decision(primary=primary, mirrors=mirrors) if mirrors else Decision(primary)
