"""An exchange: one request forwarded to Triton and its response streamed back to the client.

Also the bytes the hot path is built from (status lines, per-target paths and Host lines,
computed once per routing table) so that a request costs concatenations, not formatting. Only
the rare paths (model metadata, Triton errors) decode JSON: metadata to hide Triton's internal
model names behind the public route name, errors to map and sanitize them
(rollout.upstream_errors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from rollout.routing import Route, RoutingTable, Target
from rollout.upstream import UpstreamConnection, UpstreamPool
from rollout.upstream_errors import BATCH_HINT, http_failure, public_error

__all__ = ["BATCH_HINT", "public_error"]  # kept importable from here

if TYPE_CHECKING:
    from rollout.proxy import ClientConnection

INFER, READY, META = 1, 2, 3
VERSION_RE = re.compile(rb"[1-9][0-9]{0,17}")
# Client headers Triton needs; the rest (Host, auth, Accept-Encoding, anything restricted-API
# related) stays here. Accept-Encoding is dropped so responses arrive uncompressed and the name
# rewrite below can see them. Content-Encoding is handled by the proxy: the gateway inflates
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
    {b"content-type", b"content-encoding", b"inference-header-content-length"}
)
_LENGTH_HEADERS = frozenset({b"content-length", b"inference-header-content-length"})
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CLOSE_HEADER = b"Connection: close\r\n"
SMALL_BODY = 256 * 1024


def status_line(code: int) -> bytes:
    return _STATUS_LINES.get(code) or b"HTTP/1.1 %d Unknown\r\n" % code


def json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def simple_response(status: int, body: bytes, conn_header: bytes) -> bytes:
    ctype = b"Content-Type: application/json\r\n" if body else b""
    return b"".join(
        (
            status_line(status),
            ctype,
            b"Content-Length: %d\r\n" % len(body),
            conn_header,
            b"\r\n",
            body,
        )
    )


class CompiledTarget:
    """Per-target bytes precomputed once per routing table so requests only concatenate."""

    __slots__ = (
        "delta",
        "host_line",
        "internal",
        "internal_prefix",
        "label",
        "model_path",
        "pinned_path",
        "pool",
        "public",
        "public_prefix",
    )

    def __init__(self, route: str, target: Target, pool: UpstreamPool) -> None:
        self.public = route
        self.internal = target.model
        self.label = target.label
        self.pool = pool
        self.model_path = b"/v2/models/" + target.model.encode()
        self.pinned_path = (
            self.model_path + b"/versions/" + target.version.encode() if target.version else b""
        )
        host = f"[{target.host}]" if ":" in target.host else target.host
        self.host_line = f"Host: {host}:{target.port}\r\n".encode()
        # Triton's JSON (and binary-header) infer responses start with the model name.
        self.internal_prefix = b'{"model_name":' + json.dumps(target.model).encode()
        self.public_prefix = b'{"model_name":' + json.dumps(route).encode()
        self.delta = len(self.public_prefix) - len(self.internal_prefix)


class CompiledRouting:
    """A RoutingTable plus its CompiledTargets; swapped as one attribute, so atomically."""

    __slots__ = ("deployed", "routes", "table", "targets")

    def __init__(
        self, table: RoutingTable | None, pool_for: Callable[[str, int], UpstreamPool]
    ) -> None:
        self.table = table
        self.routes: dict[bytes, Route] = {}
        self.targets: dict[int, CompiledTarget] = {}
        if table is not None:
            for name, route in table.routes.items():
                self.routes[name.encode()] = route
                for target in route.targets:
                    pool = pool_for(target.host, target.port)
                    self.targets[id(target)] = CompiledTarget(name, target, pool)
        self.deployed = ", ".join(sorted(table.routes)) if table and table.routes else "(none)"


class Exchange:
    """One request forwarded to Triton and the response streamed (or rewritten) back."""

    __slots__ = (
        "chunks",
        "client",
        "conn",
        "ct",
        "done",
        "head_written",
        "headers",
        "kind",
        "payload",
        "retried",
        "start",
        "status",
        "stream",
    )

    def __init__(
        self,
        client: ClientConnection,
        kind: int,
        ct: CompiledTarget,
        payload: list[bytes],
        start: float,
    ) -> None:
        self.client = client
        self.kind = kind
        self.ct = ct
        self.payload = payload
        self.start = start
        self.retried = False
        self.done = False
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.stream = False
        self.head_written = False

    def alive(self) -> bool:
        return not self.done and not self.client.closed

    # -- called by UpstreamConnection -------------------------------------------------------
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        if 200 <= status < 300 and self.kind != META:
            # Stream through only when Triton framed the body with Content-Length.
            for name, _ in headers:
                if name.lower() == b"content-length":
                    self.stream = True
                    break

    def on_response_body(self, body: bytes) -> None:
        if not self.stream:
            self.chunks.append(body)
        elif self.head_written:
            self.client.write(body)
        else:
            self.head_written = True
            self.client.write(self._stream_head(body))

    def on_response_complete(self) -> None:
        if self.done:
            return
        status = self.status
        if self.stream:
            if not self.head_written:
                self.head_written = True
                self.client.write(self._stream_head(b""))
        else:
            status, response = self._buffered_response()
            self.client.write(response)
        self._finish(status)

    def on_upstream_failure(self) -> None:
        self._fail(503, f"no upstream available for {self.ct.public!r}")

    def on_timeout(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach_and_abort()
        self._fail(504, f"upstream timed out for {self.ct.public!r}")

    # -- internals --------------------------------------------------------------------------
    def _fail(self, status: int, message: str) -> None:
        if self.done:
            return
        client = self.client
        if self.head_written:  # part of a response is out: only closing tells the client
            client.abort()
        else:
            client.write(simple_response(status, json_error(message), client.conn_header()))
        self._finish(status)

    def _finish(self, code: int) -> None:
        self.done = True
        client = self.client
        if self.kind == INFER:
            ct = self.ct
            gw = client.gw
            gw.stats.observe(ct.public, ct.label, code, gw.loop.time() - self.start)
        client.exchange_done()

    def _stream_head(self, first: bytes) -> bytes:
        ct = self.ct
        delta = 0
        if self.kind == INFER and first.startswith(ct.internal_prefix):
            first = ct.public_prefix + first[len(ct.internal_prefix) :]
            delta = ct.delta
        out = [status_line(self.status)]
        for name, value in self.headers:
            lname = name.lower()
            if lname in _LENGTH_HEADERS:
                if delta:
                    value = b"%d" % (int(value) + delta)
            elif lname not in FORWARD_RESPONSE_HEADERS:
                continue
            out += (name, b": ", value, b"\r\n")
        out += (self.client.conn_header(), b"\r\n", first)
        return b"".join(out)

    def _buffered_response(self) -> tuple[int, bytes]:
        """(status the client gets, the whole response)."""
        body = b"".join(self.chunks)
        status = self.status
        ct = self.ct
        if not 200 <= status < 300:
            status, message = http_failure(status, body, internal=ct.internal, public=ct.public)
            body = json_error(message)
            headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"application/json")]
        elif self.kind == META:
            try:
                meta = json.loads(body)
                meta["name"] = ct.public
                body = json.dumps(meta, separators=(",", ":")).encode()
            except (ValueError, TypeError):
                status, body = 502, json_error(f"invalid metadata from upstream for {ct.public!r}")
            headers = [(b"Content-Type", b"application/json")]
        else:  # 2xx infer/ready without Content-Length (chunked): rename, then frame it ourselves
            if self.kind == INFER and body.startswith(ct.internal_prefix):
                body = ct.public_prefix + body[len(ct.internal_prefix) :]
            headers = [(n, v) for n, v in self.headers if n.lower() in FORWARD_RESPONSE_HEADERS]
        out = [status_line(status)]
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        out += (b"Content-Length: %d\r\n" % len(body), self.client.conn_header(), b"\r\n", body)
        return status, b"".join(out)
