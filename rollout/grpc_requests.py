"""The gateway's gRPC requests, read without protobuf: which route, variant and sticky key a
message names, what metadata goes upstream, and what a failed upstream call becomes (a public
error, or another replica when the call reached no model). Pure functions, shared by unary
calls and stream messages (rollout.grpc_gateway, rollout.grpc_stream).
"""

from __future__ import annotations

import re
from typing import Any

from grpc import StatusCode

from rollout.gateway_metrics import GatewayStats
from rollout.grpc_routing import GrpcRoute, GrpcTarget, GrpcVariant
from rollout.grpc_stream import InferFailed
from rollout.grpc_wire import WireError, request_parameter, scan_name_version
from rollout.routing import DEFAULT_WORKSPACE, WORKSPACE_HEADER
from rollout.strategies import RequestContext
from rollout.upstream_errors import grpc_failure, model_not_loaded_message

FORWARD_METADATA = frozenset({"traceparent", "tracestate", "x-request-id"})
VERSION_RE = re.compile(rb"[1-9][0-9]{0,17}")
PROTOCOL = "grpc"
NO_KEY = RequestContext()
Metadata = tuple[tuple[str, Any], ...]


def name_version(request: bytes) -> tuple[bytes, bytes]:
    try:
        name, version = scan_name_version(request)
    except WireError as exc:
        raise malformed(exc) from None
    if version and not VERSION_RE.fullmatch(version):
        raise InferFailed(
            StatusCode.INVALID_ARGUMENT, "invalid model version: use a positive integer"
        )
    return name, version


def malformed(exc: WireError) -> InferFailed:
    return InferFailed(StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")


def version_of(route: GrpcRoute, version: bytes, stats: GatewayStats | None) -> GrpcVariant:
    variant = route.by_version.get(version)
    if variant is None:
        if stats is not None:
            stats.count(route.key, "", PROTOCOL, 404)
        raise InferFailed(
            StatusCode.NOT_FOUND,
            f"model {route.public!r} has no version {version.decode()} being served",
        )
    return variant


def workspace_of(metadata: Metadata) -> str:
    for key, value in metadata:
        if key == WORKSPACE_HEADER:
            return str(value)
    return DEFAULT_WORKSPACE


def header_key(route: GrpcRoute, metadata: Metadata) -> bytes | None:
    header = route.sticky_header
    for key, value in metadata:
        if key == header:
            return value.encode() if isinstance(value, str) else bytes(value)
    return None


def sticky_context(route: GrpcRoute, metadata: Metadata, request: bytes) -> RequestContext:
    """The sticky key: the route's metadata header, else its request parameter (the request
    is scanned only then). WireError when the parameters are malformed."""
    key = header_key(route, metadata)
    if key is None and route.sticky_parameter is not None:
        key = request_parameter(request, route.sticky_parameter)
    return NO_KEY if key is None else RequestContext(key)


def picked(route: GrpcRoute, metadata: Metadata) -> GrpcVariant:
    """The variant a metadata/ready call without a version is about: the strategy's pick, keyed
    by the sticky header when there is one (these requests carry no parameters)."""
    ctx = NO_KEY
    if route.strategy.needs_key:
        key = header_key(route, metadata)
        ctx = NO_KEY if key is None else RequestContext(key)
    return route.variants[route.strategy.pick(ctx).primary.name]


def unknown_model(name: bytes) -> str:
    """Names no other route: which pipelines exist (here or in other workspaces) is not the
    caller's business."""
    shown = name[:64].decode("utf-8", "replace")
    return f"unknown model {shown!r}"


def forwarded_metadata(metadata: Metadata) -> tuple[tuple[str, str], ...] | None:
    if not metadata:
        return None
    forwarded = tuple((k, v) for k, v in metadata if k in FORWARD_METADATA)
    return forwarded or None


def elsewhere(variant: GrpcVariant, target: GrpcTarget, exc: Any) -> GrpcTarget | None:
    """Another replica for a call that reached no model: the channel could not connect
    (the replica is ejected) or Triton there does not have the model loaded yet (the target is
    skipped for a moment). None for any other failure: a model may have run the call."""
    code, details = exc.code(), exc.details() or ""
    if code == StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        target.readiness.replica.eject(f"gRPC connect failed: {details[:120]}")
    elif code == StatusCode.NOT_FOUND and model_not_loaded_message(details):
        target.readiness.mark_unready()
    else:
        return None
    return variant.targets.pick_other(target)


def public_error(target: GrpcTarget, exc: Any) -> tuple[StatusCode, str]:
    """Client mistakes become INVALID_ARGUMENT, server faults keep a server code; the message
    is sanitized and hides the internal model name and anything about our network."""
    code = exc.code()
    details = exc.details() or ""
    public = target.public
    if target.internal not in details:
        if code == StatusCode.UNAVAILABLE:  # from the channel (refused, reset), not Triton
            return code, f"no upstream available for {public!r}"
        if code == StatusCode.DEADLINE_EXCEEDED:
            return code, f"upstream timed out for {public!r}"
        if code == StatusCode.CANCELLED:
            return code, f"request for {public!r} was cancelled"
    details = details.replace(target.upstream.address, "upstream")
    name, message = grpc_failure(code.name, details, internal=target.internal, public=public)
    return StatusCode[name], message
