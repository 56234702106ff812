"""Keep-alive connections to Triton, pooled per host:port, and the background readiness probe.

Opening a TCP connection per request costs more than the proxying itself (and fills the port
range with TIME_WAIT under load), so every upstream has a pool of persistent HTTP/1.1
connections. A connection carries one exchange at a time; the pool caps how many it opens and
queues the excess instead of stampeding Triton. Callbacks, not coroutines, move the bytes: the
only coroutine is the (rare) connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

import httptools

from rollout.balance import Replica
from rollout.http_call import request
from rollout.lane import SlowLane

logger = logging.getLogger(__name__)

# Errors that mean the server's kernel refused bytes we wrote: none reached the server.
_REFUSED_WRITE = (ConnectionResetError, BrokenPipeError)


class Exchange(Protocol):
    """What a connection carries: a client's request (rollout.exchange) or a shadow copy
    (rollout.http_shadow). `payload` is written as is; the callbacks get the response, where
    it arrives for a client's request, on `lane`'s later turns for a copy (rollout.lane)."""

    conn: UpstreamConnection | None
    retried: bool
    payload: list[bytes]
    lane: SlowLane | None

    def alive(self) -> bool: ...
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_response_body(self, body: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upstream_failure(self, lost: bool = False) -> None: ...
    def on_connect_failure(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to Triton, parsing responses with httptools."""

    __slots__ = (
        "closed",
        "deferred",
        "ex",
        "got_bytes",
        "headers",
        "parser",
        "pool",
        "reading_paused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.got_bytes = False
        self.closed = False
        self.reading_paused = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.deferred: list[bytes] = []  # bytes of an answer waiting for its exchange's lane

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # Triton never speaks first; anything unsolicited ends the connection
            self.transport.abort()
            return
        self.got_bytes = True
        lane = ex.lane
        if lane is None:
            self._feed(data)
            return
        if not self.deferred:
            lane.push(self._feed_deferred)
        self.deferred.append(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            logger.warning("bad HTTP response from upstream %s", self.pool.name)
            self.transport.abort()

    def _feed_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        if not deferred or self.ex is None or self.closed:
            return  # flushed already, or the exchange was dropped (timed out) meanwhile
        self._feed(deferred[0] if len(deferred) == 1 else b"".join(deferred))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deferred:  # what arrived before the close is parsed before it
            self._feed_deferred()
        self.closed = True
        del self.parser  # it and this protocol point at each other: freed without the collector
        self.pool.on_lost(self)
        ex, self.ex = self.ex, None
        if ex is None:
            return
        ex.conn = None
        unread = not self.got_bytes and isinstance(exc, _REFUSED_WRITE)
        if unread and not ex.retried:
            # A reset before any answer: the server's socket was closed with our request
            # unread in it (a closed keep-alive connection, a killed server: a kernel answers
            # unread data with RST), so no model saw it and sending it again is safe. A clean
            # close after the request was read (the server died while a model ran) is not
            # retried: that request may have been executed.
            ex.retried = True
            self.pool.reconnect(ex)
        else:
            ex.on_upstream_failure(lost=not unread)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.on_response_head(self.parser.get_status_code(), self.headers)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.on_response_body(body)

    def on_message_complete(self) -> None:
        ex, self.ex = self.ex, None
        if self.parser.should_keep_alive():
            self.pool.release(self)
        else:
            self.close()
        if ex is not None:
            ex.conn = None
            ex.on_response_complete()

    # -- used by the pool and the exchange --------------------------------------------------
    def start(self, ex: Exchange) -> None:
        self.ex = ex
        ex.conn = self
        self.got_bytes = False
        self.headers = []
        payload = ex.payload
        # write() of a single buffer tries the socket at once; writelines() queues until the
        # loop iteration ends (measured: ~1/3 of the gateway's time went there).
        if len(payload) == 1:
            self.transport.write(payload[0])
        else:
            self.transport.writelines(payload)

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def detach_and_abort(self) -> None:
        """Drop the exchange (it is being answered otherwise) and kill the connection."""
        self.ex = None
        if not self.closed:
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections to one host:port, with a cap and a FIFO of waiting requests."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout: float,
        replica: Replica | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        # the Triton server behind this address: ejected when a connect fails (rollout.balance)
        self.replica = replica if replica is not None else Replica(host, port)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.total = 0  # open plus opening
        self.waiters: deque[Exchange] = deque()
        self.retired = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, ex: Exchange) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.resume_reading()
                conn.start(ex)
                return
        if self.total < self.max_connections:
            self.connect(ex)
        else:
            self.waiters.append(ex)

    def outstanding(self) -> int:
        """Requests sent here and not answered yet, and those waiting for a connection."""
        return self.total - len(self.idle) + len(self.waiters)

    def reconnect(self, ex: Exchange) -> None:
        """Send `ex` again (it never reached a model): here on a fresh connection, or on
        another replica when this one is ejected meanwhile."""
        if not self.replica.up:
            ex.on_connect_failure()
        else:
            self.connect(ex)

    def has_room(self) -> bool:
        """Whether a request submitted now would go out without waiting for a connection."""
        return bool(self.idle) or self.total < self.max_connections

    def connect(self, ex: Exchange) -> None:
        """Open a new connection for `ex` (a retry calls this directly: allowed past the cap)."""
        self.total += 1
        task = asyncio.get_running_loop().create_task(self._open(ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, ex: Exchange) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.total -= 1
            logger.debug("connect to %s failed: %s", self.name, exc)
            self.replica.eject(f"connect failed: {exc or 'timed out'}")
            ex.on_connect_failure()  # nothing reached a model: another replica may take it
            self._wake_waiter()
            return
        if ex.alive():
            conn.start(ex)
        else:
            self.release(conn)

    def release(self, conn: UpstreamConnection) -> None:
        conn.resume_reading()
        if self.retired or conn.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            ex = waiters.popleft()
            if ex.alive():
                conn.start(ex)
                return
        self.idle.append(conn)

    def on_lost(self, conn: UpstreamConnection) -> None:
        self.total -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        waiters = self.waiters
        while waiters and self.total < self.max_connections and not self.retired:
            ex = waiters.popleft()
            if ex.alive():
                self.connect(ex)
                return

    def retire(self) -> None:
        """The routing table no longer points here: close idle connections, let busy ones end."""
        self.retired = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        waiters, self.waiters = self.waiters, deque()
        for ex in waiters:
            if ex.alive():
                self.connect(ex)  # already routed here; serve it rather than fail it


async def probe_ready(host: str, port: int, timeout: float) -> bool:
    """True when Triton at host:port answers GET /v2/health/ready with 200 within `timeout`."""
    try:
        status, _ = await request(host, port, "GET", "/v2/health/ready", timeout=timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    return status == 200
