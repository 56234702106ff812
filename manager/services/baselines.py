"""Baselines: the reference distributions drift assays compare captured traffic against.

A baseline holds, per ``<side>/<tensor>``, the same mergeable summaries (manager.assays.sketch)
that the capture summariser stores per window, so an assay bins both alike. Three sources:

* import: a model imported with sample rows gets ``<model>-v<version>``
  (manager.services.import_baselines). No further setup: ``default_for`` finds it for a
  pipeline whose step runs that model.
* capture: a time range of a pipeline's captured windows, merged per side and tensor.
* file: ``.npy`` (one tensor), ``.npz`` (one tensor per array), ``.csv`` / ``.parquet`` (the
  columns are the elements of one tensor), read without unpickling, within the upload limit.

Rows are the first dimension: a 1-D array is one value per row (capture sees a request's
tensor whole, so there the batch dimension is the first too).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from manager import store
from manager.assays.sketch import Summary, merge_all
from manager.domain import PIPELINE_INPUTS, PipelineSpec
from manager.errors import Conflict, InvalidInput, PayloadTooLarge
from manager.names import check_name, check_tensor_name
from manager.services.capture import SIDES, rows_of, summaries_of
from manager.services.context import Platform
from manager.services.lookups import as_utc

log = logging.getLogger(__name__)

FILE_FORMATS = (".npy", ".npz", ".csv", ".parquet")
MAX_NPZ_ARRAYS = 256


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise InvalidInput(
            f"side must be 'inputs' or 'outputs', not {side!r}",
            hint="inputs: what the pipeline is sent; outputs: what it answers",
        )
    return side


def _rows(array: np.ndarray) -> np.ndarray | None:
    """(rows, values per row) floats; None for strings and bytes (not numeric)."""
    a = np.asarray(array)
    if a.ndim == 1 and a.dtype != object and a.dtype.kind not in "SU":
        return a.astype(np.float64).reshape(-1, 1)
    return rows_of(a)


def summaries_from_arrays(arrays: Mapping[str, np.ndarray], side: str) -> dict[str, Any]:
    """The ``tensors`` JSON of a Baseline: ``"<side>/<name>" -> {"rows", "pooled",
    "elements"}``, in the form capture summaries use (per-element summaries only for tensors
    of at most ``capture.MAX_ELEMENTS`` values per row). Non-numeric tensors are left out."""
    _check_side(side)
    out: dict[str, Any] = {}
    for name, array in arrays.items():
        check_tensor_name(name, where=f"the {side}")
        rows = _rows(array)
        if rows is None or rows.shape[0] == 0:
            continue
        count, pooled, elements = summaries_of([rows])
        out[f"{side}/{name}"] = {
            "rows": count,
            "pooled": pooled.to_json(),
            "elements": [e.to_json() for e in elements],
        }
    return out


# -- describing --------------------------------------------------------------------------------


def _num(x: float | None) -> float | str | None:
    """JSON has no infinities or NaN: those are shown as 'inf', '-inf', 'nan'."""
    if x is None or math.isfinite(x):
        return x
    return repr(float(x))


def describe(baseline: store.Baseline) -> dict[str, Any]:
    """What a person or a script wants to see of a baseline, with figures per tensor."""
    tensors = []
    for key, entry in sorted(baseline.tensors.items()):
        side, _, tensor = key.partition("/")
        pooled = Summary.from_json(entry["pooled"])
        tensors.append(
            {
                "side": side,
                "tensor": tensor,
                "rows": entry["rows"],
                "elements": len(entry["elements"]),
                "count": pooled.count,
                "missing": pooled.missing,
                "min": _num(pooled.min),
                "max": _num(pooled.max),
                "mean": _num(pooled.mean),
            }
        )
    return {
        "name": baseline.name,
        "source": baseline.source,
        "model": baseline.model or None,
        "version": baseline.model_version,
        "details": baseline.details,
        "created_by": baseline.created_by,
        "created": baseline.created_at.isoformat(),
        "tensors": tensors,
    }


# -- at import ---------------------------------------------------------------------------------


# -- from captured traffic ---------------------------------------------------------------------


def _merged(rows: list[store.CaptureSummary]) -> dict[str, Any]:
    pooled = merge_all(Summary.from_json(r.pooled) for r in rows)
    widths = {len(r.elements) for r in rows}
    elements: list[Summary] = []
    if len(widths) == 1 and next(iter(widths)) > 0:  # same elements in every window
        per_row = [[Summary.from_json(e) for e in r.elements] for r in rows]
        elements = [merge_all(column) for column in zip(*per_row, strict=True)]
    return {
        "rows": sum(r.rows for r in rows),
        "pooled": pooled.to_json(),
        "elements": [e.to_json() for e in elements],
    }


def _new_baseline(session: Session, workspace: str, name: str) -> store.Workspace:
    check_name(name, kind="baseline")
    ws = store.get_workspace(session, name=workspace)
    if store.find_baseline(session, workspace=ws, name=name) is not None:
        raise Conflict(
            f"a baseline named {name!r} already exists in workspace {workspace!r}",
            hint="choose another name, or delete that baseline first (lastmile baseline delete)",
        )
    return ws


def from_capture(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    pipeline: str,
    since: datetime,
    until: datetime,
    version: int | None = None,
    principal: str = "",
) -> dict[str, Any]:
    """A baseline of what a pipeline (one version, or all) saw and answered in the captured
    windows starting in [since, until)."""
    check_name(pipeline, kind="pipeline")
    since, until = as_utc(since), as_utc(until)
    if since >= until:
        raise InvalidInput(
            f"the range is empty: since {since.isoformat()} is not before until "
            f"{until.isoformat()}",
            hint="give an earlier --since or a later --until",
        )
    with platform.session() as session:
        ws = _new_baseline(session, workspace, name)
        store.get_pipeline(session, workspace=ws, name=pipeline)
        rows = store.list_capture_summaries(
            session,
            workspace=workspace,
            pipeline=pipeline,
            version=version,
            since=since,
            until=until,
        )
        if not rows:
            which = f"version {version} of " if version is not None else ""
            raise InvalidInput(
                f"no captured traffic of {which}pipeline {pipeline!r} between "
                f"{since.isoformat()} and {until.isoformat()}",
                hint=f"lastmile capture show {pipeline} --since 7d lists the captured windows; "
                f"start capture with lastmile capture set {pipeline} --rate 0.05",
            )
        groups: dict[str, list[store.CaptureSummary]] = {}
        for row in rows:
            groups.setdefault(f"{row.side}/{row.tensor}", []).append(row)
        baseline = store.add_baseline(
            session,
            store.Baseline(
                workspace_id=ws.id,  # type: ignore[arg-type]
                name=name,
                source="capture",
                details={
                    "pipeline": pipeline,
                    "version": version,
                    "since": since.isoformat(),
                    "until": until.isoformat(),
                    "windows": len({(r.version, r.window_start) for r in rows}),
                },
                tensors={key: _merged(group) for key, group in sorted(groups.items())},
                created_by=principal,
            ),
        )
        session.commit()
        return describe(baseline)


# -- from a file -------------------------------------------------------------------------------


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _csv_header(path: Path) -> list[str] | None:
    """The column names of a CSV whose first row is a header (no numbers in it)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for row in csv.reader(handle):
                if row and any(cell.strip() for cell in row):
                    if not any(_is_number(cell) for cell in row):
                        return [cell.strip() for cell in row]
                    return None
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _parquet_columns(path: Path) -> list[str] | None:
    try:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception:  # the data is read (and refused with a reason) by load_sample
        return None


def _read_file(
    path: Path, filename: str, suffix: str, limit: int
) -> dict[str, np.ndarray] | np.ndarray:
    from manager.model_files import load_sample, sample_from_npz_bytes

    try:
        if suffix == ".npz":
            return sample_from_npz_bytes(
                path.read_bytes(), max_bytes=limit, max_arrays=MAX_NPZ_ARRAYS
            )
        return load_sample(path, dtype=np.float64)
    except InvalidInput as exc:  # say the user's file name, never a server path
        message = exc.message.replace(f"sample {path}", f"baseline file {filename}")
        message = message.replace(str(path), filename).replace("the sample", filename)
        raise type(exc)(message, hint=exc.hint) from exc


def from_file(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    path: Path,
    filename: str | None = None,
    tensor: str | None = None,
    side: str = "inputs",
    principal: str = "",
) -> dict[str, Any]:
    """A baseline from a file of rows: ``.npy`` (one tensor, ``tensor`` names it), ``.npz``
    (one tensor per array; ``tensor`` keeps only that one), ``.csv`` / ``.parquet`` (numeric
    columns: the elements of the tensor ``tensor``). Refused over ``max_upload_bytes``."""
    check_name(name, kind="baseline")
    _check_side(side)
    filename = filename or path.name
    suffix = Path(filename).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise InvalidInput(
            f"baseline file {filename}: unknown format {suffix or '(no extension)'}; "
            f"known: {', '.join(FILE_FORMATS)}",
            hint="save the rows with np.save / np.savez, or as numeric .csv / .parquet",
        )
    if tensor is not None:
        check_tensor_name(tensor, where="--tensor")
    elif suffix != ".npz":
        raise InvalidInput(
            f"baseline file {filename}: a {suffix} file holds one tensor; say which",
            hint="pass --tensor NAME: the pipeline's input (or output, with --side outputs)",
        )
    limit = platform.settings.max_upload_bytes
    size = path.stat().st_size
    if size > limit:
        raise PayloadTooLarge(
            f"baseline file {filename} is {size} bytes, over the limit of {limit} bytes",
            hint="summarise fewer rows, or raise LASTMILE_MAX_UPLOAD_BYTES on the server",
        )
    with platform.session() as session:  # a taken name is refused before the file is read
        _new_baseline(session, workspace, name)
    data = _read_file(path, filename, suffix, limit)
    details: dict[str, Any] = {"file": filename, "format": suffix[1:]}
    if isinstance(data, np.ndarray):
        arrays = {tensor or "sample": data}
    elif tensor is not None:
        if tensor not in data:
            raise InvalidInput(
                f"baseline file {filename} has no array {tensor!r}; it holds {sorted(data)}",
                hint="pass one of those names as --tensor, or none to keep every array",
            )
        arrays = {tensor: data[tensor]}
    else:
        arrays = data
    columns = {".csv": _csv_header, ".parquet": _parquet_columns}.get(suffix)
    if columns is not None and (names := columns(path)):
        details["columns"] = names
    tensors = summaries_from_arrays(arrays, side)
    if not tensors:
        raise InvalidInput(
            f"baseline file {filename} holds no numeric data", hint="baselines summarise numbers"
        )
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        baseline = store.add_baseline(
            session,
            store.Baseline(
                workspace_id=ws.id,  # type: ignore[arg-type]
                name=name,
                source="file",
                details=details,
                tensors=tensors,
                created_by=principal,
            ),
        )
        session.commit()
        return describe(baseline)


# -- reading, deleting and the default ---------------------------------------------------------


def list_baselines(
    platform: Platform, *, workspace: str, model: str | None = None
) -> list[dict[str, Any]]:
    if model is not None:
        check_name(model, kind="model")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        return [describe(b) for b in store.list_baselines(session, workspace=ws, model=model)]


def get_baseline(platform: Platform, *, workspace: str, name: str) -> dict[str, Any]:
    check_name(name, kind="baseline")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        return describe(store.get_baseline(session, workspace=ws, name=name))


def delete_baseline(platform: Platform, *, workspace: str, name: str) -> None:
    """Delete a baseline no assay compares against."""
    check_name(name, kind="baseline")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        baseline = store.get_baseline(session, workspace=ws, name=name)
        users = store.assays_using_baseline(session, baseline)
        if users:
            raise Conflict(
                f"baseline {name!r} is used by assay(s) " + ", ".join(users),
                hint="delete those assays first (their results go with them)",
            )
        store.delete_baseline(session, baseline)
        session.commit()
    log.info("deleted baseline %s/%s", workspace, name)


def _step_tensors(spec: PipelineSpec, side: str, tensor: str) -> list[tuple[str, int, str]]:
    """(model, version, the model's tensor name) of the steps that see the pipeline's
    ``tensor``: the steps fed the pipeline input, or the step that produces the output."""
    if side == "inputs":
        return [
            (step.model, step.version, model_input)
            for step in spec.steps
            for model_input, ref in step.inputs.items()
            if ref.step == PIPELINE_INPUTS and ref.tensor == tensor
        ]
    ref = spec.outputs.get(tensor)
    step = spec.step(ref.step) if ref is not None else None
    return [(step.model, step.version, ref.tensor)] if step and ref else []


def default_for(
    session: Session,
    workspace: store.Workspace,
    pipeline: store.Pipeline,
    side: str,
    tensor: str,
) -> store.Baseline | None:
    """The baseline an assay of ``pipeline``'s ``side``/``tensor`` uses when none is named:
    the import baseline of a step's model (the step's version first, else the model's newest)
    in the deployed version (else the latest), where the model's tensor has the pipeline's
    name (so the baseline holds ``<side>/<tensor>``). None when there is none."""
    _check_side(side)
    deployment = store.get_deployment(session, pipeline=pipeline)
    pv = None
    if deployment is not None and deployment.state == "live":
        pv = session.get(store.PipelineVersion, deployment.pipeline_version_id)
    if pv is None:
        pv = store.get_pipeline_version(session, pipeline=pipeline)
    key = f"{side}/{tensor}"
    for model, version, model_tensor in _step_tensors(
        PipelineSpec.from_dict(pv.spec), side, tensor
    ):
        if model_tensor != tensor:
            continue
        for wanted in (version, None):
            found = store.latest_import_baseline(
                session, workspace=workspace, model=model, version=wanted
            )
            if found is not None and key in found.tensors:
                return found
    return None
