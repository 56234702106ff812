"""Triton model names back to what users call things: workspace, pipeline, version, step.

Lastmile names every Triton model it loads (manager.names):

    <ws>.<pipeline>.v<N>          a pipeline version's ensemble     -> (ws, pipeline, N, "")
    <ws>.<pipeline>.v<N>.<model>  that version's private step copy  -> (ws, pipeline, N, model)
    <ws>.<model>                  a registered model shared by the pipelines whose steps use
                                  it                      -> (ws, pipeline, None, model) each

A shared step model is one Triton model whatever the number of pipelines (and versions) that
chain it, so its figures are attributed to each pipeline using that model version, with no
pipeline version (they are not one version's own). Names that match nothing in the store (a
pipeline deleted since, a model loaded by hand) are kept, not dropped: under workspace and
pipeline "" with the Triton name as the step, so nothing measured is silently lost and an
operator can still find it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from sqlmodel import Session, col, func, select

from manager import store

_VERSION = re.compile(r"^v([1-9][0-9]{0,9})$")


@dataclass(frozen=True, slots=True)
class Owner:
    workspace: str
    pipeline: str
    version: int | None
    step: str  # "" for the ensemble (the pipeline version itself)


@dataclass
class NameMap:
    """The store's pipelines, enough to name every Triton model Lastmile loads."""

    # workspace -> pipeline names
    pipelines: dict[str, set[str]] = field(default_factory=dict)
    # (workspace, model, model version) -> pipelines whose steps use that model version
    users: dict[tuple[str, str, int], set[str]] = field(default_factory=dict)

    def owners(self, triton_model: str, triton_version: str = "") -> list[Owner]:
        parts = triton_model.split(".")
        workspace = parts[0]
        known = self.pipelines.get(workspace, set())
        if len(parts) in (3, 4) and parts[1] in known and (match := _VERSION.match(parts[2])):
            step = parts[3] if len(parts) == 4 else ""
            return [Owner(workspace, parts[1], int(match.group(1)), step)]
        if len(parts) == 2 and triton_version.isdigit():
            using = self.users.get((workspace, parts[1], int(triton_version)), set())
            if using:
                return [Owner(workspace, p, None, parts[1]) for p in sorted(using)]
        return [Owner("", "", None, triton_model)]


def load(session: Session) -> NameMap:
    rows = session.exec(
        select(store.Workspace.name, store.Pipeline.name, store.PipelineVersion.spec).where(
            store.Pipeline.workspace_id == store.Workspace.id,
            store.PipelineVersion.pipeline_id == store.Pipeline.id,
        )
    ).all()
    pipelines: dict[str, set[str]] = defaultdict(set)
    users: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for workspace, pipeline, spec in rows:
        pipelines[workspace].add(pipeline)
        for step in spec.get("steps", []):
            users[(workspace, str(step["model"]), int(step["version"]))].add(pipeline)
    return NameMap(pipelines=dict(pipelines), users=dict(users))


class NameCache:
    """A NameMap reloaded only when pipeline versions were added or removed (they are
    immutable otherwise), so a scrape every few seconds does not re-read every spec."""

    def __init__(self) -> None:
        self._key: tuple[int, int | None] | None = None
        self._map = NameMap()

    def get(self, session: Session) -> NameMap:
        count, last = session.exec(
            select(func.count(), func.max(col(store.PipelineVersion.id)))
        ).one()
        key = (int(count), last)
        if key != self._key:
            self._map = load(session)
            self._key = key
        return self._map
