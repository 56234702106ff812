"""The gateway's routes, from what is served: pure, shared by the local deploy and exports.

One route per served pipeline. Without an active rollout it is the stable version alone;
during one, the rollout's strategy and weights decide (``rollout.routing`` types only, so a
table the gateway would refuse is refused here first, with the same message).

Every variant targets every server of the pool, unless the rollout gives its candidates
servers of their own (``candidate_servers`` K, see ``placement``): then the candidates'
traffic (their share, or a shadow's copies) goes to the last K servers up and the stable
version's to the others, so a candidate's load never runs on the cores or GPU that answer the
stable version's clients. Candidates stay loaded on every server, so a promotion or a
rollback moves traffic only, never a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout.routing import (
    SHADOW_MAX_QUEUE,
    Mirror,
    Route,
    RoutingTable,
    Shadow,
    Sticky,
    Target,
    Variant,
)

# rollout strategy (the store's word) -> the gateway's strategy
GATEWAY_STRATEGY = {
    "hot-swap": "weighted",
    "canary": "weighted",
    "blue-green": "weighted",
    "ab": "sticky",
    "shadow": "shadow",
}


@dataclass(frozen=True)
class Endpoint:
    """Where one Triton serves: its HTTP URL and gRPC address."""

    http_url: str
    grpc: str = ""


@dataclass(frozen=True)
class ServedPipeline:
    """A pipeline as the store says it is served: its stable version and, during a rollout,
    the candidates with the rollout's strategy, weights (version -> %) and parameters."""

    workspace: str
    pipeline: str
    stable: int
    ensembles: Mapping[int, str]  # version -> Triton ensemble, for every version served
    strategy: str | None = None  # None: no active rollout
    weights: Mapping[int, float] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    capture: float = 0.0  # fraction of calls sampled for data capture


@dataclass(frozen=True)
class Placement:
    """Which servers of the pool take the stable version's traffic and which the
    candidates'; ``isolated`` False when they share every server (no ``candidate_servers``,
    or too few servers up to give the candidates their own)."""

    stable: tuple[Endpoint, ...]
    candidates: tuple[Endpoint, ...]
    isolated: bool


def placement(params: Mapping[str, Any], endpoints: Sequence[Endpoint]) -> Placement:
    """A rollout's placement over the servers up: with ``candidate_servers`` K and more than
    K servers, the last K are the candidates' and the rest the stable version's."""
    own = int(params.get("candidate_servers") or 0)
    every = tuple(endpoints)
    if own <= 0 or len(every) <= own:
        return Placement(stable=every, candidates=every, isolated=False)
    return Placement(stable=every[:-own], candidates=every[-own:], isolated=True)


def route_for(served: ServedPipeline, endpoints: Sequence[Endpoint]) -> Route:
    where = placement(served.params, endpoints) if served.strategy else None

    def variant(version: int, weight: float) -> Variant:
        servers = endpoints
        if where is not None:
            servers = where.stable if version == served.stable else where.candidates
        return Variant(
            name=f"{served.pipeline}/{version}",
            version=version,
            weight=weight,
            targets=tuple(
                Target(url=e.http_url, grpc=e.grpc, model=served.ensembles[version])
                for e in servers
            ),
        )

    if served.strategy is None:
        return Route(
            workspace=served.workspace,
            pipeline=served.pipeline,
            variants=(variant(served.stable, 100.0),),
            capture=served.capture,
        )
    versions = sorted(served.ensembles)
    weights = {v: float(served.weights.get(v, 0.0)) for v in versions}
    if not any(weights.values()):
        weights[served.stable] = 100.0
    kind = GATEWAY_STRATEGY[served.strategy]
    sticky = shadow = None
    if kind == "sticky":
        sticky = Sticky(
            header=str(served.params.get("sticky_header", "lastmile-key")),
            parameter=str(served.params.get("sticky_parameter", "")),
        )
    elif kind == "shadow":
        sample = float(served.params.get("sample", 1.0))
        shadow = Shadow(
            mirrors=tuple(
                Mirror(variant=f"{served.pipeline}/{v}", sample=sample)
                for v in versions
                if v != served.stable
            ),
            timeout_s=float(served.params.get("timeout_s", 5.0)),
            max_queue=int(served.params.get("max_queue", SHADOW_MAX_QUEUE)),
            tolerance=float(served.params.get("tolerance", 1e-5)),
        )
    return Route(
        workspace=served.workspace,
        pipeline=served.pipeline,
        variants=tuple(variant(v, weights[v]) for v in versions),
        strategy=kind,  # type: ignore[arg-type]
        sticky=sticky,
        shadow=shadow,
        capture=served.capture,
    )


def routing_table(
    generation: int, served: Sequence[ServedPipeline], endpoints: Sequence[Endpoint]
) -> RoutingTable:
    return RoutingTable.build(generation, [route_for(s, endpoints) for s in served])
