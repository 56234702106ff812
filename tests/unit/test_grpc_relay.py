"""The gateway's public gRPC port (rollout.grpc_relay, rollout.h2_conn, rollout.h2_wire).

The relay runs for real in front of the fake Triton gRPC servers of grpc_harness.py and is
driven by the official clients (grpc.aio, tritonclient) and, for what no client would send, by
raw bytes on a socket. Which path a call took is read from the relay's own counters. The
behaviour every gRPC call must keep through the relay (renaming, errors, deadlines, shutdown)
is tested in test_grpc_gateway.py and test_grpc_routing.py, which now all run through it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
from types import SimpleNamespace
from typing import Any, cast

import grpc
import numpy as np
import pytest
import uvloop
from hpack import Decoder, Encoder
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from rollout import h2_wire
from rollout.grpc_relay_call import Call
from rollout.grpc_relay_mirror import MirrorCall
from rollout.grpc_routing import SERVICE
from rollout.h2_conn import Flusher, H2Conn
from rollout.h2_stream import Stream
from rollout.h2_wire import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    HeaderDecoder,
    encode,
    format_timeout,
    headers_frames,
    parse_timeout,
    percent_decode,
    percent_encode,
)
from rollout.routing import Mirror, Route, Shadow
from tests.unit.grpc_harness import (
    FakeGrpcTriton,
    fakes,
    frontend,
    one_route,
    raw_request,
    table,
    variant,
    x_input,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4)
INFER = f"/{SERVICE}/ModelInfer"


# -- the wire -------------------------------------------------------------------------------
def test_literal_header_blocks_decode_with_a_standard_decoder() -> None:
    headers = [(b":path", b"/a"), (b"x-long", b"v" * 300), (b"empty", b"")]
    assert Decoder().decode(encode(headers), raw=True) == headers


def test_header_blocks_are_kept_by_their_fields_and_the_cache_stays_bounded() -> None:
    """A block depends on its fields alone (literals, no dynamic table): a repeated list is
    encoded once, a list with a field that varies call after call never grows the cache past
    its bound, and a large block or a value that is not bytes is encoded without being kept."""
    h2_wire._BLOCKS.clear()
    ok = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    first = encode(ok)
    assert encode(list(ok)) is first  # the same object: encoded once
    for n in range(h2_wire.BLOCKS_KEPT * 2 + 3):
        varying = [(b"grpc-timeout", b"%dm" % n), *ok]
        assert Decoder().decode(encode(varying), raw=True) == varying
        assert len(h2_wire._BLOCKS) <= h2_wire.BLOCKS_KEPT
    big = [(b"x-big", b"b" * (h2_wire.BLOCK_KEPT_BYTES + 1))]
    assert Decoder().decode(encode(big), raw=True) == big
    assert tuple(big) not in h2_wire._BLOCKS  # large blocks are not kept
    mutable = [(b"x-a", bytearray(b"1"))]
    assert Decoder().decode(encode(mutable), raw=True) == [(b"x-a", b"1")]  # type: ignore[arg-type]
    assert all(bytearray(b"1") not in dict(key).values() for key in h2_wire._BLOCKS)


def test_large_header_blocks_are_split_into_continuation_frames() -> None:
    block = encode([(b"x-big", b"b" * 40_000)])
    wire = headers_frames(7, block, True, 16_384)
    frames, position = [], 0
    while position < len(wire):
        length = int.from_bytes(wire[position : position + 3])
        kind, flags = wire[position + 3], wire[position + 4]
        frames.append((kind, flags, wire[position + 9 : position + 9 + length]))
        position += 9 + length
    assert [kind for kind, _, _ in frames] == [HEADERS, CONTINUATION, CONTINUATION]
    assert frames[0][1] == END_STREAM  # END_HEADERS only on the last frame
    assert [flags for _, flags, _ in frames[1:]] == [0, END_HEADERS]
    assert b"".join(payload for _, _, payload in frames) == block


@pytest.mark.parametrize("table_size", [4096, 256])
def test_header_decoder_cache_follows_the_peers_table(table_size: int) -> None:
    """Blocks from an indexing encoder decode to exactly what a plain decoder says, although
    repeated blocks come from the cache; with a small table entries are evicted all the time."""
    rng = random.Random(7)
    names = [b"content-type", b"x-a", b"x-b", b"grpc-timeout", b"lastmile-key"]
    encoder, plain, cached = Encoder(), Decoder(), HeaderDecoder(65_536)
    encoder.header_table_size = table_size
    plain.header_table_size = cached.decoder.header_table_size = table_size
    lists = [[(name, b"%d" % rng.randrange(4)) for name in rng.sample(names, 3)] for _ in range(8)]
    hits = 0
    for _ in range(2_000):
        headers = rng.choice(lists)
        block = encoder.encode(headers)
        hits += block in cached.cache
        expected = plain.decode(block, raw=True)
        assert cached.decode(block) == expected == headers
    if table_size == 4096:  # every field indexed after a while: blocks repeat
        assert hits > 1_000


def test_grpc_message_and_timeout_encodings() -> None:
    text = "100% wrong: naïve\nline"
    assert percent_decode(percent_encode(text)) == text
    assert b" " in percent_encode("a b") and b"%25" in percent_encode("%")
    assert parse_timeout(b"250m") == pytest.approx(0.25)
    assert parse_timeout(b"2S") == 2.0 and parse_timeout(b"1H") == 3600.0
    assert parse_timeout(b"") is None and parse_timeout(b"12x") is None
    assert parse_timeout(b"123456789S") is None  # at most 8 digits
    assert format_timeout(0.0001) == b"1m" and format_timeout(30) == b"30000m"
    assert parse_timeout(format_timeout(1e6)) == pytest.approx(1e6, rel=1e-3)


class _Transport:
    """Stands in for the socket (not the subject): records what would be written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writelines(self, parts: list[bytes]) -> None:
        self.written.append(b"".join(parts))

    def close(self) -> None:
        pass


class _Leg:
    def on_headers(self, *args: object) -> None: ...
    def on_data(self, *args: object) -> None: ...
    def on_reset(self, *args: object) -> None: ...
    def on_lost(self, *args: object) -> None: ...


def test_a_full_transport_holds_data_and_the_credit_it_would_give_back() -> None:
    async def main() -> None:
        conn = H2Conn(Flusher(asyncio.get_running_loop()), client=True)
        transport = _Transport()
        conn.connection_made(transport)
        stream = conn.open_stream(_Leg(), [(b":path", INFER.encode())])
        sent: list[int] = []
        conn.pause_writing()  # the kernel buffer is full: a slow reader
        stream.send_data(b"x" * 1000, True, on_sent=sent.append)
        conn.flusher.flush()
        assert sent == [] and stream.queued == 1000 and stream in conn.blocked
        conn.resume_writing()
        assert sent == [1000] and stream.queued == 0 and stream.local_closed
        assert transport.written[-1].endswith(b"x" * 1000)

    uvloop.run(main())


# -- the relay --------------------------------------------------------------------------------
def test_plain_infer_takes_the_fast_path_on_one_upstream_connection() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton(factor=2.0)) as (fake,),
            frontend(one_route(fake)) as (gw, stats, client),
        ):
            results = await asyncio.gather(
                *(client.infer("d", [x_input(X + i)]) for i in range(100))
            )
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("y"), 2 * (X + i))
                assert result.get_response().model_name == "d"
            relay = gw.relay
            assert relay is not None
            assert relay.counts == {"fast": 100, "relayed": 0}
            (pool,) = relay.pools
            assert len(pool.conns) == 1  # 100 concurrent calls multiplexed on one connection
            assert {r.model_name for r in fake.requests} == {"default.d.v3"}
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 200)] * 100

    uvloop.run(main())


def test_everything_else_is_relayed_to_the_full_frontend() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton()) as (fake,):
            routing = table(Route("default", "d", (variant("d", 3, 100, fake),)))
            async with frontend(routing) as (gw, _stats, client):
                assert gw.relay is not None
                with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
                    await client.infer("nope", [x_input(X)])
                assert await client.is_server_live()
                async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                    stub = channel.unary_unary(INFER)
                    zipped = await stub(raw_request(), compression=grpc.Compression.Gzip)
                    assert pb.ModelInferResponse.FromString(zipped).model_name == "d"
                assert gw.relay.counts == {"fast": 0, "relayed": 3}

    uvloop.run(main())


def shadow_routing(primary: FakeGrpcTriton, candidate: FakeGrpcTriton) -> Any:
    """Route s: variant s/1 on `primary` answers, every call is copied to s/2 on `candidate`."""
    return table(
        Route(
            "default",
            "s",
            (variant("s", 1, 100, primary), variant("s", 2, 0, candidate)),
            strategy="shadow",
            shadow=Shadow(mirrors=(Mirror("s/2", 1.0),)),
        )
    )


def test_shadow_routes_are_mirrored_on_the_fast_path() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton(), FakeGrpcTriton(factor=3.0)) as (primary, candidate),
            frontend(shadow_routing(primary, candidate)) as (gw, stats, client),
        ):
            for _ in range(5):
                result = await client.infer("s", [x_input(X)])
                np.testing.assert_array_equal(result.as_numpy("y"), X)  # the primary's
            await stats.until(lambda: len(stats.of("shadow")) == 5)
            assert [call[:3] for call in stats.of("shadow")] == [("default/s", "s/2", "ok")] * 5
            assert {r.model_name for r in candidate.requests} == {"default.s.v2"}
            assert gw.relay is not None and gw.relay.counts == {"fast": 5, "relayed": 0}
            # the copies have connections of their own, read on the slow lane
            mirror_pools = [p for p in gw.relay.pools if p.lane is not None]
            assert [p.port for p in mirror_pools] == [candidate.port]
            assert mirror_pools[0].lane is gw.lane
            assert all(c.lane is gw.lane for c in mirror_pools[0].conns)
            assert gw.lane.ran > 0

    uvloop.run(main())


def test_finished_calls_and_copies_are_freed_without_the_cyclic_collector() -> None:
    """A call's leg and its streams reference each other; once a stream is closed both ways
    it lets its leg go, so that nothing of a finished call or copy is left for the cyclic
    collector (whose collections of every call's leftovers held the loop for 1-3 ms,
    loadtests/bench_shadow_burst.py --loop-probe)."""

    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton(), FakeGrpcTriton(factor=3.0)) as (primary, candidate),
            frontend(shadow_routing(primary, candidate)) as (gw, stats, client),
        ):
            await client.infer("s", [x_input(X)])  # connections and caches in place
            await stats.until(lambda: len(stats.of("shadow")) == 1)
            gc.collect()
            gc.disable()
            try:
                for _ in range(20):
                    await client.infer("s", [x_input(X)])
                await stats.until(lambda: len(stats.of("shadow")) == 21)
                await asyncio.sleep(0)
                left = [
                    type(o).__name__
                    for o in gc.get_objects()
                    if type(o) in (Call, MirrorCall, Stream)  # isinstance wakes lazy modules
                ]
                assert left == [], f"{len(left)} left for the collector: {sorted(set(left))}"
            finally:
                gc.enable()
            assert gw.relay is not None and gw.relay.counts == {"fast": 21, "relayed": 0}

    uvloop.run(main())


def test_a_call_that_reached_no_model_is_retried_by_the_frontend_not_run_twice() -> None:
    async def main() -> None:
        not_loaded = FakeGrpcTriton(
            fail=("NOT_FOUND", "Request for unknown model: 'default.d.v3' is not found")
        )
        async with (
            fakes(not_loaded, FakeGrpcTriton(factor=3.0)) as (first, second),
            frontend(table(Route("default", "d", (variant("d", 3, 100, first, second),)))) as (
                gw,
                stats,
                client,
            ),
        ):
            assert gw.relay is not None
            answers = [await client.infer("d", [x_input(X)]) for _ in range(4)]
            for answer in answers:  # every call ends on the replica that has the model
                np.testing.assert_array_equal(answer.as_numpy("y"), 3 * X)
            assert len(first.requests) <= 1  # skipped once it said "not loaded"
            assert len(second.requests) == 4
            assert [code for *_, code in stats.of("observe")] == [200] * 4

    uvloop.run(main())


def test_client_cancel_reaches_triton_and_is_counted() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with (
            fakes(FakeGrpcTriton(gate=gate)) as (fake,),
            frontend(one_route(fake)) as (gw, stats, _client),
        ):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                call = channel.unary_unary(INFER)(raw_request())
                await fake.arrived.wait()
                call.cancel()
                await stats.until(lambda: bool(stats.of("observe")))
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 499)]
            gate.set()

    uvloop.run(main())


def test_upstream_lost_mid_call_is_unavailable_and_not_retried() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with (
            fakes(FakeGrpcTriton(gate=gate)) as (fake,),
            frontend(one_route(fake)) as (gw, stats, client),
        ):
            pending = asyncio.ensure_future(client.infer("d", [x_input(X)]))
            await fake.arrived.wait()
            await fake.server.stop(0)  # the connection goes while the model "runs"
            with pytest.raises(InferenceServerException) as info:
                await pending
            assert info.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
            assert len(fake.requests) == 1
            assert stats.of("observe")[0][:3] == ("default/d", "d/3", "grpc")
            assert gw.relay is not None and gw.relay.counts["fast"] == 1

    uvloop.run(main())


def test_large_metadata_crosses_in_continuation_frames() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, _stats, _client),
        ):
            big = "r" * 20_000  # larger than one 16 KiB frame both ways
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                raw = await channel.unary_unary(INFER)(
                    raw_request(), metadata=(("x-request-id", big),)
                )
            assert pb.ModelInferResponse.FromString(raw).model_name == "d"
            assert fake.metadata[0]["x-request-id"] == big  # forwarded to Triton
            assert gw.relay is not None and gw.relay.counts["fast"] == 1

    uvloop.run(main())


def test_metadata_over_the_limit_fails_that_call_alone() -> None:
    """A call whose metadata is over the advertised 64 KiB gets RESOURCE_EXHAUSTED, as from
    grpc itself; the calls beside it on the same connection go on being served."""

    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, _stats, _client),
        ):
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{gw.port}",
                options=[("grpc.max_metadata_size", 1 << 20)],  # let the client send it
            ) as channel:
                call = channel.unary_unary(INFER)
                assert pb.ModelInferResponse.FromString(await call(raw_request())).model_name
                assert gw.relay is not None
                connections = set(gw.relay.clients)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(raw_request(), metadata=(("x-huge", "h" * 100_000),))
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "metadata" in (refused.value.details() or "")
                for _ in range(3):  # the same connection still serves
                    raw = await call(raw_request(), metadata=(("x-ok", "o" * 1000),))
                    assert pb.ModelInferResponse.FromString(raw).model_name == "d"
                assert set(gw.relay.clients) == connections  # not closed and reopened
            assert len(fake.metadata) == 4  # the refused call never reached Triton
            assert all("x-huge" not in m for m in fake.metadata)

    uvloop.run(main())


def test_an_answer_with_metadata_over_the_limit_fails_that_call_alone() -> None:
    """Triton's answer over the limit: that call fails (it ran: it is not retried elsewhere), the
    upstream connection and the client's go on serving."""

    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, _stats, _client),
        ):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                call = channel.unary_unary(INFER)
                fake.trailing = (("x-huge", "h" * 100_000),)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call(raw_request())
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
                fake.trailing = ()
                for _ in range(3):
                    assert pb.ModelInferResponse.FromString(await call(raw_request())).model_name
            assert len(fake.requests) == 4  # the failed call ran once: never handed over
            assert gw.relay is not None and gw.relay.counts["fast"] == 4

    uvloop.run(main())


def test_a_client_that_is_not_http2_gets_goaway_and_the_port_keeps_serving() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, _stats, client),
        ):
            loop = asyncio.get_running_loop()
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.setblocking(False)
            await loop.sock_sendall(sock, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while chunk := await loop.sock_recv(sock, 65_536):
                received += chunk  # until the gateway closes the connection
            sock.close()
            frames, position = [], 0
            while position + 9 <= len(received):
                length = int.from_bytes(received[position : position + 3])
                frames.append(received[position + 3])
                position += 9 + length
            assert frames[-1] == GOAWAY
            result = await client.infer("d", [x_input(X)])
            np.testing.assert_array_equal(result.as_numpy("y"), X)

    uvloop.run(main())


def test_relayed_calls_fail_cleanly_when_the_full_frontend_is_gone() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, _stats, client),
        ):
            assert await client.is_server_live()  # relayed to the grpc.aio frontend
            await gw.server.stop(0)  # it goes away (the gateway itself keeps running)
            with pytest.raises(InferenceServerException) as info:
                await client.is_server_live()
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            result = await client.infer("d", [x_input(X)])  # the fast path does not need it
            np.testing.assert_array_equal(result.as_numpy("y"), X)
            gw.server = None  # already stopped

    uvloop.run(main())


class _DiesWithTheCall(asyncio.Protocol):
    """An HTTP/2 server that reads a whole call (up to a DATA frame ending its stream) and
    then closes the connection without answering, as a Triton killed while a model runs."""

    def __init__(self, took: list[bytes]) -> None:
        self.took, self.buffer = took, b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 24 if self.buffer.startswith(b"PRI * HTTP/2.0") else 0
        while pos + 9 <= len(self.buffer):
            length = int.from_bytes(self.buffer[pos : pos + 3])
            kind, flags = self.buffer[pos + 3], self.buffer[pos + 4]
            if kind == 0 and flags & 1:  # DATA with END_STREAM: the whole call is here
                self.took.append(self.buffer)
                self.transport.close()
                return
            pos += 9 + length


def test_a_server_that_goes_away_mid_call_fails_that_call_alone_and_says_why() -> None:
    """Triton read the call and closed its connection before answering: a model may have run
    it, so it is not sent again, and the client is told so, not 'no upstream available'."""

    async def main() -> None:
        took: list[bytes] = []
        server = await asyncio.get_running_loop().create_server(
            lambda: _DiesWithTheCall(took), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        dying = cast(Any, SimpleNamespace(address=f"127.0.0.1:{port}"))
        try:
            async with (
                frontend(one_route(dying)) as (gw, _stats, _client),
                grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel,
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await channel.unary_unary(INFER)(raw_request())
        finally:
            server.close()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
        assert failed.value.details() == (
            "the server for 'd' closed the connection before answering; the call was not "
            "retried, as a model may have run it"
        )
        assert len(took) == 1  # sent once

    uvloop.run(main())
