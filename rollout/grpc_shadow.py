"""Shadow mirroring for gRPC ModelInfer: copies to mirror variants, off the client's path.

A mirrored copy is a task on the event loop that the client's call never awaits: its answer,
its error and its slowness stay here (counted with `stats.shadow`), the client's response is
built from the primary alone. Each copy has the route's own timeout (`shadow.timeout_s`), and
at most `shadow.max_queue` copies of one route are in flight: past that a copy is dropped and
counted, so a slow candidate cannot make the gateway hold an unbounded number of requests.

When the primary and a mirror both succeeded, the two serialized ModelInferResponses go to the
DiffCollector (decoded on its own thread). A `ShadowPair` joins them, whichever finishes first;
it only exists for mirrored requests, so the normal path keeps no reference to any response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc

from rollout.gateway_metrics import GatewayStats
from rollout.grpc_routing import GrpcRoute, GrpcVariant
from rollout.routing import Mirror
from rollout.shadow_diff import RawResponse

if TYPE_CHECKING:
    from rollout.shadow_diff import DiffCollector

logger = logging.getLogger(__name__)


class ShadowPair:
    """The primary's answer of one mirrored request, waiting for (or waited on by) mirrors."""

    __slots__ = ("diffs", "primary", "primary_s", "route", "settled", "tolerance", "waiting")

    def __init__(self, route: str, tolerance: float, diffs: DiffCollector) -> None:
        self.route = route
        self.tolerance = tolerance
        self.diffs = diffs
        self.primary: bytes | None = None
        self.primary_s = 0.0
        self.settled = False
        self.waiting: list[tuple[str, bytes, float]] = []

    def primary_done(self, response: bytes | None, seconds: float = 0.0) -> None:
        """The primary's serialized response, or None when it failed (nothing is compared)."""
        self.settled = True
        self.primary = response
        self.primary_s = seconds
        waiting, self.waiting = self.waiting, []
        if response is not None:
            for mirror, candidate, candidate_s in waiting:
                self._submit(mirror, candidate, candidate_s)

    def candidate_done(self, mirror: str, response: bytes, seconds: float) -> None:
        if not self.settled:
            self.waiting.append((mirror, response, seconds))
        elif self.primary is not None:
            self._submit(mirror, response, seconds)

    def _submit(self, mirror: str, candidate: bytes, candidate_s: float) -> None:
        assert self.primary is not None
        self.diffs.submit(
            self.route,
            mirror,
            RawResponse("grpc", self.primary, None),
            RawResponse("grpc", candidate, None),
            self.primary_s,
            candidate_s,
            self.tolerance,
        )


class GrpcShadow:
    """Sends mirror copies and keeps them bounded; one per frontend, shared by every table."""

    def __init__(
        self,
        stats: GatewayStats,
        diffs: DiffCollector | None,
        inflight: dict[str, int] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.stats = stats
        self.diffs = diffs
        # Copies in flight per route key, not per compiled route: the bound holds across table
        # pushes, and across transports when the HTTP side shares its dict (same loop thread).
        self.inflight: dict[str, int] = {} if inflight is None else inflight
        self.tasks: set[asyncio.Task[None]] = set()

    def mirror(
        self,
        route: GrpcRoute,
        mirrors: tuple[Mirror, ...],
        request: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> ShadowPair | None:
        """Start one copy of `request` per mirror (or count it dropped); the pair to settle
        with the primary's outcome, None when nothing will be compared."""
        shadow = route.shadow
        if shadow is None:
            return None
        pair, admitted = self.admit(route, mirrors)
        for variant in admitted:
            task = self.loop.create_task(
                self._send(route.key, variant, request, metadata, shadow.timeout_s, pair)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return pair

    def admit(
        self, route: GrpcRoute, mirrors: tuple[Mirror, ...]
    ) -> tuple[ShadowPair | None, list[GrpcVariant]]:
        """The mirror variants that get a copy now (each counted in flight until `release`),
        the others counted dropped (past `shadow.max_queue`); and the pair their answers join,
        None when nothing will be compared. Shared with the HTTP/2 relay's copies."""
        shadow = route.shadow
        assert shadow is not None
        pair = None
        admitted: list[GrpcVariant] = []
        key = route.key
        for mirror in mirrors:
            variant = route.variants[mirror.variant]
            inflight = self.inflight.get(key, 0)
            if inflight >= shadow.max_queue:
                self.stats.shadow(key, variant.name, "dropped", None)
                continue
            if pair is None and self.diffs is not None:
                pair = ShadowPair(key, shadow.tolerance, self.diffs)
            self.inflight[key] = inflight + 1
            admitted.append(variant)
        return pair, admitted

    def release(self, key: str) -> None:
        """One copy of route `key` is over (answered, failed or timed out)."""
        left = self.inflight.get(key, 1) - 1
        if left > 0:
            self.inflight[key] = left
        else:
            self.inflight.pop(key, None)

    async def _send(
        self,
        key: str,
        variant: GrpcVariant,
        request: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout: float,
        pair: ShadowPair | None,
    ) -> None:
        target = variant.targets.pick()
        start = self.loop.time()
        try:
            response: bytes = await target.upstream.infer(
                request + target.request_suffix, timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            outcome = "timeout" if timed_out else "error"
            self.stats.shadow(key, variant.name, outcome, self.loop.time() - start)
            return
        except asyncio.CancelledError:  # the gateway is stopping
            raise
        except Exception:  # e.g. the channel was closed by a table push: never the client's
            logger.debug("mirror to %s failed", variant.name, exc_info=True)
            self.stats.shadow(key, variant.name, "error", self.loop.time() - start)
            return
        finally:
            self.release(key)
        seconds = self.loop.time() - start
        self.stats.shadow(key, variant.name, "ok", seconds)
        if pair is not None:
            pair.candidate_done(variant.name, response, seconds)

    async def stop(self) -> None:
        """Abandon the copies still in flight (their answers would only be compared)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def settle(pair: ShadowPair | None, response: Any = None, seconds: float = 0.0) -> None:
    """Hand the primary's outcome to `pair` (a no-op for unmirrored requests)."""
    if pair is not None:
        pair.primary_done(response, seconds)
