"""KServe v2 gRPC side of the gateway (`inference.GRPCInferenceService`), bytes in, bytes out.

A grpc.aio server with a generic handler whose (de)serializers are the identity: requests stay
the bytes the client sent. Routing reads fields 1-2 (model name, version) with a tiny wire
scanner (rollout.grpc_wire) and renames by appending field 1 (and 2 for a pinned version):
protobuf keeps the last value. Responses get the public name appended the same way. Measured
on the 2-core dev box: the scan costs ~2.5 µs whatever the tensor size, parsing with
`service_pb2` ~2 µs for a 50-byte request but ~170 µs for a 4 MiB one (it copies the tensors),
so the hot path never decodes protobuf. The shared-memory refusal follows the same rule: a
`bytes in` pre-filter outside the raw tensor field, a wire-level parse only when it fires.

Compressed messages (grpc-encoding: gzip/deflate) are inflated by grpc itself, which applies
grpc.max_receive_message_length (the gateway's max body) to the *inflated* size, inflating in
bounded steps: a gzip bomb gets RESOURCE_EXHAUSTED without growing the gateway's memory
(measured: 512 MiB of zeros against a 1 MiB limit, peak RSS unchanged).

Served: ServerLive/ServerReady/ServerMetadata (answered here, like the HTTP side), ModelReady,
ModelMetadata and ModelInfer (forwarded over one persistent grpc.aio channel per Triton).
Refused, never proxied (DESIGN §5): repository, shared memory, trace, logging, statistics and
ModelConfig (PERMISSION_DENIED); ModelStreamInfer (UNIMPLEMENTED, for now).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from rollout.body_guard import SHM_MARKER, SHM_REFUSED
from rollout.exchange import VERSION_RE
from rollout.gateway_metrics import UNKNOWN_ROUTE, GatewayStats
from rollout.grpc_wire import (
    WireError,
    bool_field,
    infer_parameter_keys,
    mentions,
    scan_name_version,
    string_field,
)
from rollout.routing import Route, RoutingTable, Target
from rollout.upstream_errors import grpc_failure

logger = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
REFUSED_METHODS = (
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)
# Client metadata worth passing to Triton (tracing, request ids); the rest stays here.
FORWARD_METADATA = frozenset({"traceparent", "tracestate", "x-request-id"})
StatusCode = grpc.StatusCode


class GrpcUpstream:
    """One persistent HTTP/2 channel to a Triton gRPC endpoint and its bytes-level stubs."""

    __slots__ = ("address", "channel", "infer", "metadata", "ready")

    def __init__(self, host: str, port: int) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.use_local_subchannel_pool", 1),
                # Reconnect within a second of Triton coming back (gRPC's default backoff grows
                # to two minutes, during which calls fail fast with UNAVAILABLE).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        # No serializers: requests and responses are passed through as bytes.
        self.infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
        self.ready = self.channel.unary_unary(f"/{SERVICE}/ModelReady")
        self.metadata = self.channel.unary_unary(f"/{SERVICE}/ModelMetadata")


class GrpcTarget:
    """Per-target suffixes computed once per routing table: a rename is one concatenation."""

    __slots__ = ("internal", "label", "public", "request_suffix", "response_suffix", "upstream")

    def __init__(self, route: str, target: Target, upstream: GrpcUpstream) -> None:
        self.public = route
        self.internal = target.model
        self.label = target.label
        self.upstream = upstream
        suffix = string_field(1, target.model.encode())
        if target.version:
            suffix += string_field(2, target.version.encode())
        self.request_suffix = suffix
        self.response_suffix = string_field(1, route.encode())


class GrpcRouting:
    __slots__ = ("deployed", "routes", "targets")

    def __init__(
        self, table: RoutingTable | None, upstream_for: Callable[[str, int], GrpcUpstream]
    ) -> None:
        self.routes: dict[bytes, Route] = {}
        self.targets: dict[int, GrpcTarget] = {}
        if table is not None:
            for name, route in table.routes.items():
                self.routes[name.encode()] = route
                for t in route.targets:
                    upstream = upstream_for(t.grpc_host, t.grpc_port)
                    self.targets[id(t)] = GrpcTarget(name, t, upstream)
        self.deployed = ", ".join(sorted(table.routes)) if table and table.routes else "(none)"


class GrpcFrontend:
    """The gRPC listener; lives on the gateway's event loop and shares its stats."""

    def __init__(
        self,
        *,
        stats: GatewayStats,
        is_ready: Callable[[], bool],
        server_name: str,
        server_version: str,
        max_message_bytes: int,
        upstream_timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.stats = stats
        self.is_ready = is_ready
        self.upstream_timeout = upstream_timeout
        self.max_message_bytes = max_message_bytes
        self.upstreams: dict[tuple[str, int], GrpcUpstream] = {}
        self.routing = GrpcRouting(None, self._upstream_for)
        self.server_metadata = (
            string_field(1, server_name.encode())
            + string_field(2, server_version.encode())
            + string_field(3, b"binary_tensor_data")
        )
        self.server: Any = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Bind host:port and serve; returns the bound port. OSError when it cannot bind."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared silently
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        server.add_generic_rpc_handlers((self._handler(),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not bound:  # older grpcio report failure as port 0
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self.server = server
        return int(bound)

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace`, then close the channels."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        for upstream in self.upstreams.values():
            await upstream.channel.close()
        self.upstreams.clear()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    def set_table(self, table: RoutingTable | None) -> None:
        """Swap routing in one assignment; channels no longer used close once idle."""
        self.routing = GrpcRouting(table, self._upstream_for)
        wanted = table.grpc_upstreams() if table is not None else set()
        for key in [k for k in self.upstreams if k not in wanted]:
            task = self.loop.create_task(
                self.upstreams.pop(key).channel.close(self.upstream_timeout)
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _upstream_for(self, host: str, port: int) -> GrpcUpstream:
        upstream = self.upstreams.get((host, port))
        if upstream is None:
            upstream = self.upstreams[(host, port)] = GrpcUpstream(host, port)
        return upstream

    def _handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler  # no (de)serializers: bytes pass through
        handlers: dict[str, grpc.RpcMethodHandler] = {
            "ServerLive": unary(self._server_live),
            "ServerReady": unary(self._server_ready),
            "ServerMetadata": unary(self._server_metadata),
            "ModelReady": unary(self._model_ready),
            "ModelMetadata": unary(self._model_metadata),
            "ModelInfer": unary(self._model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self._stream_infer),
        }
        for method in REFUSED_METHODS:
            handlers[method] = unary(_refuse(method))
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- answered here ----------------------------------------------------------------------
    async def _server_live(self, request: bytes, context: Any) -> bytes:
        return bool_field(1, True)

    async def _server_ready(self, request: bytes, context: Any) -> bytes:
        return bool_field(1, self.is_ready())

    async def _server_metadata(self, request: bytes, context: Any) -> bytes:
        return self.server_metadata

    async def _stream_infer(self, requests: Any, context: Any) -> None:
        await abort(
            context,
            StatusCode.UNIMPLEMENTED,
            "ModelStreamInfer is not supported by the gateway yet; use ModelInfer",
        )

    # -- forwarded --------------------------------------------------------------------------
    async def _model_infer(self, request: bytes, context: Any) -> bytes:
        start = self.loop.time()
        routing = self.routing
        name, _ = await _route_fields(request, context)
        route = routing.routes.get(name)
        if route is None:
            self.stats.observe(UNKNOWN_ROUTE, "", StatusCode.NOT_FOUND.name, 0.0)
            await abort(context, StatusCode.NOT_FOUND, _unknown(name, routing.deployed))
        if mentions(request, SHM_MARKER):
            await self._refuse_shared_memory(route.name, request, context)
        gt = routing.targets[id(route.choose())]
        try:
            response: bytes = await gt.upstream.infer(
                request + gt.request_suffix,
                timeout=self._timeout(context),
                metadata=_forwarded_metadata(context),
            )
        except grpc.aio.AioRpcError as exc:
            code, details = _public_error(gt, exc)
            self.stats.observe(gt.public, gt.label, code.name, self.loop.time() - start)
            await abort(context, code, details)
        except asyncio.CancelledError:  # client gone or its deadline passed: upstream cancelled
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            self.stats.observe(gt.public, gt.label, code, self.loop.time() - start)
            raise
        self.stats.observe(gt.public, gt.label, "OK", self.loop.time() - start)
        return response + gt.response_suffix

    async def _refuse_shared_memory(self, route: str, request: bytes, context: Any) -> None:
        """Abort INVALID_ARGUMENT when a parameter really names shared memory (the marker may
        just be tensor data)."""
        try:
            keys = infer_parameter_keys(request)
        except WireError as exc:
            self.stats.count(route, "", StatusCode.INVALID_ARGUMENT.name)
            await abort(context, StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")
        if any(key.startswith(SHM_MARKER) for key in keys):
            self.stats.count(route, "", StatusCode.INVALID_ARGUMENT.name)
            await abort(context, StatusCode.INVALID_ARGUMENT, SHM_REFUSED)

    async def _model_ready(self, request: bytes, context: Any) -> bytes:
        routing = self.routing
        name, _ = await _route_fields(request, context)
        route = routing.routes.get(name)
        if route is None:  # as Triton does: an unknown model is simply not ready
            return bool_field(1, False)
        gt = routing.targets[id(route.choose())]
        return await self._call(gt, gt.upstream.ready, request, context)

    async def _model_metadata(self, request: bytes, context: Any) -> bytes:
        routing = self.routing
        name, _ = await _route_fields(request, context)
        route = routing.routes.get(name)
        if route is None:
            await abort(context, StatusCode.NOT_FOUND, _unknown(name, routing.deployed))
        gt = routing.targets[id(route.choose())]
        # ModelMetadataResponse.name is field 1 too: the same suffix shows the public name.
        return await self._call(gt, gt.upstream.metadata, request, context) + gt.response_suffix

    async def _call(self, gt: GrpcTarget, stub: Any, request: bytes, context: Any) -> bytes:
        try:
            response: bytes = await stub(
                request + gt.request_suffix,
                timeout=self._timeout(context),
                metadata=_forwarded_metadata(context),
            )
        except grpc.aio.AioRpcError as exc:
            await abort(context, *_public_error(gt, exc))
        return response

    def _timeout(self, context: Any) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.upstream_timeout
        return min(remaining, self.upstream_timeout)


async def abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with `code`; grpc.aio's abort raises, this only tells the type checker."""
    await context.abort(code, details)
    raise AssertionError("unreachable: ServicerContext.abort raises")


async def _route_fields(request: bytes, context: Any) -> tuple[bytes, bytes]:
    """Model name and version of a request; aborts INVALID_ARGUMENT when malformed."""
    try:
        name, version = scan_name_version(request)
    except WireError as exc:
        await abort(context, StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")
    if version and not VERSION_RE.fullmatch(version):
        await abort(
            context, StatusCode.INVALID_ARGUMENT, "invalid model version: use a positive integer"
        )
    return name, version


def _unknown(name: bytes, deployed: str) -> str:
    shown = name[:64].decode("utf-8", "replace")
    return f"unknown model {shown!r}; deployed: {deployed}"


def _forwarded_metadata(context: Any) -> tuple[tuple[str, str], ...] | None:
    metadata = context.invocation_metadata()
    if not metadata:
        return None
    forwarded = tuple((k, v) for k, v in metadata if k in FORWARD_METADATA)
    return forwarded or None


def _public_error(gt: GrpcTarget, exc: Any) -> tuple[grpc.StatusCode, str]:
    """Client mistakes become INVALID_ARGUMENT, server faults keep a server code; the message
    is sanitized and hides the internal model name and anything about our network."""
    code = exc.code()
    details = exc.details() or ""
    if gt.internal not in details:
        if code == StatusCode.UNAVAILABLE:  # from the channel (refused, reset), not Triton
            return code, f"no upstream available for {gt.public!r}"
        if code == StatusCode.DEADLINE_EXCEEDED:
            return code, f"upstream timed out for {gt.public!r}"
        if code == StatusCode.CANCELLED:
            return code, f"request for {gt.public!r} was cancelled"
    details = details.replace(gt.upstream.address, "upstream")
    name, message = grpc_failure(code.name, details, internal=gt.internal, public=gt.public)
    return StatusCode[name], message


def _refuse(method: str) -> Callable[[bytes, Any], Any]:
    message = (
        f"{method} is not available through the gateway: repository, shared-memory, trace, "
        "logging, statistics and model-config APIs are reserved to the control plane"
    )

    async def refuse(request: bytes, context: Any) -> bytes:
        await abort(context, StatusCode.PERMISSION_DENIED, message)

    return refuse
