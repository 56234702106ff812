"""Shadow copies of the relay's fast-path ModelInfer calls (rollout.grpc_relay).

The same contract as rollout.grpc_shadow, on HTTP/2 connections of the relay's instead of
grpc.aio: one copy per mirror variant, sent after the primary, never awaited by the client;
its own timeout (`shadow.timeout_s`); at most `shadow.max_queue` copies of a route in flight
(the dict is the gateway's, shared with the HTTP side and the grpc.aio frontend), past that
dropped and counted; every outcome counted with `stats.shadow`; when both answers succeeded
the two serialized ModelInferResponses go to the DiffCollector through a `ShadowPair`.

The copies travel on connections of their own, which read their frames on the slow lane
(rollout.lane): a candidate that answers a burst of copies at once does not hold up the
primaries' answers that arrive with it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rollout.grpc_routing import SERVICE, GrpcRoute, GrpcVariant
from rollout.grpc_shadow import ShadowPair
from rollout.h2_stream import Headers, Stream
from rollout.h2_wire import CANCEL, format_timeout
from rollout.routing import Mirror

if TYPE_CHECKING:
    from rollout.grpc_relay import GrpcRelay

INFER_PATH = f"/{SERVICE}/ModelInfer".encode()
CREDIT_BATCH = 256 * 1024  # bytes of one message received before its stream is credited


def infer_headers(authority: bytes, timeout: float, forwarded: Headers) -> Headers:
    """The request head of a ModelInfer the relay sends to a Triton (a call or a copy)."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", INFER_PATH),
        (b":authority", authority),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"grpc-timeout", format_timeout(timeout)),
        *forwarded,
    ]


class MirrorCall:
    """One copy in flight: the leg of its upstream stream."""

    __slots__ = ("done", "key", "pair", "parts", "relay", "size", "start", "timer", "up", "variant")

    def __init__(
        self, relay: GrpcRelay, key: str, variant: GrpcVariant, pair: ShadowPair | None
    ) -> None:
        self.relay = relay
        self.key = key
        self.variant = variant
        self.pair = pair
        self.parts: list[bytes] = []
        self.size = 0
        self.done = False
        self.start = relay.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.up: Stream | None = None

    def send(self, request: bytes, forwarded: Headers, timeout: float) -> None:
        target = self.variant.targets.pick()
        relay = self.relay
        pool = relay.mirror_pool_for(target.upstream)
        suffix = target.request_suffix
        self.timer = relay.loop.call_at(self.start + timeout, self._expired)
        up = self.up = pool.open(self, infer_headers(pool.authority, timeout, forwarded))
        up.send_data(b"\x00" + (len(request) + len(suffix)).to_bytes(4) + request + suffix, True)

    # -- leg --------------------------------------------------------------------------------
    def on_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        if not end_stream:
            return
        status = next((value for name, value in headers if name == b"grpc-status"), b"")
        if status == b"0":
            body = b"".join(self.parts)
            if len(body) >= 5 and body[0] == 0:
                self._finish("ok", body[5:])
                return
        self._finish("timeout" if status == b"4" else "error")

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= CREDIT_BATCH:
            stream.credit(self.size)
            self.size = 0

    def on_reset(self, stream: Stream, code: int) -> None:
        self._finish("error")

    def on_lost(self, stream: Stream, unprocessed: bool) -> None:
        self._finish("error")

    def _expired(self) -> None:
        self.timer = None
        if self.up is not None:
            self.up.reset(CANCEL)
        self._finish("timeout")
        self.relay.flusher.flush()

    def _finish(self, outcome: str, response: bytes | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.relay.frontend.shadow.release(self.key)
        seconds = self.relay.loop.time() - self.start
        self.relay.stats.shadow(self.key, self.variant.name, outcome, seconds)
        if response is not None and self.pair is not None:
            self.pair.candidate_done(self.variant.name, response, seconds)


def mirror(
    relay: GrpcRelay,
    route: GrpcRoute,
    mirrors: tuple[Mirror, ...],
    request: bytes,
    forwarded: Headers,
) -> ShadowPair | None:
    """One copy of `request` per mirror (or counted dropped), with the client metadata that
    is `forwarded`. The pair to settle with the primary's outcome, None when nothing will be
    compared."""
    shadow = route.shadow
    if shadow is None:
        return None
    pair, admitted = relay.frontend.shadow.admit(route, mirrors)
    for variant in admitted:
        MirrorCall(relay, route.key, variant, pair).send(request, forwarded, shadow.timeout_s)
    return pair
