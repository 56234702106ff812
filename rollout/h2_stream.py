"""Streams and flow control of an HTTP/2 connection (rollout.h2_conn): what leaves, and when.

`Stream` holds one stream's send queue, its send window and who gets its events (its `Leg`);
its data goes out as the peer's windows allow (`H2Conn.pump`), and what we received on it is
credited back by the leg (`Stream.credit`). The peer moves those windows and its limits with
WINDOW_UPDATE and SETTINGS (`apply_window_update`, `apply_settings`, called by the connection
for each such frame). `Flusher` batches the writes: every connection with bytes to send is
written once, at the end of the callback that caused them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from rollout.h2_wire import (
    ACK,
    CANCEL,
    DEFAULT_FRAME,
    ENABLE_PUSH,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    PROTOCOL_ERROR,
    SETTINGS,
    ProtocolError,
    encode,
    frame,
    headers_frames,
    rst_stream,
    u32,
    window_update,
)

if TYPE_CHECKING:
    from rollout.h2_conn import H2Conn

Headers = list[tuple[bytes, bytes]]


class Leg(Protocol):
    """Receives one stream's events (rollout.grpc_relay_call, rollout.grpc_relay_mirror)."""

    def on_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None: ...

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None: ...

    def on_reset(self, stream: Stream, code: int) -> None: ...

    def on_lost(self, stream: Stream, unprocessed: bool) -> None: ...


class Flusher:
    """Connections with bytes to write; written together at the end of the current callback
    (`flush()` is called by every read, and scheduled once for writes caused elsewhere)."""

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[H2Conn] = []
        self.scheduled = False

    def mark(self, conn: H2Conn) -> None:
        if not conn.dirty:
            conn.dirty = True
            self.dirty.append(conn)
            if not self.scheduled:
                self.scheduled = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        while dirty:
            dirty.pop().write_out()


class Stream:
    """One stream on one connection: send queue and windows, who gets its events."""

    __slots__ = (
        "conn",
        "id",
        "leg",
        "local_closed",
        "queue",
        "queued",
        "remote_closed",
        "reply_started",
        "send_window",
    )

    def __init__(self, conn: H2Conn, stream_id: int, leg: Leg | None) -> None:
        self.conn = conn
        self.id = stream_id
        self.leg = leg
        self.send_window = conn.peer_initial_window
        # items: (is_headers, payload, end_stream, on_sent)
        self.queue: collections.deque[tuple[bool, Any, bool, Callable[[int], None] | None]] = (
            collections.deque()
        )
        self.queued = 0  # data bytes waiting for window
        self.local_closed = False
        self.remote_closed = False
        self.reply_started = False  # set by legs: response headers went out

    # -- sending ----------------------------------------------------------------------------
    def send_headers(self, headers: Headers, end_stream: bool = False) -> None:
        if self.local_closed:
            return
        block = encode(headers)
        if self.queue:  # trailers wait behind the data they close
            self.queue.append((True, block, end_stream, None))
        else:
            conn = self.conn
            conn.out.append(headers_frames(self.id, block, end_stream, conn.peer_max_frame))
            conn.mark()
            if end_stream:
                self._closed_local()

    def send_data(
        self,
        data: bytes | memoryview,
        end_stream: bool = False,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        """Queue `data`; `on_sent(n)` is told each time n bytes of it leave (credit back)."""
        if self.local_closed:
            return
        self.queue.append((False, memoryview(data), end_stream, on_sent))
        self.queued += len(data)
        self.conn.pump(self)

    def reset(self, code: int = CANCEL) -> None:
        """RST_STREAM (once), and forget the stream."""
        conn = self.conn
        if conn.streams.pop(self.id, None) is None:
            return
        self.queue.clear()
        self.local_closed = self.remote_closed = True
        conn.out.append(rst_stream(self.id, code))
        conn.mark()
        conn.stream_done()

    def credit(self, n: int) -> None:
        """Tell the peer it may send `n` more bytes on this stream."""
        if n > 0 and not self.remote_closed and self.id in self.conn.streams:
            self.conn.out.append(window_update(self.id, n))
            self.conn.mark()

    def _closed_local(self) -> None:
        self.local_closed = True
        if self.remote_closed:
            self.conn.forget(self)


def apply_window_update(conn: H2Conn, stream_id: int, payload: bytes) -> None:
    """A WINDOW_UPDATE from the peer: the connection's or a stream's send window grows, and
    what waited for it is sent; an overflow fails the connection (or the stream)."""
    if len(payload) != 4:
        raise ProtocolError("bad WINDOW_UPDATE", FRAME_SIZE_ERROR)
    increment = u32(payload) & 0x7FFFFFFF
    if stream_id == 0:
        if not increment:
            raise ProtocolError("WINDOW_UPDATE of 0")
        conn.send_window += increment
        if conn.send_window > MAX_WINDOW:
            raise ProtocolError("connection window overflow", FLOW_CONTROL_ERROR)
        for blocked in list(conn.blocked):
            conn.pump(blocked)
        return
    stream = conn.streams.get(stream_id)
    if stream is None:
        return
    if not increment or stream.send_window + increment > MAX_WINDOW:
        stream.reset(PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR)
        if stream.leg is not None:
            stream.leg.on_reset(stream, PROTOCOL_ERROR)
        return
    stream.send_window += increment
    if stream.queue:
        conn.pump(stream)


def apply_settings(conn: H2Conn, flags: int, stream_id: int, payload: bytes) -> None:
    """The peer's SETTINGS: its initial stream window (every open stream's send window moves
    by the difference), frame size and stream limit; acknowledged, then blocked streams pump."""
    if stream_id or len(payload) % 6:
        raise ProtocolError("bad SETTINGS", FRAME_SIZE_ERROR)
    if flags & ACK:
        return
    for offset in range(0, len(payload), 6):
        key = (payload[offset] << 8) | payload[offset + 1]
        value = u32(payload, offset + 2)
        if key == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ProtocolError("initial window too large", FLOW_CONTROL_ERROR)
            delta = value - conn.peer_initial_window
            conn.peer_initial_window = value
            for stream in conn.streams.values():
                stream.send_window += delta
        elif key == MAX_FRAME_SIZE:
            if not DEFAULT_FRAME <= value <= 16_777_215:
                raise ProtocolError("bad SETTINGS_MAX_FRAME_SIZE")
            conn.peer_max_frame = value
        elif key == MAX_CONCURRENT_STREAMS:
            conn.peer_max_streams = value
        elif key == ENABLE_PUSH and value > 1:
            raise ProtocolError("bad SETTINGS_ENABLE_PUSH")
    conn.out.append(frame(SETTINGS, ACK, 0))
    conn.mark()
    for stream in list(conn.blocked):
        conn.pump(stream)
