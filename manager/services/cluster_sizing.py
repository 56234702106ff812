"""A pipeline's size on a Kubernetes cluster, kept with the pipeline: how many Triton pods serve
it, how many GPUs each has, how many gateway pods front it. ``lastmile export k8s`` renders
these unless told otherwise for one export, so the folder a team applies comes from what the
pipeline says, not from flags someone has to remember."""

from __future__ import annotations

from typing import Any

from manager import store
from manager.errors import InvalidInput
from manager.k8s.export import SIZE_BOUNDS, ExportSettings
from manager.services.context import Platform
from manager.services.lookups import workspace_pipeline

_DEFAULTS = ExportSettings()
# setting -> (default, lowest, highest, what it is): the bounds of an export's sizes
LIMITS: dict[str, tuple[int, int, int, str]] = {
    name: (getattr(_DEFAULTS, name), *SIZE_BOUNDS[name], what)
    for name, what in (
        ("replicas", "Triton pods"),
        ("gpus", "GPUs per Triton pod (gpu overlay)"),
        ("gateway_replicas", "gateway pods (the HPA's minimum)"),
    )
}


def _pipeline(session: Any, workspace: str, name: str) -> store.Pipeline:
    return workspace_pipeline(session, workspace, name)[1]


def _checked(name: str, value: object) -> int:
    default, low, high, what = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"{name} ({what}) must be a whole number from {low} to {high}, got {value!r}",
            hint=f"e.g. {name}={default}",
        )
    return value


def describe(stored: dict[str, Any]) -> dict[str, Any]:
    """Every setting: the pipeline's own, else the default; and which ones it sets."""
    return {
        **{name: stored.get(name, limits[0]) for name, limits in LIMITS.items()},
        "set": sorted(name for name in LIMITS if name in stored),
    }


def get(platform: Platform, *, workspace: str, pipeline: str) -> dict[str, Any]:
    with platform.session() as session:
        return {"pipeline": pipeline, **describe(_pipeline(session, workspace, pipeline).cluster)}


def update(
    platform: Platform, *, workspace: str, pipeline: str, changes: dict[str, int | None]
) -> dict[str, Any]:
    """Set the given settings (None: back to the default); unknown or out-of-range ones are
    refused and nothing changes."""
    unknown = sorted(set(changes) - set(LIMITS))
    if unknown:
        raise InvalidInput(
            f"unknown cluster setting(s): {', '.join(unknown)}",
            hint=f"settings: {', '.join(LIMITS)}",
        )
    checked = {k: None if v is None else _checked(k, v) for k, v in changes.items()}
    with platform.session() as session:
        pipe = _pipeline(session, workspace, pipeline)
        cluster = dict(pipe.cluster)
        for name, value in checked.items():
            if value is None:
                cluster.pop(name, None)
            else:
                cluster[name] = value
        pipe.cluster = cluster
        session.add(pipe)
        session.commit()
        return {"pipeline": pipeline, **describe(cluster)}


def sizes(platform: Platform, *, workspace: str, pipeline: str) -> dict[str, int]:
    """What an export renders when not told otherwise."""
    found = get(platform, workspace=workspace, pipeline=pipeline)
    return {name: int(found[name]) for name in LIMITS}
