"""The baseline an import stores: a model imported with sample rows gets ``<model>-v<N>``,
made in the import's own transaction, with the sample's inputs summarised and (when
onnxruntime runs the registered ONNX on the sample here) its outputs. A sample that does not
fit a plain ONNX model is refused with the import; failing to compute the outputs only leaves
them out (logged, and said in ``details["outputs_error"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from manager import store
from manager.domain import NUMPY_DTYPES, Signature
from manager.errors import InvalidInput
from manager.services.baselines import summaries_from_arrays

log = logging.getLogger(__name__)

OUTPUT_CHUNK_ROWS = 1024  # rows per onnxruntime call when computing an import's outputs


@dataclass
class ImportBaseline:
    """The summaries of an import's sample, computed before the version is stored."""

    tensors: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


def sample_arrays(
    sample: Mapping[str, np.ndarray] | np.ndarray, signature: Signature
) -> dict[str, np.ndarray]:
    """The sample as the model's inputs: a bare array is the model's one input, a dict must
    name exactly the inputs, and each array's known dimensions after the first must match."""
    names = [t.name for t in signature.inputs]
    if isinstance(sample, np.ndarray):
        if len(names) != 1:
            raise InvalidInput(
                f"the sample is one array, the model has {len(names)} inputs {names}",
                hint="save one array per input: np.savez(path, **{name: array})",
            )
        arrays = {names[0]: sample}
    else:
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        missing = [n for n in names if n not in arrays]
        extra = [n for n in arrays if n not in names]
        if missing or extra:
            raise InvalidInput(
                f"the sample holds the arrays {list(arrays)}, the model's inputs are {names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not inputs {extra}" if extra else ""),
                hint="name the arrays after the inputs: np.savez(path, **{name: array})",
            )
    for spec in signature.inputs:
        array = arrays[spec.name]
        if array.ndim == 0 or array.shape[0] == 0:
            raise InvalidInput(
                f"the sample's {spec.name!r} has shape {array.shape}",
                hint="give a batch: the first dimension is the rows and must not be empty",
            )
        if not signature.batched:
            continue
        fits = array.ndim == len(spec.shape) and all(
            want in (-1, got) for want, got in zip(spec.shape[1:], array.shape[1:], strict=True)
        )
        if not fits:
            raise InvalidInput(
                f"the sample's {spec.name!r} has shape {list(array.shape)}, the model takes "
                f"{list(spec.shape)} (-1: any)",
                hint="give rows of the model's input: one row per item, the other "
                "dimensions as the model declares them",
            )
    return {spec.name: arrays[spec.name] for spec in signature.inputs}


def model_outputs(
    path: Path, arrays: Mapping[str, np.ndarray], signature: Signature
) -> dict[str, np.ndarray]:
    """Run the ONNX file with onnxruntime on CPU over the sample (in chunks of rows when the
    model is batched) and name its outputs."""
    import onnxruntime as ort

    feed: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        dtype = NUMPY_DTYPES.get(spec.datatype)
        if dtype is None:
            raise InvalidInput(f"input {spec.name!r} is {spec.datatype}, not a numeric tensor")
        feed[spec.name] = np.asarray(arrays[spec.name]).astype(dtype, copy=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    n_rows = min(a.shape[0] for a in feed.values())
    step = OUTPUT_CHUNK_ROWS if signature.batched else n_rows
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_rows, step):
        chunk = {k: v[start : start + step] for k, v in feed.items()}
        for name, value in zip(names, session.run(names, chunk), strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def prepare_import(
    sample: Mapping[str, np.ndarray] | np.ndarray,
    signature: Signature,
    model_path: Path,
    *,
    strict: bool,
) -> ImportBaseline | None:
    """Summaries of an import's sample (inputs, and the outputs the model gives on it).

    ``strict`` (a plain ONNX import): a sample that does not fit the model's inputs is refused.
    Otherwise (the sample was the framework's, and the converter took it) such a sample only
    means no baseline. Blocking CPU work: call it before the version's rows are written.
    """
    try:
        arrays = sample_arrays(sample, signature)
    except InvalidInput as exc:
        if strict:
            raise InvalidInput(
                f"--sample does not fit the model: {exc.message}", hint=exc.hint
            ) from exc
        log.warning("no import baseline: %s", exc)
        return None
    tensors = summaries_from_arrays(arrays, "inputs")
    rows = min(a.shape[0] for a in arrays.values())
    details: dict[str, Any] = {"sample_rows": rows}
    try:
        outputs = model_outputs(model_path, arrays, signature)
        tensors.update(summaries_from_arrays(outputs, "outputs"))
        details["outputs"] = "onnxruntime (CPU) on the sample"
    except Exception as exc:  # onnxruntime raises its own kinds; outputs are optional here
        log.warning("import baseline of %s: outputs left out: %s", model_path.name, exc)
        details["outputs_error"] = str(exc)[:500]
    return ImportBaseline(tensors=tensors, details=details)


def _free_name(session: Session, workspace: store.Workspace, base: str) -> str:
    name, n = base, 2
    while store.find_baseline(session, workspace=workspace, name=name) is not None:
        suffix = f"-{n}"
        name, n = base[: 63 - len(suffix)] + suffix, n + 1
    return name


def record_import(
    session: Session,
    *,
    workspace: store.Workspace,
    model: store.Model,
    version: store.ModelVersion,
    prepared: ImportBaseline,
    created_by: str = "",
) -> store.Baseline:
    """Add the import baseline ``<model>-v<version>`` (flushed, not committed; another name
    ending in ``-2``, ``-3``… if that one is taken) and name it in the version's details."""
    suffix = f"-v{version.version}"
    name = _free_name(session, workspace, model.name[: 63 - len(suffix)] + suffix)
    baseline = store.add_baseline(
        session,
        store.Baseline(
            workspace_id=workspace.id,  # type: ignore[arg-type]
            name=name,
            source="import",
            model=model.name,
            model_version=version.version,
            details=prepared.details,
            tensors=prepared.tensors,
            created_by=created_by,
        ),
    )
    version.details = {**version.details, "baseline": name}
    session.add(version)
    session.flush()
    log.info("import baseline %s: %s", name, ", ".join(sorted(prepared.tensors)))
    return baseline
