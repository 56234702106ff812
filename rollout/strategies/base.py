"""The seam between transports and routing policy: pick(context) -> Decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rollout.routing import Mirror, Route, Variant


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a strategy may look at. `key` is the sticky key (header value, else the named
    request parameter, as bytes), None when the request carries none or the route is not
    sticky; transports extract it only when the strategy asks (``needs_key``)."""

    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes: the variant that answers, the mirrors that get a copy (their
    answers never reach the client) and whether the exchange is sampled for capture."""

    primary: Variant
    mirrors: tuple[Mirror, ...] = ()
    sample: bool = False


class Strategy(Protocol):
    route: Route
    # the transport extracts RequestContext.key only when this is true
    needs_key: bool

    def pick(self, ctx: RequestContext) -> Decision: ...


def strategy_for(route: Route) -> Strategy:
    """The strategy object of a route (built once per routing table)."""
    from rollout.strategies.shadow import ShadowStrategy
    from rollout.strategies.sticky import StickyStrategy
    from rollout.strategies.weighted import WeightedStrategy

    if route.strategy == "sticky":
        return StickyStrategy(route)
    if route.strategy == "shadow":
        return ShadowStrategy(route)
    return WeightedStrategy(route)
