"""One HTTP/2 connection (either side) for the gateway's gRPC relay: frames in, events out.

`H2Conn` is an asyncio protocol. It reads frames (rollout.h2_wire), keeps both directions'
flow-control windows, answers SETTINGS and PING, honours GOAWAY and RST_STREAM, and hands each
stream's events to the stream's *leg* (an object with `on_headers`, `on_data`, `on_reset` and
`on_lost`, rollout.grpc_relay_call). Sending goes through a per-stream queue that drains as the
peer's windows allow; bytes from one read and everything it causes on other connections leave
in one `writelines` per connection (`Flusher`). The streams, their queues and windows, and what
the peer's WINDOW_UPDATE and SETTINGS frames change, are in rollout.h2_stream.

What we receive is credited back explicitly: the connection window as soon as a frame is read
(what a connection may buffer is bounded by its streams), a stream's window by its leg, once it
has used the bytes — on the relay path when they were framed for the other connection, and a
connection whose transport buffer is full (`pause_writing`) frames no DATA until it drains, so a
slow receiver slows the sender instead of filling the gateway's memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rollout.h2_stream import Flusher, Headers, Leg, Stream, apply_settings, apply_window_update
from rollout.h2_wire import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    HeaderDecoder,
    ProtocolError,
    encode,
    frame,
    frame_head,
    goaway,
    headers_frames,
    rst_stream,
    settings_frame,
    u32,
    window_update,
)

if TYPE_CHECKING:
    from rollout.lane import SlowLane

logger = logging.getLogger(__name__)

LANE_FRAMES = 4  # frames read per turn of the slow lane: about one gRPC answer
STREAM_WINDOW = 1 << 20  # what one stream may send us before we credit it
CONNECTION_WINDOW = 1 << 30
MAX_STREAMS = 256  # concurrent streams a client may open on one connection
MAX_HEADER_LIST = 64 * 1024  # advertised: a header list over it fails its own stream
HARD_HEADER_LIST = 16 * MAX_HEADER_LIST  # a peer that far past it loses the connection


class H2Conn(asyncio.Protocol):
    """An HTTP/2 connection, server side (`on_stream` makes each new stream's leg) or client
    side (`open_stream`). `on_closed` is called once when the transport is gone."""

    def __init__(
        self,
        flusher: Flusher,
        *,
        client: bool,
        on_stream: Callable[[Stream], Leg] | None = None,
        on_closed: Callable[[H2Conn], None] | None = None,
        too_large: Callable[[int], Headers] | None = None,
        stream_window: int = STREAM_WINDOW,
        max_streams: int = MAX_STREAMS,
        lane: SlowLane | None = None,
    ) -> None:
        self.flusher = flusher
        # a connection no client waits on (shadow copies): its frames are read on the slow
        # lane's turns, LANE_FRAMES at a time (rollout.lane)
        self.lane = lane
        self.deferred: list[bytes] = []
        self.deferred_queued = False
        self.client = client
        self.on_stream = on_stream
        self.on_closed = on_closed
        # server side: the whole answer (trailers-only) to a request whose header list had
        # this many bytes, over MAX_HEADER_LIST; without it such a stream is refused
        self.too_large = too_large
        self.stream_window = stream_window
        self.max_streams = max_streams
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes | memoryview] = []
        self.dirty = False
        self.buffer = b""
        self.preface_seen = client  # a server first reads the client's preface
        self.decoder = HeaderDecoder(HARD_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self.last_peer_stream = 0  # the highest stream id the peer opened (server side)
        self.next_stream = 1  # client side
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.peer_max_streams = 1 << 31
        self.send_window = DEFAULT_WINDOW
        self.recv_unacked = 0
        self.blocked: set[Stream] = set()
        self.continuing: tuple[int, int, list[bytes]] | None = None  # (stream, flags, parts)
        self.draining = False  # GOAWAY sent or received: no new streams
        self.closed = False
        # the transport's buffer is full (a slow reader): queued DATA waits, and so does the
        # credit it would give back upstream
        self.write_paused = False
        self.out.append(
            (PREFACE if client else b"")
            + settings_frame(
                {
                    ENABLE_PUSH: 0,
                    MAX_CONCURRENT_STREAMS: max_streams,
                    INITIAL_WINDOW_SIZE: stream_window,
                    MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                }
            )
            + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
        )

    # -- transport --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.mark()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deferred or self.deferred_queued:  # what arrived before the close, first
            self._read(self._take_deferred(), None)
        self.closed = True
        self.transport = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.leg is not None:
                stream.leg.on_lost(stream, False)
        if self.on_closed is not None:
            self.on_closed(self)
        self.flusher.flush()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.blocked):
            self.pump(stream)
        self.flusher.flush()

    def mark(self) -> None:
        self.flusher.mark(self)

    def write_out(self) -> None:
        self.dirty = False
        out = self.out
        if out and self.transport is not None:
            self.transport.writelines(out)
            self.out = []

    def close(self) -> None:
        if self.transport is not None:
            self.write_out()
            self.transport.close()

    def fail(self) -> None:
        """A client connection that never connected: its streams were not processed."""
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.leg is not None:
                stream.leg.on_lost(stream, True)
        if self.on_closed is not None:
            self.on_closed(self)

    # -- streams ----------------------------------------------------------------------------
    def can_open(self) -> bool:
        return (
            not self.draining
            and not self.closed
            and len(self.streams) < self.peer_max_streams
            and self.next_stream < MAX_WINDOW
        )

    def open_stream(self, leg: Leg, headers: Headers, end_stream: bool = False) -> Stream:
        """Client side: a new stream whose request headers go out now."""
        stream = Stream(self, self.next_stream, leg)
        self.next_stream += 2
        self.streams[stream.id] = stream
        stream.send_headers(headers, end_stream)
        return stream

    def forget(self, stream: Stream) -> None:
        """A stream closed both ways: no event reaches its leg any more. The leg is let go,
        so that the leg and its streams (which reference each other) are freed when the
        call ends instead of waiting for the cyclic collector, whose collections of every
        call's leftovers held the loop for a millisecond or more."""
        if self.streams.pop(stream.id, None) is not None:
            stream.leg = None
            self.blocked.discard(stream)
            self.stream_done()

    def stream_done(self) -> None:
        if self.draining and not self.streams:
            self.close()

    def shutdown(self) -> None:
        """GOAWAY(NO_ERROR) now; the connection closes once its streams are done."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.out.append(goaway(self.last_peer_stream, NO_ERROR))
        self.mark()
        self.stream_done()

    # -- sending ----------------------------------------------------------------------------
    def pump(self, stream: Stream) -> None:
        """Send what the windows allow of `stream`'s queue."""
        queue, out = stream.queue, self.out
        while queue:
            is_headers, payload, end, on_sent = queue[0]
            if is_headers:
                queue.popleft()
                out.append(headers_frames(stream.id, payload, end, self.peer_max_frame))
                if end:
                    stream._closed_local()
                continue
            size = len(payload)
            allowed = min(size, stream.send_window, self.send_window, self.peer_max_frame)
            if (allowed <= 0 and size) or self.write_paused:
                self.blocked.add(stream)
                break
            last = allowed == size
            out.append(frame_head(DATA, END_STREAM if end and last else 0, stream.id, allowed))
            out.append(payload[:allowed] if not last else payload)
            stream.send_window -= allowed
            self.send_window -= allowed
            stream.queued -= allowed
            if on_sent is not None and allowed:
                on_sent(allowed)
            if last:
                queue.popleft()
                if end:
                    stream._closed_local()
            else:
                queue[0] = (False, payload[allowed:], end, on_sent)
        else:
            self.blocked.discard(stream)
        self.mark()

    # -- receiving --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        lane = self.lane
        if lane is None:
            self._read(data, None)
            return
        self.deferred.append(data)
        if not self.deferred_queued:
            self.deferred_queued = True
            lane.push(self._lane_turn)

    def _read(self, data: bytes, frames: int | None) -> bool:
        """Handle `data` (and what is buffered): every whole frame, or at most `frames`.
        True when it stopped at that limit with bytes left to read."""
        more = False
        try:
            more = self._receive(data, frames)
        except ProtocolError as exc:
            logger.debug("HTTP/2 peer error: %s", exc)
            self.out.append(goaway(self.last_peer_stream, exc.code, str(exc)[:200].encode()))
            self.close()
        self.flusher.flush()
        return more

    def _take_deferred(self) -> bytes:
        deferred = self.deferred
        data = deferred[0] if len(deferred) == 1 else b"".join(deferred)
        deferred.clear()
        return data

    def _lane_turn(self) -> None:
        self.deferred_queued = False
        data = self._take_deferred()
        if self.closed or self.lane is None:
            return
        if self._read(data, LANE_FRAMES) and not self.closed:
            self.deferred_queued = True
            self.lane.push(self._lane_turn)

    def _receive(self, data: bytes, frames: int | None = None) -> bool:
        buffer = self.buffer + data if self.buffer else data
        if not self.preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    raise ProtocolError("not an HTTP/2 client (gRPC needs HTTP/2)")
                self.buffer = buffer
                return False
            if not buffer.startswith(PREFACE):
                raise ProtocolError("not an HTTP/2 client (gRPC needs HTTP/2)")
            buffer = buffer[len(PREFACE) :]
            self.preface_seen = True
        position, size = 0, len(buffer)
        left = -1 if frames is None else frames
        while size - position >= 9 and not self.closed:
            if left == 0:
                self.buffer = buffer[position:]
                return True
            length = (buffer[position] << 16) | (buffer[position + 1] << 8) | buffer[position + 2]
            if length > DEFAULT_FRAME:  # we never raise SETTINGS_MAX_FRAME_SIZE
                raise ProtocolError(f"frame of {length} bytes", FRAME_SIZE_ERROR)
            end = position + 9 + length
            if end > size:
                break
            kind, flags = buffer[position + 3], buffer[position + 4]
            stream_id = (
                ((buffer[position + 5] & 0x7F) << 24)
                | (buffer[position + 6] << 16)
                | (buffer[position + 7] << 8)
                | buffer[position + 8]
            )
            payload = buffer[position + 9 : end]
            position = end
            left -= 1
            self._frame(kind, flags, stream_id, payload)
        self.buffer = buffer[position:] if position < size else b""
        return False

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise ProtocolError("header block interrupted by another frame")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            apply_window_update(self, stream_id, payload)
        elif kind == SETTINGS:
            apply_settings(self, flags, stream_id, payload)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise ProtocolError("bad PING")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
                self.mark()
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise ProtocolError("bad RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.remote_closed = stream.local_closed = True
                self.blocked.discard(stream)
                if stream.leg is not None:
                    stream.leg.on_reset(stream, u32(payload))
                self.stream_done()
        elif kind == GOAWAY:
            self._goaway(payload)
        elif kind == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE with push disabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        flow = len(payload)
        self.recv_unacked += flow
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.out.append(window_update(0, self.recv_unacked))
            self.recv_unacked = 0
            self.mark()
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if not stream_id or stream_id > self._highest_id():
                raise ProtocolError("DATA on an idle stream")
            self.out.append(rst_stream(stream_id, STREAM_CLOSED))
            self.mark()
            return
        if flow != len(payload):
            stream.credit(flow - len(payload))  # padding is ours to credit, not the leg's
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_closed = True
        if stream.leg is not None:
            stream.leg.on_data(stream, payload, end)
        if end and stream.local_closed:
            self.forget(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError("HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(flags, stream_id, payload)
        else:
            self.continuing = (stream_id, flags, [payload])

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self.continuing
        if pending is None or pending[0] != stream_id:
            raise ProtocolError("CONTINUATION without its HEADERS")
        pending[2].append(payload)
        if sum(len(p) for p in pending[2]) > HARD_HEADER_LIST:
            raise ProtocolError("header block too large", ENHANCE_YOUR_CALM)
        if flags & END_HEADERS:
            self.continuing = None
            self._header_block(pending[1], stream_id, b"".join(pending[2]))

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        # always decoded: the peer's HPACK table moves with it
        headers, size = self.decoder.decode_sized(block)
        end = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if size > MAX_HEADER_LIST:
            self._too_large(stream_id, stream, size, end)
            return
        if stream is None:
            if self.client:
                return  # a stream we reset or forgot: its answer is dropped
            self._new_stream(stream_id, headers, end)
            return
        if stream.remote_closed:
            raise ProtocolError("HEADERS on a half-closed stream", STREAM_CLOSED)
        if end:
            stream.remote_closed = True
        if stream.leg is not None:
            stream.leg.on_headers(stream, headers, end)
        if end and stream.local_closed:
            self.forget(stream)

    def _too_large(self, stream_id: int, stream: Stream | None, size: int, end: bool) -> None:
        """A header list over the size we advertised fails its own stream, not the connection
        (it was decoded all the same, so the HPACK tables stay in step): a new request gets
        `too_large`'s answer, a stream under way is reset."""
        logger.info("stream %d: header list of %d bytes refused", stream_id, size)
        if stream is not None:
            self.streams.pop(stream_id, None)
            stream.remote_closed = stream.local_closed = True
            self.blocked.discard(stream)
            self.out.append(rst_stream(stream_id, CANCEL))
            self.mark()
            if stream.leg is not None:  # not REFUSED_STREAM: the peer may have processed it
                stream.leg.on_reset(stream, INTERNAL_ERROR)
            self.stream_done()
            return
        if self.client:
            return  # a stream we reset or forgot
        self._check_new_id(stream_id)
        if self.too_large is None:
            self.out.append(rst_stream(stream_id, REFUSED_STREAM))
        else:
            answer = encode(self.too_large(size))
            self.out.append(headers_frames(stream_id, answer, True, self.peer_max_frame))
            if not end:  # the rest of the request is not wanted (RFC 9113 §8.1)
                self.out.append(rst_stream(stream_id, NO_ERROR))
        self.mark()

    def _check_new_id(self, stream_id: int) -> None:
        if stream_id % 2 == 0 or stream_id <= self.last_peer_stream:
            raise ProtocolError(f"stream {stream_id} cannot be opened by the client")
        self.last_peer_stream = stream_id

    def _new_stream(self, stream_id: int, headers: Headers, end: bool) -> None:
        self._check_new_id(stream_id)
        if self.draining or len(self.streams) >= self.max_streams or self.on_stream is None:
            self.out.append(rst_stream(stream_id, REFUSED_STREAM))
            self.mark()
            return
        stream = Stream(self, stream_id, None)
        self.streams[stream_id] = stream
        stream.remote_closed = end
        stream.leg = self.on_stream(stream)
        stream.leg.on_headers(stream, headers, end)

    def _highest_id(self) -> int:
        return self.next_stream - 2 if self.client else self.last_peer_stream

    def _goaway(self, payload: bytes) -> None:
        if len(payload) < 8:
            raise ProtocolError("bad GOAWAY", FRAME_SIZE_ERROR)
        last = u32(payload) & 0x7FFFFFFF
        self.draining = True
        if self.client:  # streams above `last` were never processed: safe to send elsewhere
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                if stream.leg is not None:
                    stream.leg.on_lost(stream, True)
        self.stream_done()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolError("padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - pad]
