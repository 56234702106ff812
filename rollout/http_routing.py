"""A routing table compiled for the HTTP hot path: per route, variant and target, the strategy
object and the bytes a request needs, built once per table so that a request costs dict lookups
and concatenations, never formatting or validation.

A route is found by ``<workspace>/<pipeline>`` as bytes straight from the URL (and the
``lastmile-workspace`` header or ``/w/<workspace>`` prefix, rollout.proxy); its strategy picks a
variant (rollout.strategies); the variant picks one of its replicas (rollout.balance: least
outstanding requests over the replicas not ejected).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from rollout.balance import Balancer, Readiness
from rollout.capture import sampler
from rollout.routing import (
    DEFAULT_WORKSPACE,
    VARIANT_HEADER,
    WORKSPACE_HEADER,
    Route,
    RoutingTable,
    Target,
    Variant,
)
from rollout.stamp import VariantStamp, triton_prefix
from rollout.strategies import Decision, RequestContext, Strategy, strategy_for
from rollout.upstream import UpstreamPool

DEFAULT_WORKSPACE_BYTES = DEFAULT_WORKSPACE.encode()
WORKSPACE_HEADER_BYTES = WORKSPACE_HEADER.encode()
NO_KEY = RequestContext()


class CompiledTarget:
    """One Triton model behind one upstream: its pool and the request line bytes."""

    __slots__ = ("host_line", "internal", "path", "pool", "readiness", "triton_prefix", "upstream")

    def __init__(self, target: Target, pool: UpstreamPool) -> None:
        self.internal = target.model
        self.pool = pool
        self.readiness = Readiness(pool.replica)
        self.upstream = (target.host, target.port)
        # The client's version (if any) chose the variant; Triton's versions of an ensemble are
        # internal, so the upstream path carries only the target's pinned version, if any.
        path = b"/v2/models/" + target.model.encode()
        self.path = path + b"/versions/" + target.version.encode() if target.version else path
        host = f"[{target.host}]" if ":" in target.host else target.host
        self.host_line = f"Host: {host}:{target.port}\r\n".encode()
        self.triton_prefix = triton_prefix(target.model)

    def available(self) -> bool:
        return self.readiness.available()

    def outstanding(self) -> int:
        return self.pool.outstanding()


class CompiledVariant:
    """A variant with what its responses are stamped with (rollout.stamp), balanced over its
    replicas (rollout.balance)."""

    __slots__ = ("header_line", "name", "stamp", "targets", "variant")

    def __init__(
        self, pipeline: str, variant: Variant, targets: tuple[CompiledTarget, ...]
    ) -> None:
        self.variant = variant
        self.name = variant.name
        self.targets = Balancer(targets)
        self.header_line = f"{VARIANT_HEADER}: {variant.name}\r\n".encode()
        self.stamp = VariantStamp(pipeline, variant.name, variant.version)

    def pick(self) -> CompiledTarget:
        return self.targets.pick()

    def pick_other(self, tried: CompiledTarget) -> CompiledTarget | None:
        return self.targets.pick_other(tried)


class CompiledRoute:
    """A route's strategy, variants by name and by version, and its sticky key sources."""

    __slots__ = (
        "by_version",
        "capture",
        "key",
        "live_upstreams",
        "public",
        "route",
        "sticky_header",
        "sticky_marker",
        "sticky_parameter",
        "strategy",
        "variants",
        "versions",
    )

    def __init__(self, route: Route, pool_for: Callable[[str, int], UpstreamPool]) -> None:
        self.route = route
        self.key = route.key
        self.public = route.pipeline
        self.strategy: Strategy = strategy_for(route)
        self.variants: dict[str, CompiledVariant] = {}
        self.by_version: dict[bytes, CompiledVariant] = {}
        for variant in route.variants:
            targets = tuple(CompiledTarget(t, pool_for(t.host, t.port)) for t in variant.targets)
            compiled = CompiledVariant(route.pipeline, variant, targets)
            self.variants[variant.name] = compiled
            self.by_version[str(variant.version).encode()] = compiled
        self.versions = [str(v.version) for v in route.variants]
        # readiness: the upstreams of each variant that takes traffic (weight > 0)
        self.live_upstreams = tuple(
            frozenset((t.host, t.port) for t in v.targets) for v in route.variants if v.weight > 0
        )
        sticky = route.sticky if self.strategy.needs_key else None
        self.sticky_header = sticky.header.encode() if sticky is not None else b""
        self.sticky_parameter = sticky.parameter if sticky is not None else ""
        # a cheap test before decoding a body for the parameter: its quoted name must be there
        self.sticky_marker = json.dumps(self.sticky_parameter).encode()
        self.capture = sampler(route.capture)

    def decide(self, key: bytes | None) -> Decision:
        return self.strategy.pick(NO_KEY if key is None else RequestContext(key))


class CompiledRouting:
    """A RoutingTable plus its compiled routes; swapped as one attribute, so atomically."""

    __slots__ = ("capture_headers", "deployed", "routes", "table")

    def __init__(
        self, table: RoutingTable | None, pool_for: Callable[[str, int], UpstreamPool]
    ) -> None:
        self.table = table
        self.routes: dict[bytes, CompiledRoute] = {}
        # request headers the proxy keeps aside (not forwarded): the workspace, sticky keys
        capture = {WORKSPACE_HEADER_BYTES}
        if table is not None:
            for key, route in table.routes.items():
                compiled = CompiledRoute(route, pool_for)
                self.routes[key.encode()] = compiled
                if compiled.sticky_header:
                    capture.add(compiled.sticky_header)
        self.capture_headers = frozenset(capture)
        self.deployed = ", ".join(sorted(table.routes)) if table and table.routes else "(none)"

    def resolve(self, name: bytes, workspace: bytes | None) -> CompiledRoute | None:
        return self.routes.get((workspace or DEFAULT_WORKSPACE_BYTES) + b"/" + name)


def parameter_text(value: object) -> bytes | None:
    """A request parameter's text form, the same for HTTP and gRPC (rollout.grpc_wire): the
    JSON spelling of a bool or number, a string as is; None for anything else."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    return None


def sticky_key(
    route: CompiledRoute,
    captured: list[tuple[bytes, bytes]],
    body: list[bytes] | None = None,
    header_length: int | None = None,
) -> bytes | None:
    """The key of a sticky route's request: its header, else its request parameter (read
    from the JSON part of `body`, which is decoded only when the parameter's name is in it)."""
    wanted = route.sticky_header
    for name, value in captured:
        if name == wanted:
            return value
    if not route.sticky_parameter or not body:
        return None
    text = body[0] if len(body) == 1 else b"".join(body)
    if header_length is not None:
        text = text[: max(header_length, 0)]
    if route.sticky_marker not in text:
        return None
    try:
        request = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None  # Triton will say what is wrong with it
    params = request.get("parameters") if isinstance(request, dict) else None
    if not isinstance(params, dict):
        return None
    return parameter_text(params.get(route.sticky_parameter))
