"""One call on the relay's public gRPC port (rollout.grpc_relay): `Call`, the leg of the
client's stream and, once routed, of its upstream stream.

A call collects its request; a complete, uncompressed unary ModelInfer is routed and sent to the
chosen Triton (FAST), and the answer is stamped and settled (statistics, shadow pair, capture);
anything else, and a fast-path call that reached no model, is handed over stream for stream to
the grpc.aio frontend (RELAY). The relay's module docstring says why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from grpc import StatusCode

from rollout.body_guard import SHM_MARKER
from rollout.capture import GRPC
from rollout.gateway_metrics import grpc_code_to_http
from rollout.grpc_relay_mirror import CREDIT_BATCH, INFER_PATH, infer_headers, mirror
from rollout.grpc_requests import (
    FORWARD_METADATA,
    NO_KEY,
    PROTOCOL,
    VERSION_RE,
    elsewhere,
    public_error,
    sticky_context,
)
from rollout.grpc_routing import GrpcRoute, GrpcTarget, GrpcVariant
from rollout.grpc_shadow import ShadowPair
from rollout.grpc_wire import WireError, mentions, scan_name_version
from rollout.h2_conn import MAX_HEADER_LIST
from rollout.h2_stream import Headers, Stream
from rollout.h2_wire import (
    CANCEL,
    INTERNAL_ERROR,
    REFUSED_STREAM,
    parse_timeout,
    percent_decode,
    percent_encode,
)
from rollout.routing import DEFAULT_WORKSPACE, VARIANT_HEADER, WORKSPACE_HEADER, Mirror

if TYPE_CHECKING:
    from rollout.grpc_relay import GrpcRelay

_VARIANT_HEADER = VARIANT_HEADER.encode()
_WORKSPACE_HEADER = WORKSPACE_HEADER.encode()
_FORWARD = frozenset(name.encode() for name in FORWARD_METADATA)
_CODES = {code.value[0]: code for code in StatusCode}
_GRPC_RESERVED = frozenset(
    {b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
     b"user-agent", b"grpc-message-type"}
)  # fmt: skip
_OK_TRAILERS = [(b"grpc-status", b"0")]
# An answer up to this size is joined with its prefix and suffix into one DATA frame (of the
# default frame size); a larger one goes out piece by piece, its tensors uncopied.
ONE_FRAME = 16 * 1024 - 64

COLLECT, FAST, RELAY, DONE = range(4)


class _Failure:
    """A finished call's status, shaped like grpc.aio.AioRpcError for the shared helpers."""

    __slots__ = ("_code", "_details")

    def __init__(self, code: StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_GRPC_HEAD: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def _one_message(body: bytes) -> bool:
    """`body` is exactly one uncompressed gRPC message (flag 0, length prefix that fits)."""
    return len(body) >= 5 and body[0] == 0 and int.from_bytes(body[1:5]) == len(body) - 5


def _reply_headers(label: str) -> Headers:
    return [*_GRPC_HEAD, (_VARIANT_HEADER, label.encode())]


def _status_headers(code: StatusCode, details: str) -> Headers:
    return [(b"grpc-status", b"%d" % code.value[0]), (b"grpc-message", percent_encode(details))]


def metadata_too_large(size: int) -> Headers:
    """What grpc itself answers a call whose metadata is over the limit: that call fails."""
    return _GRPC_HEAD + _status_headers(
        StatusCode.RESOURCE_EXHAUSTED,
        f"received metadata of {size} bytes; the limit is {MAX_HEADER_LIST} bytes",
    )


class Call:
    """One client stream and, once routed, its upstream stream: the leg of both."""

    __slots__ = (
        "captured",
        "deadline",
        "down",
        "key",
        "label",
        "pair",
        "parts",
        "relay",
        "request_headers",
        "response",
        "size",
        "start",
        "state",
        "target",
        "timer",
        "up",
        "variant",
    )

    def __init__(self, relay: GrpcRelay, down: Stream) -> None:
        self.relay = relay
        self.down = down
        self.up: Stream | None = None
        self.state = COLLECT
        self.request_headers: Headers = []
        self.parts: list[bytes] = []
        self.size = 0
        self.response: list[bytes] = []
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.target: GrpcTarget | None = None
        self.variant: GrpcVariant | None = None
        self.pair: ShadowPair | None = None
        self.captured = False  # sampled for data capture (rollout.capture)
        self.key = self.label = ""
        self.start = 0.0

    # -- events (both streams) --------------------------------------------------------------
    def on_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        if stream is self.down:
            self._request_headers(headers, end_stream)
        elif self.state == RELAY:
            self.down.reply_started = True
            self.down.send_headers(headers, end_stream)
        elif self.state == FAST:
            self._response_headers(headers, end_stream)

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if stream is self.down:
            if self.state == COLLECT:
                self._collect(data, end_stream)
            elif self.state == RELAY and self.up is not None:
                self.up.send_data(data, end_stream, on_sent=self.down.credit)
        elif self.state == RELAY:
            self.down.send_data(data, end_stream, on_sent=stream.credit)
        elif self.state == FAST:
            self.response.append(data)
            self.size += len(data)
            if self.size >= CREDIT_BATCH:  # a small answer never needs its window back
                stream.credit(self.size)
                self.size = 0

    def on_reset(self, stream: Stream, code: int) -> None:
        if stream is self.down:  # the client gave up (cancel, deadline)
            self._client_gone()
        elif self.state == RELAY:
            self.down.reset(code)
            self.state = DONE
        elif self.state == FAST:
            if code == REFUSED_STREAM:
                self._hand_over()
            else:
                self._fail(StatusCode.UNAVAILABLE, self._lost_message("reset the call"), raw=True)

    def on_lost(self, stream: Stream, unprocessed: bool) -> None:
        if stream is self.down:
            self._client_gone()
        elif self.state == RELAY:
            if self.down.reply_started:
                self.down.reset(INTERNAL_ERROR)
            else:
                busy = _status_headers(StatusCode.UNAVAILABLE, "gateway busy")
                self.down.send_headers(_GRPC_HEAD + busy, True)  # trailers-only
            self.state = DONE
        elif self.state == FAST:
            if unprocessed:
                self._hand_over()
            else:
                self._fail(
                    StatusCode.UNAVAILABLE, self._lost_message("closed the connection"), raw=True
                )

    # -- the request ------------------------------------------------------------------------
    def _request_headers(self, headers: Headers, end_stream: bool) -> None:
        if self.state != COLLECT:  # trailers from the client (not gRPC, but relayed)
            if self.state == RELAY and self.up is not None:
                self.up.send_headers(headers, end_stream)
            return
        self.request_headers = headers
        fast = False
        for name, value in headers:
            if name == b":path":
                fast = value == INFER_PATH
            elif name == b"grpc-encoding" and value != b"identity":
                fast = False
                break
        if not fast or end_stream:
            self._hand_over()

    def _collect(self, data: bytes, end_stream: bool) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.relay.max_body:
            self._hand_over()  # the grpc.aio frontend answers RESOURCE_EXHAUSTED
            return
        if self.size >= CREDIT_BATCH:
            self.down.credit(len(data))  # from here on, every frame (the window is 1 MiB)
        if end_stream:
            self._route()

    def _route(self) -> None:
        """Route a complete unary ModelInfer, or hand it over to the grpc.aio frontend."""
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = [body]
        if not _one_message(body):
            self._hand_over()  # compressed, several messages or truncated: the slow path says
            return
        request = body[5:]
        frontend = self.relay.frontend
        workspace = DEFAULT_WORKSPACE
        for hname, hvalue in self.request_headers:
            if hname == _WORKSPACE_HEADER:
                workspace = hvalue.decode("latin-1")
                break
        try:
            name, version = scan_name_version(request)
        except WireError:
            self._hand_over()
            return
        route = frontend.routing.lookup(workspace, name)
        if route is None or mentions(request, SHM_MARKER):
            self._hand_over()
            return
        mirrors: tuple[Mirror, ...] = ()
        if version:
            variant = route.by_version.get(version) if VERSION_RE.fullmatch(version) else None
            if variant is None:
                self._hand_over()
                return
        else:
            try:
                ctx = (
                    sticky_context(route, self._metadata(), request)
                    if route.strategy.needs_key
                    else NO_KEY
                )
            except WireError:
                self._hand_over()
                return
            decision = route.strategy.pick(ctx)
            variant = route.variants[decision.primary.name]
            mirrors = decision.mirrors
        target = variant.targets.pick()
        self._send(route, variant, target, request, mirrors)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The call's metadata as grpc.aio shows it to a handler (no pseudo or reserved
        headers), for a sticky key."""
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.request_headers
            if name[:1] != b":" and name not in _GRPC_RESERVED
        )

    def _send(
        self,
        route: GrpcRoute,
        variant: GrpcVariant,
        target: GrpcTarget,
        request: bytes,
        mirrors: tuple[Mirror, ...],
    ) -> None:
        key = route.key
        relay = self.relay
        loop = relay.loop
        self.state = FAST
        self.size = 0  # from now on: answer bytes not yet credited
        self.key, self.label, self.variant, self.target = key, variant.name, variant, target
        self.start = loop.time()
        timeout = relay.upstream_timeout
        upstream = target.upstream
        pool = relay.pool_for(upstream)
        forwarded: Headers = []
        for name, value in self.request_headers:
            if name == b"grpc-timeout":
                client = parse_timeout(value)
                if client is not None and client < timeout:
                    timeout = client
            elif name in _FORWARD:
                forwarded.append((name, value))
        self.deadline = self.start + timeout
        self.timer = loop.call_at(self.deadline, self._expired)
        relay.stats.enter(key, self.label)
        upstream.inflight += 1
        suffix = target.request_suffix
        size = len(request) + len(suffix)
        up = self.up = pool.open(self, infer_headers(pool.authority, timeout, forwarded))
        prefix = b"\x00" + size.to_bytes(4)
        if size < CREDIT_BATCH:  # one DATA frame
            up.send_data(prefix + request + suffix, True)
        else:  # large: written as it is, no second copy of the tensors
            up.send_data(prefix)
            up.send_data(request)
            up.send_data(suffix, True)
        if mirrors:  # after the primary: a copy never goes out ahead of the client's call
            self.pair = mirror(relay, route, mirrors, request, forwarded)
        sampler = route.capture
        self.captured = (
            sampler is not None and relay.frontend.capture is not None and sampler.take()
        )

    # -- the answer -------------------------------------------------------------------------
    def _response_headers(self, headers: Headers, end_stream: bool) -> None:
        if not end_stream:
            if not self.down.reply_started:  # response headers
                self.down.reply_started = True
                self.down.send_headers(_reply_headers(self.label))
            return
        status, message = -1, b""
        for name, value in headers:
            if name == b"grpc-status":
                status = int(value) if value.isdigit() else -1
            elif name == b"grpc-message":
                message = value
        if status == 0:
            self._answer()
            return
        code = _CODES.get(status, StatusCode.UNKNOWN)
        details = percent_decode(message)
        assert self.variant is not None and self.target is not None
        if not self.down.reply_started and (
            elsewhere(self.variant, self.target, _Failure(code, details)) is not None
        ):
            self._hand_over()  # it reached no model: the grpc.aio frontend tries another
            return
        self._fail(*public_error(self.target, _Failure(code, details)), raw=True)

    def _answer(self) -> None:
        body = self.response[0] if len(self.response) == 1 else b"".join(self.response)
        if not _one_message(body):
            self._fail(StatusCode.INTERNAL, "malformed answer from upstream")
            return
        assert self.variant is not None
        suffix = self.variant.response_suffix
        down = self.down
        if not down.reply_started:
            down.reply_started = True
            down.send_headers(_reply_headers(self.label))
        prefix = b"\x00" + (len(body) - 5 + len(suffix)).to_bytes(4)
        if len(body) <= ONE_FRAME:  # small: one DATA frame (a copy of a small answer)
            down.send_data(prefix + body[5:] + suffix)
        else:  # large: the tensors written as they came, no second copy
            down.send_data(prefix)
            down.send_data(memoryview(body)[5:])
            down.send_data(suffix)
        down.send_headers(_OK_TRAILERS, True)
        if self.pair is not None:
            self.pair.primary_done(body[5:], self.relay.loop.time() - self.start)
        spool = self.relay.frontend.capture
        if self.captured and spool is not None:
            request = memoryview(self.parts[0])[5:]
            spool.offer(self.key, self.label, GRPC, (request,), -1, (memoryview(body)[5:],), -1)
        self._settle(200)

    def _lost_message(self, what: str) -> str:
        assert self.target is not None
        return (
            f"the server for {self.target.public!r} {what} before answering; the call was not "
            "retried, as a model may have run it"
        )

    def _fail(self, code: StatusCode, details: str, *, raw: bool = False) -> None:
        """End the call with `code`; `raw`: details already public (else made public here)."""
        if self.state != FAST:
            return
        assert self.target is not None
        if not raw:
            code, details = public_error(self.target, _Failure(code, details))
        if self.up is not None:
            self.up.reset(CANCEL)
        down = self.down
        if not down.reply_started:  # initial metadata names the variant, errors included
            down.reply_started = True
            down.send_headers(_reply_headers(self.label))
        down.send_headers(_status_headers(code, details), True)
        self._settle(grpc_code_to_http(code.name))

    def _settle(self, http_code: int) -> None:
        self.state = DONE
        self.relay.counts["fast"] += 1
        if self.pair is not None and not self.pair.settled:  # the primary failed: no diff
            self.pair.primary_done(None)
        if self.timer is not None:
            self.timer.cancel()
        assert self.target is not None
        self.target.upstream.inflight -= 1
        stats = self.relay.stats
        elapsed = self.relay.loop.time() - self.start
        stats.observe(self.key, self.label, PROTOCOL, http_code, elapsed)
        stats.leave(self.key, self.label)

    def _expired(self) -> None:
        self.timer = None
        self._fail(StatusCode.DEADLINE_EXCEEDED, "upstream timed out")
        self.relay.flusher.flush()

    def _client_gone(self) -> None:
        if self.state == FAST:
            if self.up is not None:
                self.up.reset(CANCEL)
            loop_time = self.relay.loop.time()
            expired = self.deadline is not None and loop_time >= self.deadline
            self._settle(grpc_code_to_http("DEADLINE_EXCEEDED" if expired else "CANCELLED"))
        elif self.state == RELAY and self.up is not None:
            self.up.reset(CANCEL)
        self.state = DONE

    # -- the slow path ----------------------------------------------------------------------
    def _hand_over(self) -> None:
        """Relay this stream, as received so far, to the grpc.aio frontend."""
        if self.state == FAST:  # the upstream never saw the call run: undo the bookkeeping
            # (copies already sent stay counted; the frontend mirrors its own attempt again)
            if self.pair is not None:
                self.pair.primary_done(None)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            assert self.target is not None
            self.target.upstream.inflight -= 1
            self.relay.stats.leave(self.key, self.label)
            self.up = None
            self.response.clear()
        elif self.state != COLLECT:
            return
        self.state = RELAY
        self.relay.counts["relayed"] += 1
        self.label = ""
        down = self.down
        ended = down.remote_closed
        parts, self.parts = self.parts, []
        up = self.up = self.relay.slow.open(self, self.request_headers, ended and not parts)
        for i, part in enumerate(parts):
            last = ended and i == len(parts) - 1
            up.send_data(part, last)
