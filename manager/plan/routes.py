"""The gateway's routes, from what is served: pure, shared by the local deploy and exports.

One route per served pipeline. Without an active rollout it is the stable version alone;
during one, the rollout's strategy and weights decide (``rollout.routing`` types only, so a
table the gateway would refuse is refused here first, with the same message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollout.routing import Mirror, Route, RoutingTable, Shadow, Sticky, Target, Variant

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


def route_for(served: ServedPipeline, endpoints: Sequence[Endpoint]) -> Route:
    def variant(version: int, weight: float) -> Variant:
        return Variant(
            name=f"{served.pipeline}/{version}",
            version=version,
            weight=weight,
            targets=tuple(
                Target(url=e.http_url, grpc=e.grpc, model=served.ensembles[version])
                for e in endpoints
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
            max_queue=int(served.params.get("max_queue", 256)),
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
