"""Fleets: which replica of a variant takes a request.

A variant's targets are the same Triton model on several servers (``lastmile up --replicas
N``). Each server is one `Replica`, shared by the HTTP and gRPC sides and by every variant it
serves. A replica is *ejected* when a connection to it is refused or times out, or when it fails
the gateway's readiness probe (rollout.gateway); it is *admitted* again when the probe passes.
A target is also skipped for a moment when its replica answered that the model is not loaded
there (`Readiness`); that request is sent to another replica, since no model ran it.

`Balancer.pick` takes, among the admitted replicas, the one with the fewest requests
outstanding on this transport (least outstanding requests), starting the scan one place further
each time so that ties rotate. With every replica ejected it still picks one (the probe may be
stale, and a failed attempt costs no more than refusing). `pick_other` is for a retry: another
admitted replica, or none.
"""

from __future__ import annotations

import logging
import time
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)


class Replica:
    """One Triton server, keyed by its HTTP address."""

    __slots__ = ("name", "up")

    def __init__(self, host: str, port: int) -> None:
        self.name = f"{host}:{port}"
        self.up = True

    def eject(self, reason: str) -> None:
        if self.up:
            logger.warning("replica %s ejected: %s", self.name, reason)
        self.up = False

    def admit(self) -> None:
        if not self.up:
            logger.info("replica %s admitted again", self.name)
        self.up = True


class Balanced(Protocol):
    """A target as the balancer needs it."""

    def available(self) -> bool: ...

    def outstanding(self) -> int: ...


class Readiness:
    """One target's own state on its replica: a server that is up may still lack the model
    (a restarted replica, before the reconciler has loaded it there). Triton saying so marks
    the target unready for `HOLD_S`; after that one request finds out again."""

    __slots__ = ("replica", "unready_until")

    HOLD_S = 1.0

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.unready_until = 0.0

    def mark_unready(self) -> None:
        self.unready_until = time.monotonic() + self.HOLD_S

    def available(self) -> bool:
        if not self.replica.up:
            return False
        return not self.unready_until or self.unready_until < time.monotonic()


T = TypeVar("T", bound=Balanced)


class Balancer(Generic[T]):
    """Least outstanding requests over a variant's admitted replicas."""

    __slots__ = ("_next", "items")

    def __init__(self, items: tuple[T, ...]) -> None:
        if not items:
            raise ValueError("a variant needs at least one target")
        self.items = items
        self._next = 0

    def pick(self) -> T:
        items = self.items
        if len(items) == 1:
            return items[0]
        best = self._least(None)
        if best is None:  # every replica ejected: try one anyway
            best = min(items, key=lambda t: t.outstanding())
        return best

    def pick_other(self, tried: T) -> T | None:
        """An admitted replica other than `tried` (for a request that never reached it)."""
        if len(self.items) == 1:
            return None
        return self._least(tried)

    def _least(self, exclude: T | None) -> T | None:
        items = self.items
        n = len(items)
        start = self._next
        self._next = (start + 1) % n
        best: T | None = None
        best_load = 0
        for i in range(n):
            item = items[(start + i) % n]
            if item is exclude or not item.available():
                continue
            load = item.outstanding()
            if best is None or load < best_load:
                best, best_load = item, load
        return best
