"""Shadow mirroring for HTTP inference: copies to mirror variants, off the client's path.

A copy is a `MirrorExchange` handed to the mirror target's upstream pool, like any request,
but nothing waits for it: its answer, its errors and its slowness stay here (counted with
`stats.shadow`); the client's response comes from the primary alone. Each copy has the route's
own timeout (`shadow.timeout_s`, a timer on the loop), and at most `shadow.max_queue` copies of
one route are in flight; past that, or when the mirror's pool has no free connection (a copy
never queues in front of client requests), the copy is dropped and counted.

A copy's answer is parsed and handled on the slow lane (rollout.lane), a few per turn of the
loop, so that a candidate answering a burst of copies at once does not hold up the primaries
that arrive with it.

When the primary and a mirror both succeeded, the two raw bodies go to the DiffCollector
(decoded on its own thread). A `ShadowGroup` joins them, whichever finishes first; it exists
only for mirrored requests, so the normal path keeps no reference to any response.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rollout.exchange import INFERENCE_HEADER_LENGTH, infer_payload
from rollout.gateway_metrics import GatewayStats
from rollout.lane import SlowLane
from rollout.routing import Mirror
from rollout.shadow_diff import DiffCollector, RawResponse
from rollout.upstream import UpstreamConnection

if TYPE_CHECKING:
    from rollout.http_routing import CompiledRoute

_PENDING, _OK, _FAILED = 0, 1, 2


def _raw(chunks: list[bytes], header_length: int) -> RawResponse:
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return RawResponse("http", body, header_length if header_length >= 0 else None)


class ShadowGroup:
    """One mirrored client request: the primary's answer, paired with each mirror's."""

    __slots__ = (
        "diffs",
        "primary",
        "primary_chunks",
        "primary_hlen",
        "primary_s",
        "route",
        "state",
        "tolerance",
        "waiting",
    )

    def __init__(self, route: str, tolerance: float, diffs: DiffCollector) -> None:
        self.route = route
        self.tolerance = tolerance
        self.diffs = diffs
        self.state = _PENDING
        self.primary: RawResponse | None = None
        self.primary_chunks: list[bytes] = []
        self.primary_hlen = -1
        self.primary_s = 0.0
        self.waiting: list[tuple[str, RawResponse, float]] = []

    def primary_done(self, chunks: list[bytes] | None, header_length: int, seconds: float) -> None:
        """The primary's response as Triton sent it, or None when it failed (no comparison)."""
        if chunks is None:
            self.state = _FAILED
            self.waiting.clear()
            return
        self.state = _OK
        self.primary_chunks = chunks
        self.primary_hlen = header_length
        self.primary_s = seconds
        waiting, self.waiting = self.waiting, []
        for mirror, candidate, candidate_s in waiting:
            self._submit(mirror, candidate, candidate_s)

    def mirror_done(
        self, mirror: str, chunks: list[bytes], header_length: int, seconds: float
    ) -> None:
        """A mirror answered 2xx with `chunks`."""
        if self.state == _FAILED:
            return
        candidate = _raw(chunks, header_length)
        if self.state == _PENDING:
            self.waiting.append((mirror, candidate, seconds))
        else:
            self._submit(mirror, candidate, seconds)

    def _submit(self, mirror: str, candidate: RawResponse, seconds: float) -> None:
        primary = self.primary
        if primary is None:  # joined once, when the first mirror needs it
            primary = self.primary = _raw(self.primary_chunks, self.primary_hlen)
            self.primary_chunks = []
        self.diffs.submit(
            self.route, mirror, primary, candidate, self.primary_s, seconds, self.tolerance
        )


class MirrorExchange:
    """A copy of a client request sent to a mirror variant; only the diff report sees the
    answer."""

    __slots__ = (
        "chunks",
        "conn",
        "done",
        "group",
        "hlen",
        "lane",
        "mirrors",
        "payload",
        "retried",
        "route",
        "start",
        "status",
        "timer",
        "variant",
    )

    def __init__(
        self,
        mirrors: ShadowMirrors,
        route: str,
        variant: str,
        group: ShadowGroup,
        payload: list[bytes],
        start: float,
    ) -> None:
        self.mirrors = mirrors
        self.lane: SlowLane | None = mirrors.lane  # the answer waits for no client
        self.route = route
        self.variant = variant
        self.group = group
        self.payload = payload
        self.start = start
        self.conn: UpstreamConnection | None = None
        self.retried = False
        self.done = False
        self.status = 0
        self.hlen = -1
        self.chunks: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None

    def alive(self) -> bool:
        return not self.done

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            if name.lower() == INFERENCE_HEADER_LENGTH:
                try:
                    self.hlen = int(value)
                except ValueError:
                    self.hlen = -1

    def on_response_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_response_complete(self) -> None:
        ok = 200 <= self.status < 300
        if self._end("ok" if ok else "error") and ok:
            self.group.mirror_done(self.variant, self.chunks, self.hlen, self.elapsed)
        self.chunks = []

    def on_upstream_failure(self, lost: bool = False) -> None:
        self._end("error")

    def on_connect_failure(self) -> None:
        self._end("error")  # a copy is never retried elsewhere: it would only add load

    def on_timeout(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach_and_abort()
        self._end("timeout")

    def cancel(self) -> None:
        """Gateway stopping: drop the copy, count nothing."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach_and_abort()
        self._end(None)

    @property
    def elapsed(self) -> float:
        return self.mirrors.loop.time() - self.start

    def _end(self, outcome: str | None) -> bool:
        if self.done:
            return False
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.mirrors.finished(self, outcome)
        return True


class ShadowMirrors:
    """The gateway's mirrored copies in flight, bounded per route."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stats: GatewayStats, diffs: DiffCollector
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.diffs = diffs
        self.lane = SlowLane(loop)  # where the copies' answers are handled
        self.inflight: dict[str, int] = {}  # route key -> copies in flight
        self.active: set[MirrorExchange] = set()

    def launch(
        self,
        route: CompiledRoute,
        mirrors: tuple[Mirror, ...],
        headers: list[tuple[bytes, bytes]],
        body: list[bytes],
        size: int,
    ) -> ShadowGroup | None:
        """Send a copy of a request to each of `mirrors`; the group to hand the primary's
        answer to, None when every copy was dropped."""
        shadow = route.route.shadow
        if shadow is None:
            return None
        key = route.key
        group = None
        now = self.loop.time()
        for mirror in mirrors:
            variant = route.variants[mirror.variant]
            target = variant.pick()
            pool = target.pool
            if self.inflight.get(key, 0) >= shadow.max_queue or not pool.has_room():
                self.stats.shadow(key, variant.name, "dropped", None)
                continue
            if group is None:
                group = ShadowGroup(key, shadow.tolerance, self.diffs)
            ex = MirrorExchange(
                self, key, variant.name, group, infer_payload(target, headers, body, size), now
            )
            ex.timer = self.loop.call_later(shadow.timeout_s, ex.on_timeout)
            self.inflight[key] = self.inflight.get(key, 0) + 1
            self.active.add(ex)
            pool.submit(ex)
        return group

    def finished(self, ex: MirrorExchange, outcome: str | None) -> None:
        self.active.discard(ex)
        left = self.inflight.get(ex.route, 1) - 1
        if left > 0:
            self.inflight[ex.route] = left
        else:
            self.inflight.pop(ex.route, None)
        if outcome is not None:
            self.stats.shadow(ex.route, ex.variant, outcome, ex.elapsed)

    def close(self) -> None:
        for ex in list(self.active):
            ex.cancel()
