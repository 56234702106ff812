"""An exchange: one request forwarded to a variant's Triton and its response sent back stamped.

Every response of a routed request carries ``lastmile-variant``; a successful inference
response also gets the public name, the pipeline version and ``parameters.lastmile_variant`` in
its JSON (rollout.stamp). A binary-tensor response is held only until its JSON header has
arrived (Inference-Header-Content-Length), stamped, and the tensors stream through; a JSON
response is held whole (its data is inside the JSON) and its members walked, never decoded.
Only the rare paths (model metadata and config, Triton errors) decode JSON: metadata to show
the public name and the route's versions, a config to keep only its public interface
(rollout.public_config), errors to map and sanitize them (rollout.upstream_errors).

A client's HEAD goes upstream as a GET (Triton answers HEAD with a 405 and a body); the answer
is held whole like metadata and only its head is written: the status and headers a GET gets,
Content-Length included (RFC 9110 §9.3.2), and no body, so a keep-alive client stays in step.

Also the request bytes (status lines, per-target paths and Host lines come from
rollout.http_routing, computed once per routing table) so that a request costs
concatenations, not formatting.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import TYPE_CHECKING

from rollout.capture import HTTP
from rollout.public_config import public_http_config
from rollout.stamp import stamp_infer, stamp_metadata
from rollout.upstream import UpstreamConnection
from rollout.upstream_errors import BATCH_HINT, http_failure, model_not_loaded, public_error

__all__ = ["BATCH_HINT", "public_error"]  # kept importable from here

if TYPE_CHECKING:
    from rollout.http_routing import CompiledRoute, CompiledTarget, CompiledVariant
    from rollout.http_shadow import ShadowGroup
    from rollout.lane import SlowLane
    from rollout.proxy import ClientConnection

INFER, READY, META, CONFIG = 1, 2, 3, 4
VERSION_RE = re.compile(rb"[1-9][0-9]{0,17}")
# Client headers Triton needs; the rest (Host, auth, Accept-Encoding, anything restricted-API
# related) stays here. Accept-Encoding is dropped so responses arrive uncompressed and the
# stamping below can see them. Content-Encoding is handled by the proxy: the gateway inflates
# gzip/deflate bodies itself (rollout.body_guard) and forwards only "identity".
INFERENCE_HEADER_LENGTH = b"inference-header-content-length"
FORWARD_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        INFERENCE_HEADER_LENGTH,
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)
FORWARD_RESPONSE_HEADERS = frozenset(
    {b"content-type", b"content-encoding", INFERENCE_HEADER_LENGTH}
)
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_JSON_TYPE = b"Content-Type: application/json\r\n"
CLOSE_HEADER = b"Connection: close\r\n"
SMALL_BODY = 256 * 1024
CLIENT_GONE = 499  # nginx's "client closed request", for the metrics only

# How a response body travels: held whole, passed through, or held until its JSON header.
BUFFER, STREAM, SPLIT = 0, 1, 2
Parts = list[bytes | memoryview]


def status_line(code: int) -> bytes:
    return _STATUS_LINES.get(code) or b"HTTP/1.1 %d Unknown\r\n" % code


def json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def simple_response(
    status: int, body: bytes, conn_header: bytes, extra: bytes = b"", head_only: bool = False
) -> bytes:
    """A whole response; `extra` holds additional header lines (each ending in CRLF).
    `head_only` (the answer to a HEAD) leaves the body out but keeps its Content-Length."""
    return b"".join(
        (
            status_line(status),
            _JSON_TYPE if body else b"",
            b"Content-Length: %d\r\n" % len(body),
            extra,
            conn_header,
            b"\r\n",
            b"" if head_only else body,
        )
    )


def infer_payload(
    target: CompiledTarget, headers: list[tuple[bytes, bytes]], body: list[bytes], size: int
) -> list[bytes]:
    """The bytes of an inference request to `target`: the body chunks are shared, not copied
    (a shadow copy of the same request reuses them)."""
    head = [b"POST ", target.path, b"/infer HTTP/1.1\r\n", target.host_line]
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
    head.append(b"Content-Length: %d\r\n\r\n" % size)
    if size <= SMALL_BODY:  # one buffer: uvloop sends it right away
        return [b"".join(head + body)]
    return [b"".join(head), *body]  # large tensors: writelines hands the chunks to writev


class Exchange:
    """One client request forwarded to a variant and the response streamed (or stamped) back."""

    lane: SlowLane | None = None  # a client waits for this answer: handled where it arrives

    __slots__ = (
        "capture",
        "captured_request",
        "chunks",
        "client",
        "conn",
        "done",
        "group",
        "head_only",
        "head_written",
        "headers",
        "hlen",
        "kind",
        "mode",
        "payload",
        "rerouted",
        "retried",
        "route",
        "size",
        "start",
        "status",
        "target",
        "variant",
    )

    def __init__(
        self,
        client: ClientConnection,
        kind: int,
        route: CompiledRoute,
        variant: CompiledVariant,
        target: CompiledTarget,
        payload: list[bytes],
        start: float,
        group: ShadowGroup | None = None,
        head_only: bool = False,
    ) -> None:
        self.client = client
        self.kind = kind
        self.route = route
        self.variant = variant
        self.target = target
        self.payload = payload
        self.start = start
        self.group = group
        # the response as Triton sent it, kept (by reference) only for a mirrored request
        self.capture: list[bytes] | None = [] if group is not None else None
        # (body chunks, Inference-Header-Content-Length) of a request sampled for data capture
        self.captured_request: tuple[list[bytes], int] | None = None
        self.retried = False  # sent again on a fresh connection (rollout.upstream)
        self.rerouted = False  # sent to another replica after a refused connect
        self.done = False
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.mode = BUFFER
        self.size = 0
        self.hlen = -1  # Inference-Header-Content-Length of the response, -1 when absent
        self.head_written = False
        self.head_only = head_only  # a HEAD: the GET's status and headers, no body

    def alive(self) -> bool:
        return not self.done and not self.client.closed

    # -- called by UpstreamConnection -------------------------------------------------------
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        if not 200 <= status < 300 or self.kind >= META or self.head_only:
            return  # held whole (BUFFER): errors, metadata and config (kind >= META), a HEAD
        framed = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                framed = True
            elif lname == INFERENCE_HEADER_LENGTH:
                try:
                    self.hlen = int(value)
                except ValueError:
                    self.hlen = -1
        # Stream through only when Triton framed the body with Content-Length.
        if framed:
            if self.kind != INFER:
                self.mode = STREAM
            elif self.hlen >= 0:
                self.mode = SPLIT

    def on_response_body(self, body: bytes) -> None:
        if self.capture is not None:
            self.capture.append(body)
        if self.head_written:
            self.client.write(body)
            return
        if self.mode == STREAM:
            self.head_written = True
            self.client.write(self._head(self.status, self.headers, 0, -1) + body)
            return
        self.chunks.append(body)
        if self.mode == SPLIT:
            self.size += len(body)
            if self.size >= self.hlen:
                self._write_split()

    def on_response_complete(self) -> None:
        if self.done:
            return
        if self.status == 404 and not self.head_written and self._try_elsewhere():
            return
        status = self.status
        if not self.head_written:
            if self.mode == BUFFER:
                status, parts, size = self._buffered_response()
                if self.head_only:
                    self.client.write_parts(parts[:1])
                else:
                    self.client.write_parts(parts, size)
            else:  # an empty ready answer, or a body shorter than its own JSON header
                chunks, self.chunks = self.chunks, []
                self.head_written = True
                self.client.write_parts([self._head(status, self.headers, 0, -1), *chunks])
        self._finish(status)

    def on_upstream_failure(self, lost: bool = False) -> None:
        """No answer: no connection could be had (`lost` False), or the server closed the one
        the request went out on before answering (`lost`: it may have run, so not retried)."""
        public = self.route.public
        if lost:
            self._fail(
                503,
                f"the server for {public!r} closed the connection before answering; the "
                "request was not retried, as a model may have run it",
            )
        else:
            self._fail(503, f"no upstream available for {public!r}")

    def _try_elsewhere(self) -> bool:
        """Triton answered that the model is not loaded on this replica (it restarted and the
        reconciler has not loaded it yet): no model ran the request, so another replica of
        the variant takes it, and this target is skipped for a moment."""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.rerouted or not model_not_loaded(self.status, body):
            return False
        other = self.variant.pick_other(self.target)
        if other is None:
            return False
        self.target.readiness.mark_unready()
        self.status, self.headers, self.chunks = 0, [], []
        if self.capture is not None:  # the 404's body is not the answer
            self.capture.clear()
        self._reroute(other)
        return True

    def on_connect_failure(self) -> None:
        """No connection to the target's Triton: the request reached no model, so another
        replica of the variant takes it (once), else the client gets the 503."""
        other = None if self.rerouted else self.variant.pick_other(self.target)
        if other is None or not self.alive():
            self.on_upstream_failure()
            return
        self._reroute(other)

    def _reroute(self, other: CompiledTarget) -> None:
        """Send the request (which reached no model) to `other`, another replica; only once."""
        self.rerouted = True
        self.target = other
        other.pool.submit(self)

    def on_timeout(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach_and_abort()
        self._fail(504, f"upstream timed out for {self.route.public!r}")

    def abandon(self) -> None:
        """The client left before Triton was asked: nothing to answer, only to account for."""
        if not self.done:
            self._finish(CLIENT_GONE, respond=False)

    # -- internals --------------------------------------------------------------------------
    def _fail(self, status: int, message: str) -> None:
        if self.done:
            return
        client = self.client
        if self.head_written:  # part of a response is out: only closing tells the client
            client.abort()
        else:
            self.head_written = True
            client.write(
                simple_response(
                    status,
                    json_error(message),
                    client.conn_header(),
                    self.variant.header_line,
                    self.head_only,
                )
            )
        self._finish(status)

    def _finish(self, code: int, respond: bool = True) -> None:
        self.done = True
        client = self.client
        if self.kind == INFER:
            gw = client.gw
            elapsed = gw.loop.time() - self.start
            key, name = self.route.key, self.variant.name
            gw.stats.observe(key, name, "http", code, elapsed)
            gw.stats.leave(key, name)
            captured = self.captured_request
            if captured is not None and 200 <= code < 300 and self.capture:
                assert gw.capture is not None
                body, hlen = captured
                gw.capture.offer(key, name, HTTP, body, hlen, self.capture, self.hlen)
            group = self.group
            if group is not None:
                capture, self.capture = self.capture, None
                ok = 200 <= code < 300 and capture is not None
                group.primary_done(capture if ok else None, self.hlen, elapsed)
        if respond:
            client.exchange_done()

    def _write_split(self) -> None:
        """The JSON header of a binary-tensor response is here: stamp it, send what we hold,
        let the tensors stream."""
        chunks, self.chunks = self.chunks, []
        buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        hlen = self.hlen
        pieces = stamp_infer(buf, hlen, self.variant.stamp, self.target.triton_prefix)
        if pieces is None:  # not JSON after all: sent as it came
            new_hlen, pieces = hlen, [memoryview(buf)[:hlen]]
        else:
            new_hlen = sum(len(piece) for piece in pieces)
        parts: Parts = [self._head(self.status, self.headers, new_hlen - hlen, new_hlen), *pieces]
        if len(buf) > hlen:
            parts.append(memoryview(buf)[hlen:])
        self.head_written = True
        self.client.write_parts(parts)

    def _head(
        self, status: int, headers: list[tuple[bytes, bytes]], delta: int, new_hlen: int
    ) -> bytes:
        """Status line and forwarded headers, lengths adjusted by a stamped JSON header."""
        out = [status_line(status)]
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                if delta:
                    value = b"%d" % (int(value) + delta)
            elif lname == INFERENCE_HEADER_LENGTH:
                if new_hlen >= 0:
                    value = b"%d" % new_hlen
            elif lname not in FORWARD_RESPONSE_HEADERS:
                continue
            out += (name, b": ", value, b"\r\n")
        out += (self.variant.header_line, self.client.conn_header(), b"\r\n")
        return b"".join(out)

    def _buffered_response(self) -> tuple[int, Parts, int]:
        """(status the client gets, the whole response in parts: the head first, alone; the
        size of the parts together)."""
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        status = self.status
        route = self.route
        pieces: Parts
        if not 200 <= status < 300:
            status, message = http_failure(
                status, body, internal=self.target.internal, public=route.public
            )
            pieces = [json_error(message)]
            headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"application/json")]
        elif self.kind == META:
            meta = stamp_metadata(body, route.public, route.versions)
            if meta is None:
                status = 502
                meta = json_error(f"invalid metadata from upstream for {route.public!r}")
            pieces = [meta]
            headers = [(b"Content-Type", b"application/json")]
        elif self.kind == CONFIG:
            config = public_http_config(body, route.public)
            if config is None:
                status = 502
                config = json_error(f"invalid model config from upstream for {route.public!r}")
            pieces = [config]
            headers = [(b"Content-Type", b"application/json")]
        else:  # 2xx without Content-Length (chunked), or a JSON inference response
            headers = [(n, v) for n, v in self.headers if n.lower() in FORWARD_RESPONSE_HEADERS]
            pieces = [body]
            if self.kind == INFER:
                hlen = self.hlen if 0 <= self.hlen <= len(body) else len(body)
                stamped = stamp_infer(body, hlen, self.variant.stamp, self.target.triton_prefix)
                if stamped is not None:
                    if self.hlen >= 0:  # a JSON header before binary tensors: its length
                        new_hlen = b"%d" % sum(len(piece) for piece in stamped)
                        headers = [
                            (n, new_hlen if n.lower() == INFERENCE_HEADER_LENGTH else v)
                            for n, v in headers
                        ]
                    if hlen < len(body):
                        stamped.append(memoryview(body)[hlen:])
                    pieces = stamped
        out = [status_line(status)]
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        length = sum(len(piece) for piece in pieces)
        out += (
            b"Content-Length: %d\r\n" % length,
            self.variant.header_line,
            self.client.conn_header(),
            b"\r\n",
        )
        head = b"".join(out)
        return status, [head, *pieces], len(head) + length
