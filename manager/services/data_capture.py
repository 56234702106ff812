"""Data capture as a user sets and reads it: a pipeline's capture rate (pushed to the
gateway's routes) and the per-window summaries the summariser stored."""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

from manager import store
from manager.assays.sketch import Summary, merge_all
from manager.errors import InvalidInput, StorageFull
from manager.services import serving
from manager.services.context import Platform
from manager.services.lookups import workspace_pipeline
from rollout.capture import MAGIC, SEGMENT_NAME_RE, closed_segments


def _pipeline(session: Any, workspace: str, name: str) -> store.Pipeline:
    return workspace_pipeline(session, workspace, name)[1]


def set_rate(platform: Platform, *, workspace: str, pipeline: str, rate: float) -> dict[str, Any]:
    """Sample `rate` of the pipeline's inference calls (0 stops capture); the gateway has the
    new rate when this returns (or the change is rolled back)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise InvalidInput(f"capture rate must be a number, got {rate!r}", hint="e.g. 0.05")
    if not 0 <= rate <= 1:
        raise InvalidInput(
            f"capture rate must be between 0 and 1, got {rate:g}",
            hint="a fraction of calls: 0.01 samples one call in 100, 1 every call, 0 none",
        )
    with platform.session() as session:
        pipe = _pipeline(session, workspace, pipeline)
        pipe.capture_rate = float(rate)
        session.add(pipe)
        session.flush()
        generation = serving.push_routes(platform, session)
        session.commit()
    return {"pipeline": pipeline, "rate": float(rate), "generation": generation}


def _figures(summary: Summary) -> dict[str, Any]:
    return {
        "count": summary.count,
        "missing": summary.missing,
        "min": summary.min,
        "max": summary.max,
        "mean": summary.mean,
    }


def view(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    since: datetime | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """The rate, and per (version, side, tensor) the figures of every captured window since
    `since` with the period's totals."""
    with platform.session() as session:
        pipe = _pipeline(session, workspace, pipeline)
        rows = store.list_capture_summaries(
            session, workspace=workspace, pipeline=pipeline, version=version, since=since
        )
        rate = pipe.capture_rate
    tensors: dict[tuple[int, str, str], list[store.CaptureSummary]] = {}
    for row in rows:
        tensors.setdefault((row.version, row.side, row.tensor), []).append(row)
    out = []
    for (ver, side, tensor), windows in sorted(tensors.items()):
        pooled = [Summary.from_json(w.pooled) for w in windows]
        out.append(
            {
                "version": ver,
                "side": side,
                "tensor": tensor,
                "rows": sum(w.rows for w in windows),
                "elements": len(windows[-1].elements),
                **_figures(merge_all(pooled)),
                "windows": [
                    {"start": w.window_start, "width_s": w.width_s, "rows": w.rows, **_figures(p)}
                    for w, p in zip(windows, pooled, strict=True)
                ],
            }
        )
    return {"pipeline": pipeline, "rate": rate, "tensors": out}


MAX_SEGMENT_BYTES = 64 << 20  # a spool closes segments every 2 s and holds at most 32 MiB


def receive_segment(platform: Platform, *, name: str, body: bytes) -> bool:
    """Put a capture segment a gateway sent (rollout.capture_ship) into this system's capture
    folder, where the summariser reads it; False when it was there already (a resend after a
    lost answer). Written whole under a temporary name, then renamed: the summariser never
    sees part of one."""
    if not SEGMENT_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"{name!r} is not a capture segment name",
            hint="send the name the gateway's spool gave it (Lastmile-Segment header)",
        )
    if body and not body.startswith(MAGIC):
        raise InvalidInput(f"{name} is not a capture segment (it does not start with {MAGIC!r})")
    folder = platform.settings.capture_dir
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    if final.exists():
        return False
    used = sum(p.stat().st_size for p in closed_segments(folder) if p.exists())
    if used + len(body) > platform.settings.capture_max_bytes:
        raise StorageFull(
            f"the capture folder holds {used} bytes; {name} would pass "
            f"LASTMILE_CAPTURE_MAX_BYTES ({platform.settings.capture_max_bytes})",
            hint="the summariser empties it as it reads; the gateway sends it again later",
        )
    part = final.with_name(name + ".incoming")
    part.write_bytes(body)
    os.replace(part, final)
    return True
