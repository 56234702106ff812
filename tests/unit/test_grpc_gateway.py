"""The gateway's gRPC side against a fake Triton gRPC server, with the official aio client.

The gateway runs for real in this event loop (uvloop, as in production); what stands in for
Triton is a grpc.aio server that parses requests with the real protobuf classes, so any damage
done by the bytes-level renaming shows up as a parse error or a wrong field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
import uvloop
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from rollout.gateway import Gateway, GatewayConfig
from rollout.grpc_gateway import SERVICE
from tests.conftest import free_ports
from tests.unit.test_gateway_harness import FakeTriton, put_routes, running_gateway, wait_ready


class FakeGrpcTriton:
    """ModelInfer echoes x as y (after an optional delay); records what it was sent."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[pb.ModelInferRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.server: Any = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeGrpcTriton:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
        handlers = {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
            ),
            "ModelReady": grpc.unary_unary_rpc_method_handler(
                self.ready, pb.ModelReadyRequest.FromString, pb.ModelReadyResponse.SerializeToString
            ),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(
                self.meta,
                pb.ModelMetadataRequest.FromString,
                pb.ModelMetadataResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.inputs[0].name != "x":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"[request id: {request.id}] unexpected inference input "
                f"'{request.inputs[0].name}' for model '{request.model_name}'",
            )
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version or "1", id=request.id
        )
        out = response.outputs.add()
        out.name, out.datatype = "y", "FP32"
        out.shape.extend(request.inputs[0].shape)
        response.raw_output_contents.append(request.raw_input_contents[0])
        return response

    async def ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.version in ("", "1"))

    async def meta(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        response = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="python")
        response.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return response


def routes(generation: int, http: FakeTriton, grpc_: FakeGrpcTriton | None, **extra: Any) -> bytes:
    target = {"url": http.url, "model": "ws.d.v1", "version": "", **extra}
    if grpc_ is not None:
        target["grpc"] = grpc_.address
    return json.dumps({"generation": generation, "routes": {"d": {"targets": [target]}}}).encode()


@contextlib.asynccontextmanager
async def system(
    delay: float = 0.0, **target: Any
) -> AsyncIterator[tuple[Gateway, FakeGrpcTriton, aioclient.InferenceServerClient]]:
    http_fake = await FakeTriton().start()
    grpc_fake = await FakeGrpcTriton(delay).start()
    try:
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            assert (await put_routes(gw, routes(1, http_fake, grpc_fake, **target))).status == 200
            await wait_ready(gw)
            client = aioclient.InferenceServerClient(f"127.0.0.1:{gw.ports['grpc']}")
            try:
                yield gw, grpc_fake, client
            finally:
                await client.close()
    finally:
        await grpc_fake.stop()
        await http_fake.stop()


def x_input(x: np.ndarray, name: str = "x") -> aioclient.InferInput:
    inp = aioclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_infer_renames_both_ways_and_forwards_trace_headers() -> None:
    async def main() -> None:
        async with system() as (gw, fake, client):
            result = await client.infer(
                "d", [x_input(X)], request_id="r1", headers={"x-request-id": "abc", "other": "no"}
            )
            np.testing.assert_array_equal(result.as_numpy("y"), X)
            response = result.get_response()
            assert (response.model_name, response.model_version, response.id) == ("d", "1", "r1")
            sent = fake.requests[-1]
            assert (sent.model_name, sent.model_version) == ("ws.d.v1", "")
            assert fake.metadata[-1].get("x-request-id") == "abc"
            assert "other" not in fake.metadata[-1]
            # a client-chosen version passes through when the route pins none
            await client.infer("d", [x_input(X)], model_version="1")
            assert fake.requests[-1].model_version == "1"
            stats = gw.stats.requests
            assert stats[("d", "ws.d.v1", "OK")] == 2

    uvloop.run(main())


def test_pinned_version_wins_over_the_clients() -> None:
    async def main() -> None:
        async with system(version="3") as (gw, fake, client):
            await client.infer("d", [x_input(X)], model_version="1")
            assert (fake.requests[-1].model_name, fake.requests[-1].model_version) == (
                "ws.d.v1",
                "3",
            )
            assert gw.stats.requests[("d", "ws.d.v1:3", "OK")] == 1

    uvloop.run(main())


def test_messages_larger_than_grpc_default_4_mib_pass() -> None:
    async def main() -> None:
        async with system() as (_, _fake, client):
            big = np.random.default_rng(0).random((1, 1_500_000), dtype=np.float32)  # 6 MB
            result = await client.infer("d", [x_input(big)])
            np.testing.assert_array_equal(result.as_numpy("y"), big)

    uvloop.run(main())


def test_metadata_ready_and_server_calls() -> None:
    async def main() -> None:
        async with system() as (_, _fake, client):
            meta = await client.get_model_metadata("d")
            assert (meta.name, list(meta.versions), meta.inputs[0].name) == ("d", ["1"], "x")
            assert await client.is_model_ready("d")
            assert await client.is_model_ready("d", "1")
            assert not await client.is_model_ready("d", "7")
            assert not await client.is_model_ready("nope")  # like Triton: unknown is not ready
            assert await client.is_server_live() and await client.is_server_ready()
            server = await client.get_server_metadata()
            assert server.name == "lastmile-gateway"
            assert list(server.extensions) == ["binary_tensor_data"]

    uvloop.run(main())


def test_unknown_model_is_not_found_and_counted() -> None:
    async def main() -> None:
        async with system() as (gw, _fake, client):
            for call in (
                client.infer("nope", [x_input(X)]),
                client.get_model_metadata("nope"),
            ):
                with pytest.raises(InferenceServerException) as info:
                    await call
                assert info.value.status() == "StatusCode.NOT_FOUND"
                assert "unknown model 'nope'; deployed: d" in info.value.message()
            assert gw.stats.requests[("_unknown", "", "NOT_FOUND")] == 1

    uvloop.run(main())


def test_triton_errors_keep_their_code_and_hide_the_internal_name() -> None:
    async def main() -> None:
        async with system() as (gw, _fake, client):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(X, "z")], request_id="r9")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert info.value.message() == (
                "[request id: r9] unexpected inference input 'z' for model 'd'"
            )
            assert gw.stats.requests[("d", "ws.d.v1", "INVALID_ARGUMENT")] == 1

    uvloop.run(main())


def test_invalid_version_and_malformed_request_are_invalid_argument() -> None:
    async def main() -> None:
        async with system() as (gw, _fake, client):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(X)], model_version="01")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "invalid model version" in info.value.message()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.ports['grpc']}") as channel:
                raw = channel.unary_unary(f"/{SERVICE}/ModelInfer")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await raw(b"\x0a\x09trunc")
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "malformed request" in (err.value.details() or "")

    uvloop.run(main())


def test_restricted_apis_are_refused_and_never_proxied() -> None:
    async def main() -> None:
        async with system() as (gw, fake, client):
            for call in (
                client.get_model_repository_index(),
                client.load_model("ws.d.v1"),
                client.unload_model("d"),
                client.get_model_config("d"),
                client.get_inference_statistics("d"),
                client.get_system_shared_memory_status(),
                client.unregister_cuda_shared_memory(),
                client.get_trace_settings(),
                client.update_log_settings({"log_verbose_level": 1}),
            ):
                with pytest.raises(InferenceServerException) as info:
                    await call
                assert info.value.status() == "StatusCode.PERMISSION_DENIED"
                assert "not available through the gateway" in info.value.message()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.ports['grpc']}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                call = stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="d")]))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in call:
                        pass
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
                other = channel.unary_unary("/grpc.reflection.v1.ServerReflection/Info")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await other(b"")
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert fake.requests == []

    uvloop.run(main())


def test_upstream_down_is_unavailable_then_recovers_quickly() -> None:
    async def main() -> None:
        async with system() as (gw, fake, client):
            await client.infer("d", [x_input(X)])  # the channel is connected
            await fake.stop()
            for _ in range(3):  # also while the channel backs off between reconnects
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("d", [x_input(X)], client_timeout=10)
                assert info.value.status() == "StatusCode.UNAVAILABLE"
                assert info.value.message() == "no upstream available for 'd'"  # no address
                await asyncio.sleep(0.5)
            assert gw.stats.requests[("d", "ws.d.v1", "UNAVAILABLE")] == 3
            back = await FakeGrpcTriton().start(fake.port)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 3.0
                while True:
                    try:
                        await client.infer("d", [x_input(X)], client_timeout=5)
                        break
                    except InferenceServerException:
                        assert loop.time() < deadline, "no reconnect within 3 s"
                        await asyncio.sleep(0.1)
            finally:
                await back.stop()

    uvloop.run(main())


def test_client_deadline_is_propagated_upstream() -> None:
    async def main() -> None:
        async with system(delay=2.0) as (gw, _fake, client):
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(InferenceServerException) as info:
                await client.infer("d", [x_input(X)], client_timeout=0.3)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert loop.time() - start < 1.5
            await asyncio.sleep(0.3)
            assert gw.stats.requests[("d", "ws.d.v1", "DEADLINE_EXCEEDED")] == 1

    uvloop.run(main())


def test_shutdown_lets_in_flight_grpc_requests_finish() -> None:
    async def main() -> None:
        http_fake = await FakeTriton().start()
        grpc_fake = await FakeGrpcTriton(delay=0.5).start()
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            await put_routes(gw, routes(1, http_fake, grpc_fake))
            client = aioclient.InferenceServerClient(f"127.0.0.1:{gw.ports['grpc']}")
            pending = asyncio.ensure_future(client.infer("d", [x_input(X)]))
            await asyncio.sleep(0.2)
            # leaving the block stops the gateway while the request is still upstream
        result = await pending
        np.testing.assert_array_equal(result.as_numpy("y"), X)
        with pytest.raises(InferenceServerException) as info:  # and new ones are refused
            await client.infer("d", [x_input(X)], client_timeout=2)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        await client.close()
        await grpc_fake.stop()
        await http_fake.stop()

    uvloop.run(main())


def test_grpc_listener_can_be_disabled_and_a_taken_port_fails() -> None:
    async def main() -> None:
        async with running_gateway(grpc_port=0) as gw:
            assert "grpc" not in gw.ports and gw.grpc is None
        async with running_gateway(grpc_port=None) as gw:
            assert gw.grpc is None
        async with running_gateway(grpc_port=free_ports(1)[0]) as gw:
            taken = gw.ports["grpc"]
            with pytest.raises(OSError, match="cannot listen for gRPC"):
                async with running_gateway(grpc_port=taken):
                    pass

    uvloop.run(main())


def test_cli_flag() -> None:
    from rollout.gateway import parse_args

    assert parse_args([])[0].grpc_port == 8001  # the CLI serves gRPC on Triton's port
    assert GatewayConfig().grpc_port is None  # embedding code opts in
    assert parse_args(["--grpc-port", "0"])[0].grpc_port == 0
    assert parse_args(["--grpc-port", "9001"])[0].grpc_port == 9001
