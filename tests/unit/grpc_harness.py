"""Helpers for the in-process gRPC gateway tests (no tests here).

What stands in for Triton is a grpc.aio server that parses requests with the real protobuf
classes (`FakeGrpcTriton`), so any damage done by the bytes-level renaming and stamping shows
up as a parse error or a wrong field; it can answer slowly, hang until released, or fail.
`frontend` runs `GrpcFrontend` alone on an ephemeral port with `RecordingStats`, which records
the metrics calls (the transport's contract with rollout.gateway_metrics) and lets a test wait
for one without sleeping. Tables are built with rollout.routing's types (`variant`, `table`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb

from rollout.grpc_gateway import SERVICE, GrpcFrontend
from rollout.routing import Route, RoutingTable, Target, Variant
from tests.unit.test_gateway_harness import FakeTriton


class FakeGrpcTriton:
    """ModelInfer answers y = factor * x (after `delay`, or once `gate` is set), or fails with
    `fail` = (code name, details); records what it was sent and signals each arrival."""

    def __init__(
        self,
        delay: float = 0.0,
        *,
        factor: float = 1.0,
        fail: tuple[str, str] | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.delay = delay
        self.factor = factor
        self.fail = fail
        self.gate = gate
        self.requests: list[pb.ModelInferRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.trailing: tuple[tuple[str, str], ...] = ()  # trailing metadata of each answer
        self.calls: list[tuple[str, str, str]] = []  # (method, model, version) of ready/metadata
        self.arrived = asyncio.Event()
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
        if self.gate is not None:
            self.gate.set()
        await self.server.stop(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.trailing:
            context.set_trailing_metadata(self.trailing)
        if self.fail is not None:
            await context.abort(grpc.StatusCode[self.fail[0]], self.fail[1])
        if request.inputs[0].name != "x":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"[request id: {request.id}] unexpected inference input "
                f"'{request.inputs[0].name}' for model '{request.model_name}'",
            )
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version or "1", id=request.id
        )
        response.parameters["sequence_id"].int64_param = 0  # as Triton's ensembles do
        out = response.outputs.add()
        out.name, out.datatype = "y", "FP32"
        out.shape.extend(request.inputs[0].shape)
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
        response.raw_output_contents.append((x * self.factor).astype(np.float32).tobytes())
        return response

    async def ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        self.calls.append(("ready", request.name, request.version))
        return pb.ModelReadyResponse(ready=request.version in ("", "1"))

    async def meta(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        self.calls.append(("metadata", request.name, request.version))
        response = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="python")
        response.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return response


class RecordingStats:
    """Stands in for GatewayStats: records the calls the transport makes (the metrics
    contract) and lets a test wait for one without sleeping."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.inflight: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Event()

    def _add(self, call: tuple[Any, ...]) -> None:
        self.calls.append(call)
        self._changed.set()

    def observe(self, route: str, variant: str, protocol: str, code: int, seconds: float) -> None:
        assert seconds >= 0
        self._add(("observe", route, variant, protocol, code))

    def count(self, route: str, variant: str, protocol: str, code: int) -> None:
        self._add(("count", route, variant, protocol, code))

    def enter(self, route: str, variant: str) -> None:
        self.inflight[(route, variant)] = self.inflight.get((route, variant), 0) + 1

    def leave(self, route: str, variant: str) -> None:
        self.inflight[(route, variant)] -= 1

    def shadow(self, route: str, variant: str, outcome: str, seconds: float | None) -> None:
        assert (seconds is None) == (outcome == "dropped")
        self._add(("shadow", route, variant, outcome))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == kind]

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


# -- tables ---------------------------------------------------------------------------------
def variant(
    pipeline: str,
    version: int,
    weight: float,
    *fakes: FakeGrpcTriton,
    model: str | None = None,
    pin: str = "",
) -> Variant:
    """Variant `pipeline/version` served by `fakes` (one target each), Triton model
    default.<pipeline>.v<version> unless `model` says otherwise."""
    targets = tuple(
        Target(
            url="http://127.0.0.1:9",
            model=model or f"default.{pipeline}.v{version}",
            version=pin,
            grpc=fake.address,
        )
        for fake in fakes
    )
    return Variant(name=f"{pipeline}/{version}", version=version, weight=weight, targets=targets)


def table(*routes: Route, generation: int = 1) -> RoutingTable:
    return RoutingTable.build(generation, routes)


def one_route(fake: FakeGrpcTriton, version: int = 3, pin: str = "") -> RoutingTable:
    return table(Route("default", "d", (variant("d", version, 100, fake, pin=pin),)))


def routes(generation: int, http: FakeTriton, grpc_: FakeGrpcTriton | None, **extra: Any) -> bytes:
    """Admin-API JSON: route default/d, variant d/1 on Triton model ws.d.v1 (HTTP `http`, gRPC
    `grpc_`); `extra` overrides target fields."""
    target = {"url": http.url, "model": "ws.d.v1", "version": "", **extra}
    if grpc_ is not None:
        target["grpc"] = grpc_.address
    route = {
        "workspace": "default",
        "pipeline": "d",
        "strategy": "weighted",
        "variants": [{"name": "d/1", "version": 1, "weight": 100, "targets": [target]}],
    }
    return json.dumps({"generation": generation, "routes": {"default/d": route}}).encode()


@contextlib.asynccontextmanager
async def frontend(
    routing: RoutingTable,
    *,
    diffs: Any = None,
    upstream_timeout: float = 30.0,
    shadow_inflight: dict[str, int] | None = None,
) -> AsyncIterator[tuple[GrpcFrontend, RecordingStats, aioclient.InferenceServerClient]]:
    """A GrpcFrontend alone on an ephemeral port, its stats recorded, and a client of it."""
    stats = RecordingStats()
    gateway = GrpcFrontend(
        stats=cast(Any, stats),
        is_ready=lambda: True,
        server_name="lastmile-gateway",
        server_version="test",
        max_message_bytes=64 * 1024 * 1024,
        upstream_timeout=upstream_timeout,
        diffs=diffs,
        shadow_inflight=shadow_inflight,
    )
    gateway.set_table(routing)
    port = await gateway.start("127.0.0.1", 0)
    client = aioclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        yield gateway, stats, client
    finally:
        await client.close()
        await gateway.stop(0)
        assert all(n == 0 for n in stats.inflight.values()), stats.inflight


@contextlib.asynccontextmanager
async def fakes(*made: FakeGrpcTriton) -> AsyncIterator[Sequence[FakeGrpcTriton]]:
    started = [await fake.start() for fake in made]
    try:
        yield started
    finally:
        for fake in started:
            await fake.stop()


def x_input(x: np.ndarray, name: str = "x") -> aioclient.InferInput:
    inp = aioclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def raw_request(name: str = "d", version: str = "", input_name: str = "x") -> bytes:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id="raw")
    tensor = request.inputs.add(name=input_name, datatype="FP32", shape=[1, 4])
    assert tensor is not None
    request.raw_input_contents.append(np.ones(4, dtype=np.float32).tobytes())
    return request.SerializeToString()


async def raw_infer(port: int, request: bytes, metadata: Any = None) -> tuple[Any, Any]:
    """(initial metadata as a dict, parsed response or the AioRpcError) over a raw channel."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer")(request, metadata=metadata)
        try:
            response: Any = pb.ModelInferResponse.FromString(await call)
        except grpc.aio.AioRpcError as exc:
            response = exc
        return dict(await call.initial_metadata()), response
