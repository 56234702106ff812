"""The routing table compiled for the gRPC transport: everything a call needs, precomputed.

A table arrives a few times a day and is read thousands of times a second, so each push builds
here, once, the bytes a call only concatenates: per target the request suffix that renames the
model for Triton (field 1 = Triton's model, field 2 = its pinned version or an empty string,
which clears a version the client sent: a pipeline version is not a Triton version), per
variant the response suffix that shows the client the public name, the pipeline version and a
`lastmile_variant` parameter, and per route the version list ModelMetadata answers with.
Lookups are dicts keyed by what the wire gives (workspace metadata as str, model name and
version as bytes), so a call decodes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from rollout.balance import Balancer, Readiness, Replica
from rollout.capture import sampler
from rollout.grpc_wire import string_field, string_parameter
from rollout.routing import (
    VARIANT_HEADER,
    VARIANT_PARAMETER,
    Route,
    RoutingTable,
    Shadow,
    Target,
    Variant,
)
from rollout.strategies import Strategy, strategy_for

SERVICE = "inference.GRPCInferenceService"
T = TypeVar("T")


class GrpcUpstream:
    """One persistent HTTP/2 channel to a Triton gRPC endpoint and its bytes-level stubs."""

    __slots__ = (
        "address",
        "channel",
        "host",
        "infer",
        "inflight",
        "metadata",
        "mirror_pool",
        "pool",
        "port",
        "ready",
    )

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.pool: Any = None  # the relay's HTTP/2 connections to it (rollout.grpc_relay)
        self.mirror_pool: Any = None  # and those of the shadow copies sent to it
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.inflight = 0  # calls sent on this channel and not answered (for the balancer)
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
    """One replica: its channel and the suffix that renames a request for its Triton model."""

    __slots__ = ("internal", "public", "readiness", "request_suffix", "upstream")

    def __init__(
        self, public: str, target: Target, upstream: GrpcUpstream, replica: Replica
    ) -> None:
        self.public = public
        self.internal = target.model
        self.upstream = upstream
        self.readiness = Readiness(replica)  # the Triton server is shared with the HTTP side
        # Field 2 is always appended: empty lets Triton's version policy choose, and it
        # overrides whatever version the client sent (that one named a pipeline version).
        self.request_suffix = string_field(1, target.model.encode()) + string_field(
            2, target.version.encode()
        )

    def available(self) -> bool:
        return self.readiness.available()

    def outstanding(self) -> int:
        return self.upstream.inflight


class GrpcVariant:
    """A variant's replicas and how its answers are stamped."""

    __slots__ = ("initial_metadata", "name", "response_suffix", "targets", "variant")

    def __init__(self, public: str, variant: Variant, targets: tuple[GrpcTarget, ...]) -> None:
        self.variant = variant
        self.name = variant.name
        self.targets = Balancer(targets)
        self.initial_metadata = ((VARIANT_HEADER, variant.name),)
        # ModelInferResponse: model_name = 1, model_version = 2, parameters = 4 (a map entry
        # appended overrides one of the same key that Triton might have written).
        self.response_suffix = (
            string_field(1, public.encode())
            + string_field(2, str(variant.version).encode())
            + string_parameter(4, VARIANT_PARAMETER.encode(), variant.name.encode())
        )


class GrpcRoute:
    """One route (workspace/pipeline): its strategy, its variants by name and by version."""

    __slots__ = (
        "by_version",
        "capture",
        "key",
        "metadata_suffix",
        "public",
        "route",
        "shadow",
        "sticky_header",
        "sticky_parameter",
        "strategy",
        "variants",
    )

    def __init__(
        self,
        route: Route,
        upstream_for: Callable[[str, int], GrpcUpstream],
        replica_for: Callable[[str, int], Replica],
    ) -> None:
        self.route = route
        self.key = route.key
        self.public = route.pipeline
        self.strategy: Strategy = strategy_for(route)
        self.shadow: Shadow | None = route.shadow
        self.capture = sampler(route.capture)
        self.variants: dict[str, GrpcVariant] = {}
        self.by_version: dict[bytes, GrpcVariant] = {}
        for variant in route.variants:
            targets = tuple(
                GrpcTarget(
                    route.pipeline,
                    t,
                    upstream_for(t.grpc_host, t.grpc_port),
                    replica_for(t.host, t.port),
                )
                for t in variant.targets
            )
            compiled = GrpcVariant(route.pipeline, variant, targets)
            self.variants[variant.name] = compiled
            self.by_version[str(variant.version).encode()] = compiled
        sticky = route.sticky
        self.sticky_header = sticky.header if sticky is not None else None
        self.sticky_parameter = (
            sticky.parameter.encode() if sticky is not None and sticky.parameter else None
        )
        # ModelMetadataResponse: name = 1, versions = 2 (repeated): Triton's are dropped and
        # these appended, so clients see the pipeline versions they can ask for.
        self.metadata_suffix = string_field(1, route.pipeline.encode()) + b"".join(
            string_field(2, str(v.version).encode())
            for v in sorted(route.variants, key=lambda v: v.version)
        )


class GrpcRouting:
    """Routes by workspace, then by public pipeline name (bytes, as scanned off the wire)."""

    __slots__ = ("routes", "table")

    def __init__(
        self,
        table: RoutingTable | None,
        upstream_for: Callable[[str, int], GrpcUpstream],
        replica_for: Callable[[str, int], Replica] = Replica,
    ) -> None:
        self.table = table
        self.routes: dict[str, dict[bytes, GrpcRoute]] = {}
        if table is not None:
            for route in table.routes.values():
                by_name = self.routes.setdefault(route.workspace, {})
                by_name[route.pipeline.encode()] = GrpcRoute(route, upstream_for, replica_for)

    def lookup(self, workspace: str, name: bytes) -> GrpcRoute | None:
        by_name = self.routes.get(workspace)
        return None if by_name is None else by_name.get(name)
