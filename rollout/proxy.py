"""The gateway's hot path: client HTTP/1.1 connections, parsed and answered in order.

DESIGN §3 measured that a Python gateway keeps ~85 % of direct Triton throughput only when it
works at the protocol level, so this module is written against asyncio.Protocol and httptools
callbacks: no framework, no task or future per request, bodies kept as the bytes objects the
socket produced and handed on. What a complete request becomes (a local answer, or a route,
a variant and an Exchange that forwards it to Triton) is rollout.http_dispatch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from rollout.body_guard import content_coding
from rollout.exchange import (
    CLOSE_HEADER,
    FORWARD_REQUEST_HEADERS,
    SMALL_BODY,
    Exchange,
    json_error,
    simple_response,
)
from rollout.http_dispatch import dispatch

if TYPE_CHECKING:
    from rollout.gateway import Gateway

logger = logging.getLogger(__name__)

# After refusing a request whose body may still be arriving, keep reading (and dropping) it
# this long before closing: closing with unread bytes makes the kernel send a reset, which can
# destroy the error answer before the client reads it (nginx's lingering close does the same).
LINGER_S = 5.0

NO_CAPTURE: list[tuple[bytes, bytes]] = []  # shared, never appended to


class ClientError(Exception):
    """Raised inside parser callbacks to stop parsing and answer with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = (
        "body",
        "body_size",
        "captured",
        "coding",
        "error",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "url",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: list[bytes],
        body_size: int,
        keep_alive: bool,
        http10: bool,
        error: ClientError | None = None,
        coding: bytes = b"",
        captured: list[tuple[bytes, bytes]] = NO_CAPTURE,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.body_size = body_size
        self.keep_alive = keep_alive
        self.http10 = http10
        self.error = error
        self.coding = coding  # Content-Encoding other than identity, as sent
        # headers kept aside, not forwarded: the workspace and sticky keys (lower-case names)
        self.captured = captured


class ClientConnection(asyncio.Protocol):
    """A client's keep-alive HTTP/1.1 connection; requests answered in order, one at a time."""

    __slots__ = (
        "body",
        "body_size",
        "busy",
        "captured",
        "closed",
        "closing",
        "coding",
        "cur",
        "draining",
        "ex",
        "expect_continue",
        "gw",
        "header_size",
        "headers",
        "last_active",
        "linger",
        "linger_since",
        "parser",
        "queue",
        "reading_paused",
        "started",
        "transport",
        "url",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.closing = False  # answer the current request, then close
        self.busy = False  # a request is being answered
        self.draining = False
        self.reading_paused = False
        self.cur: Request | None = None
        self.ex: Exchange | None = None
        self.queue: deque[Request] = deque()  # pipelined requests waiting their turn
        self.last_active = gw.now
        self.started = 0.0  # coarse time the request being read began; 0.0 between requests
        self.linger = False  # close by lingering (a refused request's body may still come)
        self.linger_since = 0.0  # lingering since (0.0: not lingering)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.header_size = 0
        self.expect_continue = False
        self.coding = b""
        self.captured = NO_CAPTURE

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gw.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        self.gw.clients.discard(self)
        # The parser holds this protocol's callbacks and this protocol holds the parser: let
        # it go (nothing is parsed after this), so that the connection is freed when the last
        # reference goes rather than left for the cyclic collector.
        del self.parser
        ex = self.ex
        if ex is not None:
            if ex.conn is not None:
                # let the upstream response drain so the connection can be reused; the
                # gateway's sweeper still applies the upstream timeout
                ex.conn.resume_reading()
                self.gw.orphans.add(ex)
            else:  # not sent yet (waiting for a connection): it never will be
                ex.abandon()

    def data_received(self, data: bytes) -> None:
        if self.linger_since:  # the rest of a refused request: dropped
            return
        self.last_active = self.gw.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                self.fail_request(cause)
            else:  # a bug: state may be half-updated, so drop this connection only
                logger.error("gateway error while handling a request", exc_info=cause)
                self.abort()
        except httptools.HttpParserUpgrade:
            self.fail_request(ClientError(400, "protocol upgrade is not supported"))
        except httptools.HttpParserError:
            self.fail_request(ClientError(400, "malformed HTTP request"))

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.started = self.gw.now

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_size += len(url)
        if self.header_size > self.gw.config.max_header_bytes:
            raise ClientError(431, "request header too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_size += len(name) + len(value) + 4
        if self.header_size > self.gw.config.max_header_bytes:
            raise ClientError(431, "request header too large")
        lname = name.lower()
        if lname in self.gw.routing.capture_headers:
            if self.captured is NO_CAPTURE:
                self.captured = []
            self.captured.append((lname, value))
        if lname in FORWARD_REQUEST_HEADERS:
            self.headers.append((name, value))
        elif lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise ClientError(400, "invalid Content-Length") from None
            if length > self.gw.config.max_body_bytes:
                raise ClientError(413, f"body larger than {self.gw.config.max_body_bytes} bytes")
        elif lname == b"expect":
            self.expect_continue = value.lower() == b"100-continue"
        elif lname == b"content-encoding":
            if self.coding or content_coding(value) != b"":
                self.coding = self.coding + b"," + value if self.coding else value
            else:  # identity: harmless, forwarded as sent
                self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.expect_continue and not self.busy and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.gw.config.max_body_bytes:
            raise ClientError(413, f"body larger than {self.gw.config.max_body_bytes} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        req = Request(
            parser.get_method(),
            self.url,
            self.headers,
            self.body,
            self.body_size,
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
            coding=self.coding,
            captured=self.captured,
        )
        self.started = 0.0
        self._reset()
        if self.busy or self.queue:
            self.queue.append(req)
            self._pause_reading()
        else:
            self._handle(req)

    # -- answering --------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def write_parts(self, parts: list[bytes | memoryview], size: int = -1) -> None:
        """Several buffers (`size` bytes together, when the caller knows): joined when small
        (one write goes out at once), else handed to writelines (writev, no copy)."""
        if self.closed:
            return
        if len(parts) == 1:
            self.transport.write(parts[0])
        elif (size if size >= 0 else sum(len(part) for part in parts)) <= SMALL_BODY:
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines(parts)

    def abort(self) -> None:
        self.closing = True
        if not self.closed:
            self.transport.abort()

    def conn_header(self) -> bytes:
        """Connection header for the response being written; decides whether we close after."""
        req = self.cur
        if req is None or not req.keep_alive or self.closing or self.gw.shutting_down:
            self.closing = True
            return CLOSE_HEADER
        return b"Connection: keep-alive\r\n" if req.http10 else b""

    def respond(self, status: int, body: bytes = b"", extra: bytes = b"") -> None:
        """A local answer (`extra`: more header lines, each ending in CRLF); to a HEAD only
        its head (the GET's Content-Length, no body)."""
        req = self.cur
        head_only = req is not None and req.method == b"HEAD"
        self.write(simple_response(status, body, self.conn_header(), extra, head_only=head_only))
        self.exchange_done()

    def error(self, status: int, message: str) -> None:
        self.respond(status, json_error(message))

    def not_allowed(self, allowed: bytes) -> None:
        """405 with the Allow header RFC 9110 asks for (`allowed`: e.g. b"GET, HEAD")."""
        text = allowed.decode().replace(", ", " or ")
        self.respond(
            405, json_error(f"method not allowed: use {text}"), b"Allow: " + allowed + b"\r\n"
        )

    def exchange_done(self) -> None:
        self.busy = False
        self.ex = None
        self.cur = None
        self.last_active = self.gw.now
        if self.closing or self.gw.shutting_down:
            self.closing = True
            if self.closed:
                return
            if self.linger and self.transport.can_write_eof():
                self._start_linger()
            else:
                self.transport.close()
            return
        self._drain()

    def _start_linger(self) -> None:
        """The answer is written: send FIN after it, then read and drop until the client
        closes (eof_received) or LINGER_S passes (check_timeouts)."""
        self.linger_since = self.gw.now
        self.transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: the transport closes

    def fail_request(self, error: ClientError) -> None:
        """A request could not be read (limits, bad syntax): answer in turn, then close."""
        self.started = 0.0
        self._pause_reading()
        req = Request(b"", b"", [], [], 0, False, False, error)
        if self.busy or self.queue:
            self.queue.append(req)
        else:
            self._handle(req)

    def shutdown(self) -> None:
        """Gateway stopping: close now if idle, otherwise after the response in progress."""
        if not self.busy and not self.queue and not self.closed:
            self.closing = True
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        if self.linger_since:
            if now - self.linger_since > LINGER_S:
                self.transport.abort()
            return
        config = self.gw.config
        ex = self.ex
        if ex is not None:
            if now - ex.start > config.upstream_timeout:
                ex.on_timeout()
        elif self.started:
            if now - self.started > config.request_timeout:
                self.fail_request(ClientError(408, "request not received in time"))
        elif not self.busy and now - self.last_active > config.idle_timeout:
            self.closing = True
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        try:
            while self.queue and not self.busy and not self.closing:
                self._handle(self.queue.popleft())
        finally:
            self.draining = False
        if self.reading_paused and not self.queue and not self.closing and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def _handle(self, req: Request) -> None:
        if self.closing:
            return
        self.busy = True
        self.cur = req
        if req.error is not None:
            self.closing = True
            self.linger = True
            self.error(req.error.status, req.error.message)
            return
        dispatch(self, req)
