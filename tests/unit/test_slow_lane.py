"""The slow lane (rollout.lane) and the shadow copies' answers that go through it: a few per
turn of the loop, in order, with the loop's I/O served between turns; an answer handed to the
lane is never lost, reordered or delivered to an exchange that is gone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from rollout.h2_conn import LANE_FRAMES, H2Conn
from rollout.h2_stream import Flusher
from rollout.h2_wire import DATA, encode, frame, headers_frames
from rollout.lane import SlowLane
from rollout.upstream import UpstreamConnection, UpstreamPool

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run(make_loop: Callable[[], asyncio.AbstractEventLoop], test: Callable[[], Any]) -> None:
    loop = make_loop()
    try:
        loop.run_until_complete(test())
    finally:
        loop.close()


async def turns(n: int) -> None:
    """Let the loop go round `n` times."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_one_item_a_turn_in_push_order_with_other_callbacks_between(loop_kind: str) -> None:
    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        seen: list[str] = []
        for name in "abcd":
            lane.push(seen.append, name)
        asyncio.get_running_loop().call_soon(seen.append, "other")
        assert seen == [] and len(lane) == 4  # nothing runs where it is pushed
        await turns(8)
        assert seen == ["a", "other", "b", "c", "d"]
        assert lane.ran == 4 and len(lane) == 0

    run(LOOPS[loop_kind], main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_io_that_is_ready_is_served_between_two_items(loop_kind: str) -> None:
    """Bytes waiting on a socket when a burst is pushed are read after the first item, not
    after the last: the loop polls between turns."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lane = SlowLane(loop)
        seen: list[str] = []
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        done = loop.create_future()

        def readable() -> None:
            reader.recv(64)
            seen.append("io")
            loop.remove_reader(reader.fileno())
            done.set_result(None)

        try:
            for i in range(32):
                lane.push(seen.append, f"item{i}")
            writer.send(b"x")
            loop.add_reader(reader.fileno(), readable)
            await done
            assert seen.index("io") <= 2, seen
            await turns(40)
            assert [s for s in seen if s != "io"] == [f"item{i}" for i in range(32)]
        finally:
            reader.close()
            writer.close()

    run(LOOPS[loop_kind], main)


def test_more_items_a_turn_when_asked_and_a_bad_setting_is_refused() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lane = SlowLane(loop, per_turn=3)
        seen: list[str] = []
        for name in "abcde":
            lane.push(seen.append, name)
        loop.call_soon(seen.append, "other")
        await turns(4)
        assert seen == ["a", "b", "c", "other", "d", "e"]
        with pytest.raises(ValueError, match="per_turn must be >= 1, got 0"):
            SlowLane(loop, per_turn=0)

    run(LOOPS["uvloop"], main)


def test_an_item_that_raises_goes_to_the_loop_and_the_rest_still_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        lane = SlowLane(loop)
        seen: list[str] = []

        def boom() -> None:
            raise RuntimeError("broken item")

        lane.push(seen.append, "a")
        lane.push(boom)
        lane.push(seen.append, "c")
        await turns(6)
        assert seen == ["a", "c"]
        assert [str(e) for e in errors] == ["broken item"]
        lane.push(seen.append, "d")  # the lane is not stuck after the error
        await turns(2)
        assert seen == ["a", "c", "d"]

    run(LOOPS["uvloop"], main)


# -- an upstream connection's answers on the lane ------------------------------------------


class Transport:
    """Stand-in for the socket under one UpstreamConnection (the connection is the subject)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Copy:
    """An exchange as UpstreamConnection sees it; `lane` None: a client's request."""

    def __init__(self, lane: SlowLane | None) -> None:
        self.lane = lane
        self.conn: UpstreamConnection | None = None
        self.retried = False
        self.payload = [b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]
        self.events: list[Any] = []

    def alive(self) -> bool:
        return True

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(status)

    def on_response_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_response_complete(self) -> None:
        self.events.append("complete")

    def on_upstream_failure(self, lost: bool = False) -> None:
        self.events.append("lost mid-answer" if lost else "failure")

    def on_connect_failure(self) -> None:
        self.events.append("connect failure")


ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def connection(exchange: Copy) -> tuple[UpstreamConnection, UpstreamPool, Transport]:
    pool = UpstreamPool("127.0.0.1", 9, max_connections=4, connect_timeout=1.0)
    conn = UpstreamConnection(pool)
    transport = Transport()
    conn.connection_made(transport)
    pool.total = 1
    conn.start(exchange)
    return conn, pool, transport


def test_a_clients_answer_is_handled_where_it_arrives() -> None:
    async def main() -> None:
        client = Copy(lane=None)
        conn, pool, _ = connection(client)
        conn.data_received(ANSWER)
        assert client.events == [200, b'{"ok":true}', "complete"]
        assert pool.idle == [conn]

    run(LOOPS["uvloop"], main)


def test_a_copys_answer_is_handled_on_a_later_turn_in_one_piece_however_it_arrived() -> None:
    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        copy = Copy(lane)
        conn, pool, _ = connection(copy)
        for piece in (ANSWER[:10], ANSWER[10:41], ANSWER[41:]):
            conn.data_received(piece)
        assert copy.events == [] and len(lane) == 1  # one turn for the whole answer
        await turns(2)
        assert copy.events == [200, b'{"ok":true}', "complete"]
        assert pool.idle == [conn] and copy.conn is None
        # the connection goes on to carry a client's request, handled at once
        client = Copy(lane=None)
        pool.submit(client)  # type: ignore[arg-type]
        conn.data_received(ANSWER)
        assert client.events == [200, b'{"ok":true}', "complete"]

    run(LOOPS["uvloop"], main)


def test_an_answer_waiting_on_the_lane_is_delivered_before_the_connection_loss() -> None:
    """Triton answered, then closed the connection: the copy counts as answered, not failed."""

    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        copy = Copy(lane)
        conn, pool, _ = connection(copy)
        conn.data_received(ANSWER.replace(b"200 OK\r\n", b"200 OK\r\nConnection: close\r\n"))
        conn.connection_lost(None)
        assert copy.events == [200, b'{"ok":true}', "complete"]
        assert conn.closed and pool.total == 0 and pool.idle == []
        await turns(2)  # the lane's turn finds nothing left to do
        assert copy.events == [200, b'{"ok":true}', "complete"]

    run(LOOPS["uvloop"], main)


def test_half_an_answer_then_a_loss_is_a_failure_of_the_copy() -> None:
    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        copy = Copy(lane)
        conn, _, _ = connection(copy)
        conn.data_received(ANSWER[:45])
        conn.connection_lost(None)
        assert copy.events == [200, b'{"ok":', "lost mid-answer"]

    run(LOOPS["uvloop"], main)


def test_an_answer_to_a_copy_abandoned_meanwhile_is_dropped() -> None:
    """The copy timed out (detach_and_abort) while its answer waited on the lane: nothing is
    delivered to it, and the aborted connection is not given back to the pool."""

    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        copy = Copy(lane)
        conn, pool, transport = connection(copy)
        conn.data_received(ANSWER)
        conn.detach_and_abort()
        await turns(2)
        conn.connection_lost(None)
        assert copy.events == [] and transport.aborted
        assert pool.idle == [] and pool.total == 0

    run(LOOPS["uvloop"], main)


# -- an HTTP/2 connection of shadow copies (the gRPC relay's) on the lane -------------------


class H2Transport(Transport):
    def writelines(self, data: list[bytes]) -> None:
        self.written.append(b"".join(data))


class Leg:
    """A copy's stream as H2Conn sees it: records what it is told, in order."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log

    def on_headers(self, stream: Any, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        self.log.append((self.name, "trailers" if end else "headers"))

    def on_data(self, stream: Any, data: bytes, end: bool) -> None:
        self.log.append((self.name, "data"))

    def on_reset(self, stream: Any, code: int) -> None:
        self.log.append((self.name, "reset"))

    def on_lost(self, stream: Any, unprocessed: bool) -> None:
        self.log.append((self.name, "lost"))


def grpc_answer(stream_id: int) -> bytes:
    """Triton's three frames for one unary call: headers, the message, trailers."""
    head = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
    trailers = encode([(b"grpc-status", b"0")])
    return (
        headers_frames(stream_id, head, False, 16384)
        + frame(DATA, 0, stream_id, b"\x00\x00\x00\x00\x02ok")
        + headers_frames(stream_id, trailers, True, 16384)
    )


def h2_copies(n: int, lane: SlowLane | None) -> tuple[H2Conn, list[tuple[str, str]]]:
    conn = H2Conn(Flusher(asyncio.get_running_loop()), client=True, lane=lane)
    conn.connection_made(H2Transport())
    log: list[tuple[str, str]] = []
    for i in range(n):
        conn.open_stream(Leg(f"copy{i}", log), [(b":path", b"/infer")], end_stream=True)
    return conn, log


def every_answer(n: int) -> list[tuple[str, str]]:
    return [(f"copy{i}", part) for i in range(n) for part in ("headers", "data", "trailers")]


def test_a_burst_of_grpc_answers_is_read_a_few_frames_a_turn_in_order() -> None:
    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        conn, log = h2_copies(8, lane)
        conn.data_received(b"".join(grpc_answer(1 + 2 * i) for i in range(8)))  # one read
        assert log == [] and len(lane) == 1
        seen = []
        while len(log) < 24:
            await asyncio.sleep(0)
            seen.append(len(log))
        assert max(b - a for a, b in zip([0, *seen], seen, strict=False)) <= LANE_FRAMES
        assert log == every_answer(8) and not conn.streams and len(lane) == 0

    run(LOOPS["uvloop"], main)


def test_without_a_lane_the_whole_read_is_handled_at_once() -> None:
    async def main() -> None:
        conn, log = h2_copies(8, None)
        conn.data_received(b"".join(grpc_answer(1 + 2 * i) for i in range(8)))
        assert log == every_answer(8)

    run(LOOPS["uvloop"], main)


def test_grpc_answers_waiting_on_the_lane_are_read_before_the_connection_loss() -> None:
    async def main() -> None:
        lane = SlowLane(asyncio.get_running_loop())
        conn, log = h2_copies(3, lane)
        data = b"".join(grpc_answer(1 + 2 * i) for i in range(2))
        conn.data_received(data[:30])
        conn.data_received(data[30:])  # copy0 and copy1 answered; copy2 never
        await asyncio.sleep(0)  # one turn: the first LANE_FRAMES frames
        conn.connection_lost(None)
        assert log == [*every_answer(2), ("copy2", "lost")]
        await turns(3)
        assert log == [*every_answer(2), ("copy2", "lost")]

    run(LOOPS["uvloop"], main)
