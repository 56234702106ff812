"""How a request picks a variant of its route: one Strategy per kind, built per routing table.

The transports (rollout.proxy for HTTP, rollout.grpc_gateway for gRPC) resolve a route, build a
RequestContext and call ``pick``; nothing else in the gateway decides where a request goes.
"""

from rollout.strategies.base import Decision, RequestContext, Strategy, strategy_for
from rollout.strategies.shadow import ShadowStrategy
from rollout.strategies.sticky import StickyStrategy
from rollout.strategies.weighted import WeightedStrategy

__all__ = [
    "Decision",
    "RequestContext",
    "ShadowStrategy",
    "StickyStrategy",
    "Strategy",
    "WeightedStrategy",
    "strategy_for",
]
