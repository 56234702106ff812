"""KServe v2 gRPC side of the gateway (`inference.GRPCInferenceService`), bytes in, bytes out.

A grpc.aio server with a generic handler whose (de)serializers are the identity: requests stay
the bytes the client sent. Routing reads fields 1-2 (model name, version) with a tiny wire
scanner (rollout.grpc_wire); the workspace comes from the `lastmile-workspace` metadata
(default "default"). An explicit version selects that variant of the route; otherwise the
route's strategy picks one (rollout.strategies), with a sticky key taken from the metadata
header the route names, else from a request parameter (field 4, scanned only then). The
request is renamed for the variant's Triton model by appending fields 1 and 2 (protobuf keeps
the last value); the response gets the public name, the pipeline version and a
`lastmile_variant` parameter appended the same way, and initial metadata `lastmile-variant`
says which variant answered (also when its upstream failed). Measured on the 2-core dev box:
the scan costs ~2.5 µs whatever the tensor size, parsing with `service_pb2` ~2 µs for a
50-byte request but ~170 µs for a 4 MiB one (it copies the tensors), so the hot path never
decodes protobuf. The shared-memory refusal follows the same rule: a `bytes in` pre-filter
outside the raw tensor field, a wire-level parse only when it fires.

Every ModelInfer is counted per route key and variant with protocol "grpc" and, as `code`, the
HTTP status its gRPC status stands for (`grpc_code_to_http`), so the canary controller reads
one label scheme for both transports; refusals before a variant was chosen have variant "".

Compressed messages (grpc-encoding: gzip/deflate) are inflated by grpc itself, which applies
grpc.max_receive_message_length (the gateway's max body) to the *inflated* size, inflating in
bounded steps: a gzip bomb gets RESOURCE_EXHAUSTED without growing the gateway's memory
(measured: 512 MiB of zeros against a 1 MiB limit, peak RSS unchanged).

Served: ServerLive/ServerReady/ServerMetadata (answered here, like the HTTP side), ModelReady,
ModelMetadata and ModelInfer (forwarded over one persistent grpc.aio channel per Triton; shadow
routes also mirror ModelInfer, rollout.grpc_shadow), and ModelStreamInfer, each message of the
stream handled as one ModelInfer (rollout.grpc_stream). Refused, never proxied (DESIGN §5):
repository, shared memory, trace, logging and statistics (PERMISSION_DENIED). ModelConfig is
answered with the variant's config cut down to its public interface (rollout.public_config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from rollout.balance import Replica
from rollout.body_guard import SHM_MARKER, SHM_REFUSED
from rollout.capture import GRPC, CaptureSpool
from rollout.gateway_metrics import UNKNOWN_ROUTE, GatewayStats, grpc_code_to_http
from rollout.grpc_relay import GrpcRelay
from rollout.grpc_requests import (
    NO_KEY,
    PROTOCOL,
    Metadata,
    elsewhere,
    forwarded_metadata,
    malformed,
    name_version,
    picked,
    public_error,
    sticky_context,
    unknown_model,
    version_of,
    workspace_of,
)
from rollout.grpc_routing import (
    SERVICE,
    GrpcRoute,
    GrpcRouting,
    GrpcTarget,
    GrpcUpstream,
    GrpcVariant,
)
from rollout.grpc_shadow import GrpcShadow, settle
from rollout.grpc_stream import InferFailed, serve_stream
from rollout.grpc_wire import (
    WireError,
    bool_field,
    drop_fields,
    infer_parameter_keys,
    mentions,
    string_field,
)
from rollout.lane import SlowLane
from rollout.public_config import EXTENSIONS, public_grpc_config
from rollout.routing import Mirror, RoutingTable

if TYPE_CHECKING:
    from rollout.shadow_diff import DiffCollector

logger = logging.getLogger(__name__)

__all__ = ["SERVICE", "GrpcFrontend", "GrpcRouting"]
REFUSED_METHODS = (
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
StatusCode = grpc.StatusCode


# The version a client may name: the pipeline version, a positive integer.


class GrpcFrontend:
    """The gRPC listener; lives on the gateway's event loop and shares its stats.

    Optional: `diffs`, the gateway's DiffCollector, which gets the (primary, mirror) answer
    pairs of shadow routes (without it mirrors are still sent and counted, never compared);
    `shadow_inflight`, the route key -> mirrored copies in flight dict of the HTTP side, so
    that `shadow.max_queue` bounds a route's copies over both transports together;
    `lane`, the HTTP side's slow lane, where the relay's copies' answers are read too.
    """

    def __init__(
        self,
        *,
        stats: GatewayStats,
        is_ready: Callable[[], bool],
        server_name: str,
        server_version: str,
        max_message_bytes: int,
        upstream_timeout: float,
        diffs: DiffCollector | None = None,
        shadow_inflight: dict[str, int] | None = None,
        lane: SlowLane | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.lane = lane if lane is not None else SlowLane(self.loop)
        self.stats = stats
        self.is_ready = is_ready
        self.upstream_timeout = upstream_timeout
        self.max_message_bytes = max_message_bytes
        self.upstreams: dict[tuple[str, int], GrpcUpstream] = {}
        # the Triton server behind a target, shared with the HTTP side (set by the gateway)
        self.replica_for: Callable[[str, int], Replica] = Replica
        self.capture: CaptureSpool | None = None  # the data-capture spool (set by the gateway)
        self.routing = GrpcRouting(None, self._upstream_for)
        self.shadow = GrpcShadow(stats, diffs, shadow_inflight)
        self.server_metadata = (
            string_field(1, server_name.encode())
            + string_field(2, server_version.encode())
            + b"".join(string_field(3, extension.encode()) for extension in EXTENSIONS)
        )
        self.server: Any = None
        self.relay: GrpcRelay | None = None
        self.port = 0  # bound by start()
        self._closing: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(
        self, host: str, port: int, sock: socket.socket | None = None, *, listen: bool = True
    ) -> int:
        """Bind host:port (or serve on ``sock``, a listening socket handed down) and serve;
        returns the bound port. OSError when it cannot bind. ``listen=False``: no listener,
        connections arrive through `client_protocol` (rollout.conn_handoff); returns `port`.

        The port is the HTTP/2 relay's (rollout.grpc_relay); this grpc.aio server listens on
        a loopback port of its own and answers what the relay hands over."""
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        server.add_generic_rpc_handlers((self._handler(),))
        inner = server.add_insecure_port("127.0.0.1:0")
        if not inner:
            raise OSError("cannot listen for gRPC on a loopback port")
        await server.start()
        self.server = server
        relay = GrpcRelay(self, self.max_message_bytes)
        try:
            self.port = await relay.start(host, port, int(inner), sock=sock, listen=listen)
        except OSError as exc:
            await server.stop(0)
            self.server = None
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc}") from None
        self.relay = relay
        return self.port

    def client_protocol(self) -> asyncio.Protocol:
        """A protocol for one client connection accepted elsewhere (after start)."""
        assert self.relay is not None, "start the gRPC frontend first"
        return self.relay.client()

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace`, then close the channels
        (mirror copies still in flight are abandoned)."""
        if self.relay is not None:
            await self.relay.stop(grace)
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self.relay is not None:
            self.relay.close_upstreams()
            self.relay = None
        await self.shadow.stop()
        for upstream in self.upstreams.values():
            await upstream.channel.close()
        self.upstreams.clear()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    def set_table(self, table: RoutingTable | None) -> None:
        """Swap routing in one assignment; channels no longer used close once idle."""
        self.routing = GrpcRouting(table, self._upstream_for, self.replica_for)
        wanted = table.grpc_upstreams() if table is not None else set()
        for key in [k for k in self.upstreams if k not in wanted]:
            gone = self.upstreams.pop(key)
            if self.relay is not None:
                self.relay.forget(gone)
            task = self.loop.create_task(gone.channel.close(self.upstream_timeout))
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
            "ModelConfig": unary(self._model_config),
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

    # -- forwarded --------------------------------------------------------------------------
    async def _model_infer(self, request: bytes, context: Any) -> bytes:
        metadata: Metadata = context.invocation_metadata() or ()
        try:
            response, variant = await self.infer_message(request, metadata, context, announce=True)
        except InferFailed as exc:
            await abort(context, exc.code, exc.details)
        return response + variant.response_suffix

    async def _stream_infer(self, requests: Any, context: Any) -> None:
        await serve_stream(self, requests, context)

    async def infer_message(
        self, request: bytes, metadata: Metadata, context: Any, *, announce: bool = False
    ) -> tuple[bytes, GrpcVariant]:
        """One ModelInfer (a unary call or a stream's message) routed, forwarded and counted:
        Triton's answer, not yet stamped, and its variant; InferFailed (counted) for an error.
        `announce`: send the variant as initial metadata (one per call, not per message)."""
        start = self.loop.time()
        stats = self.stats
        name, version = name_version(request)
        route = self.routing.lookup(workspace_of(metadata), name)
        if route is None:
            stats.count(UNKNOWN_ROUTE, "", PROTOCOL, 404)
            raise InferFailed(StatusCode.NOT_FOUND, unknown_model(name))
        if mentions(request, SHM_MARKER):
            self._refuse_shared_memory(route.key, request)
        mirrors: tuple[Mirror, ...] = ()
        if version:
            variant = version_of(route, version, stats)
        else:
            try:
                ctx = (
                    sticky_context(route, metadata, request) if route.strategy.needs_key else NO_KEY
                )
            except WireError as exc:
                stats.count(route.key, "", PROTOCOL, 400)
                raise malformed(exc) from None
            decision = route.strategy.pick(ctx)
            variant = route.variants[decision.primary.name]
            mirrors = decision.mirrors
        target = variant.targets.pick()
        forwarded = forwarded_metadata(metadata)
        pair = None
        key, label = route.key, variant.name
        stats.enter(key, label)
        upstream = target.upstream
        upstream.inflight += 1  # the balancer's figure: calls outstanding per replica
        try:
            if announce:
                await context.send_initial_metadata(variant.initial_metadata)
            call = upstream.infer(
                request + target.request_suffix,
                timeout=self._timeout(context),
                metadata=forwarded,
            )
            if mirrors:  # after the primary: a copy never goes out ahead of the client's call
                pair = self.shadow.mirror(route, mirrors, request, forwarded)
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as exc:
                other = elsewhere(variant, target, exc)
                if other is None:
                    raise
                response = await self._once_more(other, request, context, forwarded)
        except grpc.aio.AioRpcError as exc:
            settle(pair)
            code, details = public_error(target, exc)
            stats.observe(key, label, PROTOCOL, grpc_code_to_http(code.name), self._since(start))
            raise InferFailed(code, details) from None
        except asyncio.CancelledError:  # client gone or its deadline passed: upstream cancelled
            settle(pair)
            remaining = context.time_remaining()
            code_name = (
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            )
            stats.observe(key, label, PROTOCOL, grpc_code_to_http(code_name), self._since(start))
            raise
        finally:
            upstream.inflight -= 1
            stats.leave(key, label)
        elapsed = self._since(start)
        stats.observe(key, label, PROTOCOL, 200, elapsed)
        settle(pair, response, elapsed)
        sampler, spool = route.capture, self.capture
        if sampler is not None and spool is not None and sampler.take():
            spool.offer(key, label, GRPC, (request,), -1, (response,), -1)
        return response, variant

    async def _once_more(
        self, target: GrpcTarget, request: bytes, context: Any, forwarded: Any
    ) -> bytes:
        """The call again on another replica (the first attempt reached no model)."""
        upstream = target.upstream
        upstream.inflight += 1
        try:
            response: bytes = await upstream.infer(
                request + target.request_suffix,
                timeout=self._timeout(context),
                metadata=forwarded,
            )
        finally:
            upstream.inflight -= 1
        return response

    def _refuse_shared_memory(self, route: str, request: bytes) -> None:
        """InferFailed (INVALID_ARGUMENT) when a parameter really names shared memory (the
        marker may just be tensor data)."""
        try:
            keys = infer_parameter_keys(request)
        except WireError as exc:
            self.stats.count(route, "", PROTOCOL, 400)
            raise malformed(exc) from None
        if any(key.startswith(SHM_MARKER) for key in keys):
            self.stats.count(route, "", PROTOCOL, 400)
            raise InferFailed(StatusCode.INVALID_ARGUMENT, SHM_REFUSED)

    async def _model_ready(self, request: bytes, context: Any) -> bytes:
        name, version = await _route_fields(request, context)
        metadata: Metadata = context.invocation_metadata() or ()
        route = self.routing.lookup(workspace_of(metadata), name)
        if route is None:  # as Triton does: an unknown model (or version) is simply not ready
            return bool_field(1, False)
        if version:
            variant = route.by_version.get(version)
            if variant is None:
                return bool_field(1, False)
        else:
            variant = picked(route, metadata)
        await context.send_initial_metadata(variant.initial_metadata)
        target = variant.targets.pick()
        return await self._call(target, target.upstream.ready, request, context, metadata)

    async def _described(
        self, request: bytes, context: Any
    ) -> tuple[GrpcRoute, GrpcTarget, Metadata]:
        """For a metadata or config call: the route, the replica that answers for the chosen
        variant, the call's metadata (the variant already announced); an abort otherwise."""
        name, version = await _route_fields(request, context)
        metadata: Metadata = context.invocation_metadata() or ()
        route = self.routing.lookup(workspace_of(metadata), name)
        if route is None:
            await abort(context, StatusCode.NOT_FOUND, unknown_model(name))
        if version:
            variant = await _versioned(route, version, context, None)
        else:
            variant = picked(route, metadata)
        await context.send_initial_metadata(variant.initial_metadata)
        return route, variant.targets.pick(), metadata

    async def _model_metadata(self, request: bytes, context: Any) -> bytes:
        route, target, metadata = await self._described(request, context)
        response = await self._call(target, target.upstream.metadata, request, context, metadata)
        try:
            # Triton's name and versions are internal: the public name and the route's
            # pipeline versions replace them (a small message, rebuilt off the infer path).
            return drop_fields(response, _METADATA_NAME_VERSIONS) + route.metadata_suffix
        except WireError:
            await abort(context, StatusCode.INTERNAL, f"malformed metadata for {route.public!r}")

    async def _model_config(self, request: bytes, context: Any) -> bytes:
        """The variant's target's config (an ensemble's), cut down to the public interface."""
        route, target, metadata = await self._described(request, context)
        # A stub per call (a few µs): clients ask for a config once, before they infer.
        stub = target.upstream.channel.unary_unary(f"/{SERVICE}/ModelConfig")
        response = await self._call(target, stub, request, context, metadata)
        try:
            return public_grpc_config(response, route.public)
        except WireError:
            await abort(
                context, StatusCode.INTERNAL, f"malformed model config for {route.public!r}"
            )

    async def _call(
        self, target: GrpcTarget, stub: Any, request: bytes, context: Any, metadata: Metadata
    ) -> bytes:
        try:
            response: bytes = await stub(
                request + target.request_suffix,
                timeout=self._timeout(context),
                metadata=forwarded_metadata(metadata),
            )
        except grpc.aio.AioRpcError as exc:
            await abort(context, *public_error(target, exc))
        return response

    def _timeout(self, context: Any) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.upstream_timeout
        return min(remaining, self.upstream_timeout)

    def _since(self, start: float) -> float:
        return self.loop.time() - start


_METADATA_NAME_VERSIONS = frozenset({1, 2})  # ModelMetadataResponse.name, .versions


async def abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with `code`; grpc.aio's abort raises, this only tells the type checker."""
    await context.abort(code, details)
    raise AssertionError("unreachable: ServicerContext.abort raises")


async def _route_fields(request: bytes, context: Any) -> tuple[bytes, bytes]:
    """Model name and version of a request; aborts INVALID_ARGUMENT when malformed."""
    try:
        return name_version(request)
    except InferFailed as exc:
        await abort(context, exc.code, exc.details)


async def _versioned(
    route: GrpcRoute, version: bytes, context: Any, stats: GatewayStats | None
) -> GrpcVariant:
    """The variant an explicit version names (weight 0 included); NOT_FOUND when not served."""
    try:
        return version_of(route, version, stats)
    except InferFailed as exc:
        await abort(context, exc.code, exc.details)


def _refuse(method: str) -> Callable[[bytes, Any], Any]:
    message = (
        f"{method} is not available through the gateway: repository, shared-memory, trace, "
        "logging and statistics APIs are reserved to the control plane"
    )

    async def refuse(request: bytes, context: Any) -> bytes:
        await abort(context, StatusCode.PERMISSION_DENIED, message)

    return refuse
