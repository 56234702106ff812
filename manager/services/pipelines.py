"""Defining pipelines: ordered steps of registered model versions, wired tensor to tensor.

A pipeline definition is resolved against the registry when it is created (versions pinned,
signatures copied in), validated like Triton would validate the ensemble, and stored as an
immutable pipeline version.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from manager import store
from manager.domain import PIPELINE_INPUTS, PipelineSpec, PipelineStep, Signature, TensorRef
from manager.errors import InvalidInput, NotFound, PipelineError
from manager.names import check_name
from manager.repository.config import validate_pipeline
from manager.repository.pipeline import sort_steps
from manager.services.context import Platform

log = logging.getLogger(__name__)


def parse_step_ref(text: str) -> tuple[str, int | None]:
    """``model`` or ``model:version``."""
    model, sep, version = text.partition(":")
    check_name(model, kind="model")
    if not sep:
        return model, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(
            f"invalid step {text!r}: version must be a positive integer",
            hint="write MODEL or MODEL:VERSION, e.g. scaler:2",
        )
    return model, int(version)


def _chain_inputs(
    pipeline: str, step: str, signature: Signature, prev: PipelineStep | None
) -> dict[str, TensorRef]:
    """Feed a step from the previous one: by name when all names match, else by position."""
    if prev is None:
        return {t.name: TensorRef(PIPELINE_INPUTS, t.name) for t in signature.inputs}
    produced = [t.name for t in prev.signature.outputs]
    wanted = [t.name for t in signature.inputs]
    if all(name in produced for name in wanted):
        return {name: TensorRef(prev.name, name) for name in wanted}
    if len(wanted) == len(produced):
        return {w: TensorRef(prev.name, p) for w, p in zip(wanted, produced, strict=True)}
    raise PipelineError(
        f"pipeline {pipeline!r}: step {step!r} needs inputs {wanted} but step {prev.name!r} "
        f"produces {produced}; the names differ and so do the counts",
        hint="chain models whose outputs match the next model's inputs, "
        "or describe the wiring explicitly in a pipeline definition",
    )


def build_chain(platform: Platform, *, workspace: str, name: str, steps: list[str]) -> PipelineSpec:
    check_name(name, kind="pipeline")
    if not steps:
        raise PipelineError(
            f"pipeline {name!r} has no steps", hint="add --step MODEL[:VERSION] at least once"
        )
    resolved: list[PipelineStep] = []
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        for ref in steps:
            model_name, version = parse_step_ref(ref)
            model = store.get_model(session, workspace=ws, name=model_name)
            model_version = store.get_model_version(session, model=model, version=version)
            signature = Signature.from_dict(model_version.signature)
            used = {s.name for s in resolved}
            step_name, n = model_name, 2
            while step_name in used:
                step_name, n = f"{model_name}-{n}", n + 1
            prev = resolved[-1] if resolved else None
            resolved.append(
                PipelineStep(
                    name=step_name,
                    model=model_name,
                    version=model_version.version,
                    signature=signature,
                    inputs=_chain_inputs(name, step_name, signature, prev),
                )
            )
    last = resolved[-1]
    outputs = {t.name: TensorRef(last.name, t.name) for t in last.signature.outputs}
    return PipelineSpec(name=name, steps=tuple(resolved), outputs=outputs)


def pipeline_version_info(
    pipeline: store.Pipeline, version: store.PipelineVersion
) -> dict[str, Any]:
    spec = PipelineSpec.from_dict(version.spec)
    return {
        "pipeline": pipeline.name,
        "version": version.version,
        "steps": [
            {
                "name": s.name,
                "model": s.model,
                "version": s.version,
                "inputs": {k: str(v) for k, v in s.inputs.items()},
            }
            for s in spec.steps
        ],
        "inputs": [t.to_dict() for t in spec.input_specs()],
        "outputs": [t.to_dict() for t in spec.output_specs()],
        "created_at": version.created_at.isoformat(),
    }


class StepDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Step name, unique in the pipeline")
    model: str = Field(description="Registered model, MODEL or MODEL:VERSION (default latest)")
    inputs: dict[str, str] = Field(
        description="Model input ← $inputs.NAME (pipeline input) or $STEP.TENSOR"
    )


class PipelineDocument(BaseModel):
    """A pipeline definition as written in YAML (``lastmile pipeline apply``): a DAG."""

    model_config = ConfigDict(extra="forbid")
    name: str
    steps: list[StepDocument] = Field(min_length=1)
    outputs: dict[str, str] = Field(min_length=1, description="Pipeline output ← $STEP.TENSOR")


def parse_document(document: Any) -> PipelineDocument:
    try:
        return PipelineDocument.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors()
        )
        raise PipelineError(
            f"invalid pipeline definition: {problems}",
            hint="see the README's pipeline YAML example (name, steps[name, model, inputs], "
            "outputs)",
        ) from exc


def build_from_document(platform: Platform, *, workspace: str, document: Any) -> PipelineSpec:
    """Resolve a definition against the registry: versions pinned, signatures copied in."""
    doc = parse_document(document)
    check_name(doc.name, kind="pipeline")
    steps: list[PipelineStep] = []
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        for step in doc.steps:
            model_name, version = parse_step_ref(step.model)
            model = store.get_model(session, workspace=ws, name=model_name)
            model_version = store.get_model_version(session, model=model, version=version)
            steps.append(
                PipelineStep(
                    name=step.name,
                    model=model_name,
                    version=model_version.version,
                    signature=Signature.from_dict(model_version.signature),
                    inputs={k: TensorRef.parse(v) for k, v in step.inputs.items()},
                )
            )
    outputs = {k: TensorRef.parse(v) for k, v in doc.outputs.items()}
    return sort_steps(PipelineSpec(name=doc.name, steps=tuple(steps), outputs=outputs))


def _store_spec(platform: Platform, *, workspace: str, spec: PipelineSpec) -> dict[str, Any]:
    """Validate and store ``spec`` as the next pipeline version, unless it equals the latest
    (applying the same definition twice is a no-op)."""
    validate_pipeline(spec)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        try:
            latest = store.get_pipeline_version(
                session, pipeline=store.get_pipeline(session, workspace=ws, name=spec.name)
            )
        except NotFound:
            latest = None
        if latest is not None and latest.spec == spec.to_dict():
            pipeline = session.get(store.Pipeline, latest.pipeline_id)
            assert pipeline is not None
            return {**pipeline_version_info(pipeline, latest), "created": False}
        pipeline, version = store.add_pipeline_version(
            session, workspace=ws, name=spec.name, spec=spec.to_dict()
        )
        session.commit()
        info = pipeline_version_info(pipeline, version)
    log.info("pipeline %s version %d created", spec.name, info["version"])
    return {**info, "created": True}


def create_pipeline(
    platform: Platform, *, workspace: str, name: str, steps: list[str]
) -> dict[str, Any]:
    """Validate and store a chain of model versions as the next version of a pipeline."""
    spec = build_chain(platform, workspace=workspace, name=name, steps=steps)
    return _store_spec(platform, workspace=workspace, spec=spec)


def apply_pipeline(platform: Platform, *, workspace: str, document: Any) -> dict[str, Any]:
    """Create the next version of a pipeline from a (YAML) definition of its DAG."""
    spec = build_from_document(platform, workspace=workspace, document=document)
    return _store_spec(platform, workspace=workspace, spec=spec)


def list_pipelines(platform: Platform, *, workspace: str) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        result = []
        for pipeline in store.list_pipelines(session, workspace=ws):
            latest = store.get_pipeline_version(session, pipeline=pipeline)
            result.append(pipeline_version_info(pipeline, latest))
        return result
