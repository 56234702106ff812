"""What is served, and the gateway's routes to it.

A pipeline is served by its live deployment's version (the *stable* variant) and, while a
rollout is active, by the rollout's candidates too: their ensembles and the model versions they
use stay loaded, the reconciler restores them, and the routing table gives them the rollout's
weights. Every caller that asks "what must Triton serve" (deploy, retire, undeploy, reconcile,
the watchdog) asks ``served_specs``.

Routing tables carry a generation taken from the store (``store.next_generation``), in the
same transaction as the change they publish: the caller commits only once the gateway has
confirmed the table, so nothing is reported live that the gateway does not route.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from sqlmodel import col, select

from manager import store
from manager.domain import PipelineSpec
from manager.errors import GatewayError
from manager.names import copy_prefix, step_model_name, triton_ensemble_name
from manager.plan.routes import Endpoint, ServedPipeline, routing_table
from manager.services.context import Platform
from rollout.routing import RoutingTable

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 5


@dataclass(frozen=True)
class Served:
    """One pipeline version Triton must serve (read like a ``Deployment``: ``pipeline_id``,
    ``ensemble``, ``triton_models``)."""

    pipeline_id: int
    workspace_id: int
    version: int
    ensemble: str
    triton_models: list[str]
    role: str  # stable | candidate
    # its steps' private copies' prefix (names.copy_prefix), None for the shared models
    prefix: str | None = None


def served_specs(
    session: Any, *, workspace_id: int | None = None, exclude_pipeline_id: int | None = None
) -> list[tuple[Served, PipelineSpec]]:
    """Every served pipeline version (of one workspace, or all) with its spec."""
    served, _rows = _served(
        session, workspace_id=workspace_id, exclude_pipeline_id=exclude_pipeline_id, specs=True
    )
    return [(one, spec) for one, spec in served if spec is not None]


@dataclass(frozen=True)
class _Rows:
    """What the served pipelines need from the store, read in a few batched queries instead
    of several per pipeline (bench_scale measures a table of 1,000 pipelines), by id; the
    active rollouts by pipeline id."""

    pipelines: dict[int, store.Pipeline]
    versions: dict[int, store.PipelineVersion]
    workspaces: dict[int, store.Workspace]
    rollouts: dict[int, store.Rollout]

    @classmethod
    def read(cls, session: Any, deployments: list[store.Deployment]) -> _Rows:
        pipelines = _by_id(session, store.Pipeline, {d.pipeline_id for d in deployments})
        return cls(
            pipelines=pipelines,
            versions=_by_id(
                session, store.PipelineVersion, {d.pipeline_version_id for d in deployments}
            ),
            workspaces=_by_id(
                session, store.Workspace, {p.workspace_id for p in pipelines.values()}
            ),
            rollouts={int(r.active_pipeline_id or 0): r for r in store.active_rollouts(session)},
        )


def _by_id(session: Any, entity: Any, ids: set[int]) -> dict[int, Any]:
    """Rows of ``entity`` by id, in chunks short enough for any database's limit on bound
    parameters."""
    ordered = sorted(ids)
    rows: dict[int, Any] = {}
    for i in range(0, len(ordered), 500):
        query = select(entity).where(col(entity.id).in_(ordered[i : i + 500]))
        rows.update((row.id, row) for row in session.exec(query).all())
    return rows


def _served(
    session: Any,
    *,
    workspace_id: int | None = None,
    exclude_pipeline_id: int | None = None,
    specs: bool,
) -> tuple[list[tuple[Served, PipelineSpec | None]], _Rows]:
    """``served_specs``, and the rows it read; ``specs`` False: the stable versions' specs
    are not parsed (the routing table needs none)."""
    deployments = [
        d
        for d in store.list_deployments(session)
        if d.state == "live" and d.pipeline_id != exclude_pipeline_id
    ]
    rows = _Rows.read(session, deployments)
    out: list[tuple[Served, PipelineSpec | None]] = []
    for dep in deployments:
        pipe = rows.pipelines[dep.pipeline_id]
        if workspace_id is not None and pipe.workspace_id != workspace_id:
            continue
        pv = rows.versions[dep.pipeline_version_id]
        ws = rows.workspaces[pipe.workspace_id]
        out.append(
            (
                Served(
                    pipeline_id=dep.pipeline_id,
                    workspace_id=pipe.workspace_id,
                    version=pv.version,
                    ensemble=dep.ensemble,
                    triton_models=list(dep.triton_models),
                    role="stable",
                    prefix=copy_prefix(ws.name, pipe.name, pv.version) if dep.isolated else None,
                ),
                PipelineSpec.from_dict(pv.spec) if specs else None,
            )
        )
        rollout = rows.rollouts.get(dep.pipeline_id)
        if rollout is None:
            continue
        for version in rollout.candidates:
            if version == pv.version:
                continue
            cpv = store.get_pipeline_version(session, pipeline=pipe, version=version)
            spec = PipelineSpec.from_dict(cpv.spec)
            prefix = (
                copy_prefix(ws.name, pipe.name, version)
                if rollout.strategy == "blue-green"
                else None
            )
            out.append(
                (
                    Served(
                        pipeline_id=dep.pipeline_id,
                        workspace_id=pipe.workspace_id,
                        version=version,
                        ensemble=triton_ensemble_name(ws.name, pipe.name, version),
                        triton_models=sorted(
                            {step_model_name(ws.name, s.model, prefix) for s in spec.steps}
                        ),
                        role="candidate",
                        prefix=prefix,
                    ),
                    spec,
                )
            )
    return out, rows


def served_pipelines(session: Any) -> list[ServedPipeline]:
    """The routing plan's input: each live pipeline, its versions and its active rollout."""
    by_pipeline: dict[int, dict[int, str]] = {}
    stable: dict[int, int] = {}
    served_list, rows = _served(session, specs=False)
    for served, _spec in served_list:
        by_pipeline.setdefault(served.pipeline_id, {})[served.version] = served.ensemble
        if served.role == "stable":
            stable[served.pipeline_id] = served.version
    out = []
    for pipeline_id, ensembles in by_pipeline.items():
        pipe = rows.pipelines[pipeline_id]
        ws = rows.workspaces[pipe.workspace_id]
        rollout = rows.rollouts.get(pipeline_id)
        strategy = weights = params = None
        if rollout is not None and rollout.state in ("running", "paused"):
            strategy = rollout.strategy
            weights = {int(v): float(w) for v, w in rollout.weights.items()}
            params = rollout.params
        else:  # a pending rollout's candidates are loaded but get no traffic yet
            ensembles = {stable[pipeline_id]: ensembles[stable[pipeline_id]]}
        out.append(
            ServedPipeline(
                workspace=ws.name,
                pipeline=pipe.name,
                stable=stable[pipeline_id],
                ensembles=ensembles,
                strategy=strategy,
                weights=weights or {},
                params=params or {},
                capture=pipe.capture_rate,
            )
        )
    return sorted(out, key=lambda s: (s.workspace, s.pipeline))


def endpoints(platform: Platform) -> list[Endpoint]:
    """The replicas of the Triton pool that are up: each variant's targets, balanced by the
    gateway (a server that joins or leaves the pool changes the table)."""
    assert platform.triton is not None
    return [
        Endpoint(http_url=r.endpoints.http_url, grpc=r.endpoints.grpc_url)
        for r in platform.triton.serving_replicas()
    ]


def build_table(platform: Platform, session: Any, generation: int = 0) -> RoutingTable:
    """The table the store describes (generation 0 unless given: for comparisons)."""
    return routing_table(generation, served_pipelines(session), endpoints(platform))


class PulledTable:
    """The table served to pulling gateways, built at most once per ``max_age_s``: every
    gateway polls, and building reads the whole store (about 7 statements a pipeline), so
    one build answers every poll of that window; polls during a build wait for it."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self.builds = 0
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes, str] | None = None

    def get(self, platform: Platform) -> tuple[bytes, str]:
        """(table JSON, ETag)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.max_age_s:
                table = current_table(platform)
                body = table.to_json()
                digest = hashlib.sha256(body).hexdigest()[:16]
                self._cached = (time.monotonic(), body, f'"{table.generation}-{digest}"')
                self.builds += 1
            return self._cached[1], self._cached[2]


def current_table(platform: Platform) -> RoutingTable:
    """The table the store describes, stamped with the generation last given out: what
    gateways that pull (``--routes-url``) install."""
    with platform.session() as session:
        row = session.get(store.RoutingGeneration, 1)
        return build_table(platform, session, row.generation if row is not None else 0)


def push_routes(platform: Platform, session: Any | None = None) -> int | None:
    """Send the store's routing table to the gateway; the generation it confirmed.

    With ``session`` the table includes that session's uncommitted changes and its generation
    is taken in the same transaction: the caller commits once this returns, and rolls back
    when it raises. Failed attempts (the gateway restarting) are retried a few times."""
    if not platform.gateway_admin_url:
        return None
    if session is None:
        with platform.session() as own:
            generation = push_routes(platform, own)
            own.commit()
            return generation
    table = build_table(platform, session, store.next_generation(session))
    url = f"{platform.gateway_admin_url}/routes"
    headers = platform.gateway_admin_headers()
    last = ""
    for attempt in range(PUSH_ATTEMPTS):
        try:
            response = httpx.put(url, content=table.to_json(), headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return table.generation
            if response.status_code == 409:  # the gateway holds a newer generation
                table = _after_gateway(platform, session, table)
                continue
            if response.status_code < 500:
                raise GatewayError(f"the gateway refused the routing table: {response.text}")
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(min(0.1 * 2**attempt, 1.0))
    raise GatewayError(
        f"the gateway did not take the routing table after {PUSH_ATTEMPTS} attempts: {last}",
        hint="lastmile status shows whether the gateway runs; lastmile reconcile pushes again",
    )


def _after_gateway(platform: Platform, session: Any, table: RoutingTable) -> RoutingTable:
    """The gateway kept a table from an earlier store (its routes file): move the store's
    counter past the gateway's generation."""
    response = httpx.get(
        f"{platform.gateway_admin_url}/routes", headers=platform.gateway_admin_headers(), timeout=10
    )
    current = response.json().get("generation") if response.status_code == 200 else None
    if not isinstance(current, int):
        raise GatewayError("the gateway refused the routing table as stale but shows none")
    row = session.get(store.RoutingGeneration, 1)
    row.generation = max(row.generation, current)
    session.add(row)
    session.flush()
    log.info("routing generation moved past the gateway's %d", current)
    return RoutingTable.build(store.next_generation(session), list(table.routes.values()))
