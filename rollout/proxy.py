"""The gateway's hot path: client HTTP/1.1 connections, parsed and answered in order.

DESIGN §3 measured that a Python gateway keeps ~85 % of direct Triton throughput only when it
works at the protocol level, so this module is written against asyncio.Protocol and httptools
callbacks: no framework, no task or future per request, bodies kept as the bytes objects the
socket produced and handed to an Exchange (rollout.exchange) that forwards them to Triton.
Before that, an inference body passes rollout.body_guard's checks (cheap unless they fire); a
compressed body is inflated, on the event loop while small, in a worker thread past that.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from rollout.body_guard import (
    INLINE_INFLATE_BYTES,
    BodyRefused,
    Inflater,
    check_infer_body,
    content_coding,
    unsupported_coding,
)
from rollout.exchange import (
    CLOSE_HEADER,
    FORWARD_REQUEST_HEADERS,
    INFER,
    INFERENCE_HEADER_LENGTH,
    META,
    READY,
    SMALL_BODY,
    VERSION_RE,
    Exchange,
    json_error,
    simple_response,
)
from rollout.gateway_metrics import UNKNOWN_ROUTE

if TYPE_CHECKING:
    from rollout.exchange import CompiledTarget
    from rollout.gateway import Gateway

logger = logging.getLogger(__name__)


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


class ClientConnection(asyncio.Protocol):
    """A client's keep-alive HTTP/1.1 connection; requests answered in order, one at a time."""

    __slots__ = (
        "body",
        "body_size",
        "busy",
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
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.header_size = 0
        self.expect_continue = False
        self.coding = b""

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gw.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gw.clients.discard(self)
        ex = self.ex
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()  # let the upstream response drain so the conn can be reused

    def data_received(self, data: bytes) -> None:
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

    def respond(self, status: int, body: bytes = b"") -> None:
        self.write(simple_response(status, body, self.conn_header()))
        self.exchange_done()

    def error(self, status: int, message: str) -> None:
        self.respond(status, json_error(message))

    def exchange_done(self) -> None:
        self.busy = False
        self.ex = None
        self.cur = None
        self.last_active = self.gw.now
        if self.closing or self.gw.shutting_down:
            self.closing = True
            if not self.closed:
                self.transport.close()
            return
        self._drain()

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
            self.error(req.error.status, req.error.message)
            return
        url = req.url
        query = url.find(b"?")
        path = url if query < 0 else url[:query]
        parts = path.split(b"/")
        if len(parts) >= 4 and parts[0] == b"" and parts[1] == b"v2" and parts[2] == b"models":
            self._handle_model(req, parts)
            return
        gw = self.gw
        if path not in (b"/v2/health/live", b"/v2/health/ready", b"/v2", b"/v2/"):
            self.error(404, "not found: the gateway serves inference, model metadata and health")
        elif req.method != b"GET":
            self.error(405, "method not allowed")
        elif path == b"/v2/health/live":
            self.respond(200)
        elif path == b"/v2/health/ready":
            self.respond(200 if gw.is_ready() else 503)
        else:
            self.respond(200, gw.server_metadata)

    def _handle_model(self, req: Request, parts: list[bytes]) -> None:
        name = parts[3]
        rest = parts[4:]
        version = b""
        if len(rest) >= 2 and rest[0] == b"versions":
            version = rest[1]
            rest = rest[2:]
            if not VERSION_RE.fullmatch(version):
                self.error(400, "invalid model version: use a positive integer")
                return
        if not rest:
            kind, method, suffix = META, b"GET", b""
        elif len(rest) == 1 and rest[0] == b"infer":
            kind, method, suffix = INFER, b"POST", b"/infer"
        elif len(rest) == 1 and rest[0] == b"ready":
            kind, method, suffix = READY, b"GET", b"/ready"
        else:
            self.error(404, "not found: the gateway serves infer, ready and metadata per model")
            return
        if req.method != method:
            self.error(405, "method not allowed")
            return
        routing = self.gw.routing
        route = routing.routes.get(name)
        if route is None:
            shown = name[:64].decode("utf-8", "replace")
            if kind == INFER:
                self.gw.stats.observe(UNKNOWN_ROUTE, "", 404, 0.0)
            self.error(404, f"unknown model {shown!r}; deployed: {routing.deployed}")
            return
        ct = routing.targets[id(route.choose())]
        path = ct.pinned_path or (
            ct.model_path + b"/versions/" + version if version else ct.model_path
        )
        if kind != INFER:
            payload = [b"GET " + path + suffix + b" HTTP/1.1\r\n" + ct.host_line + b"\r\n"]
            self._submit(kind, ct, payload)
        elif req.coding:
            coding = content_coding(req.coding)
            if coding is None:
                self._refuse(ct, 415, unsupported_coding(req.coding))
            elif coding:
                self._inflate(req, ct, path, coding)
            else:
                self._forward_infer(req, ct, path)
        else:
            self._forward_infer(req, ct, path)

    def _forward_infer(self, req: Request, ct: CompiledTarget, path: bytes) -> None:
        header_length = None
        for hname, hvalue in req.headers:
            if len(hname) == 31 and hname.lower() == INFERENCE_HEADER_LENGTH:
                try:
                    header_length = int(hvalue)
                except ValueError:
                    self._refuse(ct, 400, "invalid Inference-Header-Content-Length")
                    return
        problem = check_infer_body(req.body, req.body_size, header_length)
        if problem is not None:
            self._refuse(ct, 400, problem)
            return
        head = [b"POST ", path, b"/infer HTTP/1.1\r\n", ct.host_line]
        for hname, hvalue in req.headers:
            head += (hname, b": ", hvalue, b"\r\n")
        head.append(b"Content-Length: %d\r\n\r\n" % req.body_size)
        if req.body_size <= SMALL_BODY:  # one buffer: uvloop sends it right away
            payload = [b"".join(head + req.body)]
        else:  # large tensors: no copy, writelines hands the chunks to writev
            payload = [b"".join(head), *req.body]
        self._submit(INFER, ct, payload)

    def _submit(self, kind: int, ct: CompiledTarget, payload: list[bytes]) -> None:
        ex = self.ex = Exchange(self, kind, ct, payload, self.gw.loop.time())
        ct.pool.submit(ex)

    def _refuse(self, ct: CompiledTarget, status: int, message: str) -> None:
        """Answer an inference request the gateway will not forward (counted, target '')."""
        self.gw.stats.count(ct.public, "", status)
        self.error(status, message)

    # -- compressed bodies ------------------------------------------------------------------
    def _inflate(self, req: Request, ct: CompiledTarget, path: bytes, coding: bytes) -> None:
        inflater = Inflater(coding, req.body, self.gw.config.max_inflated_bytes)
        try:
            done = inflater.run(INLINE_INFLATE_BYTES)
        except BodyRefused as exc:
            self._refuse(ct, exc.status, exc.message)
            return
        if done:
            self._inflated(req, ct, path, inflater)
            return
        # Big: the rest in a worker thread (zlib drops the GIL), the connection stays busy.
        future = self.gw.loop.run_in_executor(None, inflater.run)
        future.add_done_callback(lambda f: self._inflate_done(f, req, ct, path, inflater))

    def _inflate_done(
        self,
        future: asyncio.Future[bool],
        req: Request,
        ct: CompiledTarget,
        path: bytes,
        inflater: Inflater,
    ) -> None:
        if self.closed or future.cancelled():
            return  # client gone (or gateway stopping): nothing to answer
        exc = future.exception()
        if isinstance(exc, BodyRefused):
            self._refuse(ct, exc.status, exc.message)
        elif exc is not None:
            logger.error("inflating a request body failed", exc_info=exc)
            self._refuse(ct, 500, "the gateway could not inflate the request body")
        else:
            self._inflated(req, ct, path, inflater)

    def _inflated(self, req: Request, ct: CompiledTarget, path: bytes, inflater: Inflater) -> None:
        body = inflater.result()
        req.body = [body] if body else []
        req.body_size = len(body)
        req.coding = b""
        self._forward_infer(req, ct, path)
