"""Sticky A/B/n: weighted rendezvous hashing of a per-request key.

Each variant scores a key as ``-weight / ln(u)`` with ``u`` a uniform hash of (key, variant) in
(0, 1); the highest score wins. A key therefore lands on each variant with probability
proportional to its weight, always on the same one while the variants and weights stay, and
adding a variant moves only the keys that now score highest on the new one (about its share),
never a key from one old variant to another. A request without a key gets a weighted random
draw (it cannot be sticky).
"""

from __future__ import annotations

import hashlib
import math

from rollout.routing import Route
from rollout.strategies.base import Decision, RequestContext
from rollout.strategies.weighted import WeightedStrategy

_SCALE = float(1 << 64)


def _uniform(key: bytes, salt: bytes) -> float:
    digest = hashlib.blake2b(key, digest_size=8, key=salt).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE  # strictly inside (0, 1)


class StickyStrategy:
    __slots__ = ("_fallback", "_variants", "needs_key", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.needs_key = True
        # the variant name salts the hash: a variant's scores do not depend on the others. A
        # digest of it, as blake2b keys stop at 64 bytes: a long pipeline name cut there would
        # give every version of it the same salt.
        self._variants = tuple(
            (
                Decision(primary=v),
                hashlib.blake2b(v.name.encode(), digest_size=32).digest(),
                v.weight,
            )
            for v in route.variants
            if v.weight > 0
        )
        self._fallback = WeightedStrategy(route)

    def pick(self, ctx: RequestContext) -> Decision:
        key = ctx.key
        if key is None:
            return self._fallback.pick(ctx)
        best = self._variants[0][0]
        best_score = -math.inf
        for decision, salt, weight in self._variants:
            score = -weight / math.log(_uniform(key, salt))
            if score > best_score:
                best, best_score = decision, score
        return best
