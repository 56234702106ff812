"""ModelStreamInfer through the gateway's gRPC side, against the fake Triton gRPC servers.

Each message of a stream is one ModelInfer for the gateway (routed, counted and stamped like a
unary call) and is answered on the stream: a stamped `infer_response`, or an `error_message`
with the request's id, after which the stream stays open. The wire shapes were checked against
Triton 2.51's own stream (tests/e2e/test_grpc_stream_e2e.py compares the two). Streams are
driven over raw grpc.aio channels (to see every byte of an answer) and with the official aio
client's `stream_infer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import numpy as np
import pytest
import uvloop
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from rollout.grpc_gateway import SERVICE
from rollout.grpc_stream import MAX_IN_FLIGHT
from rollout.routing import Mirror, Route, Shadow, Sticky
from rollout.strategies import RequestContext, strategy_for
from tests.unit.grpc_harness import (
    FakeGrpcTriton,
    fakes,
    frontend,
    one_route,
    table,
    variant,
    x_input,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4)
STREAM = f"/{SERVICE}/ModelStreamInfer"
OVERRUN = "length-delimited field runs past the end of the message"


def request(
    name: str = "d", request_id: str = "", version: str = "", input_name: str = "x", scale: int = 1
) -> bytes:
    message = pb.ModelInferRequest(model_name=name, model_version=version, id=request_id)
    message.inputs.add(name=input_name, datatype="FP32", shape=list(X.shape))
    message.raw_input_contents.append((X * scale).tobytes())
    return message.SerializeToString()


def decoded(raw: bytes) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse.FromString(raw)


async def raw_stream(
    port: int, requests: Iterable[bytes], metadata: Any = None
) -> tuple[list[pb.ModelStreamInferResponse], grpc.StatusCode]:
    """Every answer of one stream that sends `requests` then closes, and its final status."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(STREAM)(iter(list(requests)), metadata=metadata)
        answers = [decoded(raw) async for raw in call]
        return answers, await call.code()


def by_id(answers: list[pb.ModelStreamInferResponse]) -> dict[str, pb.ModelStreamInferResponse]:
    out = {a.infer_response.id: a for a in answers}
    assert len(out) == len(answers), "ids answered twice"
    return out


def y_of(answer: pb.ModelStreamInferResponse) -> np.ndarray:
    response = answer.infer_response
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(X.shape)


class Hanging(FakeGrpcTriton):
    """Holds every ModelInfer until released, and records which calls were cancelled (by the
    gateway cancelling its upstream call)."""

    def __init__(self) -> None:
        super().__init__(gate=asyncio.Event())
        self.cancelled: list[str] = []
        self.changed = asyncio.Event()

    async def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            return await super().infer(request, context)
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            self.changed.set()
            raise

    async def until_cancelled(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.cancelled) < n:
                self.changed.clear()
                await self.changed.wait()

    async def until_arrived(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.requests) < n:
                self.arrived.clear()
                await self.arrived.wait()


def test_several_messages_are_answered_with_their_ids_and_stamped() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton(factor=2.0)) as (fake,),
            frontend(one_route(fake)) as (gw, stats, _client),
        ):
            sent = [request(request_id=f"r{i}", scale=i) for i in range(5)]
            answers, code = await raw_stream(gw.port, sent, (("x-request-id", "abc"),))
            assert code == grpc.StatusCode.OK
            got = by_id(answers)
            assert sorted(got) == [f"r{i}" for i in range(5)]
            for i in range(5):
                answer = got[f"r{i}"]
                assert answer.error_message == ""
                response = answer.infer_response
                assert (response.model_name, response.model_version) == ("d", "3")
                assert response.parameters["lastmile_variant"].string_param == "d/3"
                assert response.parameters["triton_final_response"].bool_param  # as Triton
                assert "sequence_id" in response.parameters  # Triton's own stay
                np.testing.assert_array_equal(y_of(answer), X * i * 2.0)
            assert {(r.model_name, r.model_version) for r in fake.requests} == {
                ("default.d.v3", "")
            }
            assert all(m.get("x-request-id") == "abc" for m in fake.metadata)
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 200)] * 5

    uvloop.run(main())


def test_the_official_aio_client_streams_through_the_gateway() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (_gw, _stats, client),
        ):

            async def inputs() -> AsyncIterator[dict[str, Any]]:
                for i, name in enumerate(("d", "nope", "d")):
                    yield {"model_name": name, "inputs": [x_input(X)], "request_id": f"q{i}"}

            seen = []
            async for result, error in client.stream_infer(inputs()):
                if error is not None:
                    seen.append(("error", error.message()))
                else:
                    response = result.get_response()
                    np.testing.assert_array_equal(result.as_numpy("y"), X)
                    seen.append((response.id, response.model_name))
            assert sorted(seen) == [("error", "unknown model 'nope'"), ("q0", "d"), ("q2", "d")]

    uvloop.run(main())


def test_per_message_errors_keep_the_stream_open_and_carry_the_request_id() -> None:
    async def main() -> None:
        async with (
            fakes(FakeGrpcTriton()) as (fake,),
            frontend(one_route(fake)) as (gw, stats, _client),
        ):
            sent = [
                request(request_id="ok1"),
                request("nope", "unknown"),
                request(request_id="bad-input", input_name="z"),
                request(request_id="no-version", version="7"),
                request(request_id="bad-version", version="01"),
                b"\x0a\x09trunc",  # not a message at all
                request("nope"),  # no id
                request(request_id="ok2"),
            ]
            answers, code = await raw_stream(gw.port, sent)
            assert code == grpc.StatusCode.OK  # nothing ended the stream early
            assert len(answers) == len(sent)
            errors = [(a.infer_response.id, a.error_message) for a in answers if a.error_message]
            assert sorted(errors) == sorted(
                [
                    ("unknown", "unknown model 'nope'"),
                    (
                        "bad-input",
                        "[request id: bad-input] unexpected inference input 'z' for model 'd'",
                    ),
                    ("no-version", "model 'd' has no version 7 being served"),
                    ("bad-version", "invalid model version: use a positive integer"),
                    ("", f"malformed request: {OVERRUN}"),
                    ("", "unknown model 'nope'"),
                ]
            )
            for answer in answers:
                if answer.error_message:  # Triton's shape: an infer_response with the id only
                    assert answer.HasField("infer_response")
                    assert answer.infer_response == pb.ModelInferResponse(
                        id=answer.infer_response.id
                    )
            ok = {a.infer_response.id for a in answers if not a.error_message}
            assert ok == {"ok1", "ok2"}
            assert sorted(r.id for r in fake.requests) == ["bad-input", "ok1", "ok2"]
            assert sorted(stats.of("observe")) == [
                ("default/d", "d/3", "grpc", 200),
                ("default/d", "d/3", "grpc", 200),
                ("default/d", "d/3", "grpc", 400),
            ]
            assert sorted(stats.of("count")) == [
                ("_unknown", "", "grpc", 404),
                ("_unknown", "", "grpc", 404),
                ("default/d", "", "grpc", 404),
            ]

    uvloop.run(main())


def test_upstream_errors_are_translated_as_for_unary_calls() -> None:
    async def main() -> None:
        details = (
            "Failed to process the request(s) for model 'default.d.v3_0_0', message: "
            "RuntimeError: boom\n\nAt:\n  /srv/models/default.d.v3/1/model.py(4): execute\n"
        )
        async with (
            fakes(FakeGrpcTriton(fail=("INTERNAL", details))) as (fake,),
            frontend(one_route(fake)) as (gw, stats, client),
        ):
            answers, code = await raw_stream(gw.port, [request(request_id="r1")])
            assert code == grpc.StatusCode.OK
            (answer,) = answers
            assert answer.infer_response.id == "r1"
            message = answer.error_message
            assert "'d'" in message and "boom" in message
            assert "default.d.v3" not in message and "/srv" not in message
            with pytest.raises(InferenceServerException) as info:  # the unary call's words
                await client.infer("d", [x_input(X)])
            assert info.value.message() == message
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 500)] * 2

    uvloop.run(main())


def test_an_explicit_version_selects_its_variant_and_each_answer_names_it() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton(factor=5.0)) as (a, b):
            route = Route("default", "d", (variant("d", 2, 100, a), variant("d", 5, 0, b)))
            async with frontend(table(route)) as (gw, stats, _client):
                sent = [request(request_id="v5", version="5"), request(request_id="any")]
                answers, _ = await raw_stream(gw.port, sent)
                got = by_id(answers)
                v5, picked = got["v5"].infer_response, got["any"].infer_response
                assert (v5.model_name, v5.model_version) == ("d", "5")
                assert v5.parameters["lastmile_variant"].string_param == "d/5"
                np.testing.assert_array_equal(y_of(got["v5"]), X * 5.0)
                assert (
                    picked.model_version,
                    picked.parameters["lastmile_variant"].string_param,
                ) == (
                    "2",
                    "d/2",
                )
                assert [(r.model_name, r.model_version) for r in b.requests] == [
                    ("default.d.v5", "")
                ]
                assert sorted(stats.of("observe")) == [
                    ("default/d", "d/2", "grpc", 200),
                    ("default/d", "d/5", "grpc", 200),
                ]

    uvloop.run(main())


def test_sticky_keys_come_from_the_streams_metadata_or_each_messages_parameters() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton()) as (a, b):
            route = Route(
                "default",
                "d",
                (variant("d", 1, 50, a), variant("d", 2, 50, b)),
                strategy="sticky",
                sticky=Sticky(header="lastmile-key", parameter="user"),
            )
            strategy = strategy_for(route)

            def want(key: str) -> str:
                return str(strategy.pick(RequestContext(key.encode())).primary.version)

            keys = [f"user-{i}" for i in range(20)]
            assert {want(k) for k in keys} == {"1", "2"}
            async with frontend(table(route)) as (gw, _stats, _client):
                with_params = []
                for key in keys:
                    message = pb.ModelInferRequest.FromString(request(request_id=key))
                    message.parameters["user"].string_param = key
                    with_params.append(message.SerializeToString())
                answers, _ = await raw_stream(gw.port, with_params)
                for key, answer in by_id(answers).items():
                    assert answer.infer_response.model_version == want(key)
                # a key in the stream's metadata holds for every message and wins
                answers, _ = await raw_stream(gw.port, with_params, (("lastmile-key", keys[0]),))
                assert {a.infer_response.model_version for a in answers} == {want(keys[0])}

    uvloop.run(main())


def test_shadow_routes_mirror_stream_messages_off_the_clients_path() -> None:
    async def main() -> None:
        async with fakes(FakeGrpcTriton(), FakeGrpcTriton(factor=1.5)) as (a, b):
            route = Route(
                "default",
                "d",
                (variant("d", 1, 100, a), variant("d", 2, 0, b)),
                strategy="shadow",
                shadow=Shadow(mirrors=(Mirror("d/2", 1.0),), timeout_s=5, max_queue=8),
            )
            async with frontend(table(route)) as (gw, stats, _client):
                answers, _ = await raw_stream(
                    gw.port, [request(request_id=f"s{i}") for i in range(3)]
                )
                assert {a.infer_response.model_version for a in answers} == {"1"}
                for answer in answers:
                    np.testing.assert_array_equal(y_of(answer), X)  # the primary's
                await stats.until(lambda: len(stats.of("shadow")) == 3)
                assert stats.of("shadow") == [("default/d", "d/2", "ok")] * 3
                assert sorted(r.id for r in b.requests) == ["s0", "s1", "s2"]

    uvloop.run(main())


def test_answers_come_in_completion_order() -> None:
    async def main() -> None:
        slow = Hanging()
        async with fakes(slow, FakeGrpcTriton()) as (_, fast):
            routing = table(
                Route("default", "slow", (variant("slow", 1, 100, slow),)),
                Route("default", "fast", (variant("fast", 1, 100, fast),)),
            )
            async with (
                frontend(routing) as (gw, _stats, _client),
                grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel,
            ):
                call = channel.stream_stream(STREAM)()
                await call.write(request("slow", "first"))
                await slow.until_arrived(1)
                await call.write(request("fast", "second"))
                assert decoded(await call.read()).infer_response.id == "second"
                assert slow.gate is not None
                slow.gate.set()
                assert decoded(await call.read()).infer_response.id == "first"
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK

    uvloop.run(main())


def test_a_stream_holds_at_most_max_in_flight_messages_then_stops_reading() -> None:
    async def main() -> None:
        total = MAX_IN_FLIGHT + 36
        async with (
            fakes(fake := Hanging()),
            frontend(one_route(fake)) as (gw, stats, _client),
            grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel,
        ):
            call = channel.stream_stream(STREAM)(
                iter([request(request_id=str(i)) for i in range(total)])
            )
            await fake.until_arrived(MAX_IN_FLIGHT)
            await asyncio.sleep(0.2)  # time for more to arrive, were the bound not kept
            assert len(fake.requests) == MAX_IN_FLIGHT
            assert stats.inflight == {("default/d", "d/3"): MAX_IN_FLIGHT}
            assert fake.gate is not None
            fake.gate.set()
            ids = [decoded(raw).infer_response.id async for raw in call]
            assert sorted(ids, key=int) == [str(i) for i in range(total)]
            assert await call.code() == grpc.StatusCode.OK

    uvloop.run(main())


def test_a_client_cancelling_its_stream_cancels_the_upstream_calls() -> None:
    async def main() -> None:
        async with (
            fakes(fake := Hanging()),
            frontend(one_route(fake)) as (gw, stats, _client),
            grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel,
        ):
            call = channel.stream_stream(STREAM)()
            for i in range(3):
                await call.write(request(request_id=f"c{i}"))
            await fake.until_arrived(3)
            assert stats.inflight == {("default/d", "d/3"): 3}
            call.cancel()
            await fake.until_cancelled(3)
            assert sorted(fake.cancelled) == ["c0", "c1", "c2"]
            await stats.until(lambda: len(stats.of("observe")) == 3)
            assert stats.of("observe") == [("default/d", "d/3", "grpc", 499)] * 3
            assert stats.inflight == {("default/d", "d/3"): 0}
            # the gateway still serves new streams
            assert fake.gate is not None
            fake.gate.set()
            answers, code = await raw_stream(gw.port, [request(request_id="after")])
            assert (code, answers[0].infer_response.id) == (grpc.StatusCode.OK, "after")

    uvloop.run(main())


def test_gateway_shutdown_cancels_open_streams_and_their_upstream_calls() -> None:
    async def main() -> None:
        async with (
            fakes(fake := Hanging()),
            frontend(one_route(fake)) as (gw, stats, _client),
            grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel,
        ):
            call = channel.stream_stream(STREAM)()
            await call.write(request(request_id="held"))
            await fake.until_arrived(1)
            await gw.stop(0.1)  # the grace runs out with the stream still open
            assert await call.code() != grpc.StatusCode.OK
            await fake.until_cancelled(1)
            assert stats.inflight == {("default/d", "d/3"): 0}
            remaining = [t for t in asyncio.all_tasks() if "serve_stream" in repr(t)]
            assert remaining == []

    uvloop.run(main())
