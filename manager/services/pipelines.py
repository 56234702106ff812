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
from manager.errors import Conflict, InvalidInput, NotFound, PipelineError, PreconditionFailed
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
        "created_by": version.created_by,
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


def _store_spec(
    platform: Platform,
    *,
    workspace: str,
    spec: PipelineSpec,
    created_by: str = "",
    if_version: int | None = None,
) -> dict[str, Any]:
    """Validate and store ``spec`` as the next pipeline version, unless it equals the latest
    (applying the same definition twice is a no-op). ``if_version`` (from ``If-Match``) makes
    the write conditional on the latest version still being that one (0: no version yet)."""
    validate_pipeline(spec)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        try:
            latest = store.get_pipeline_version(
                session, pipeline=store.get_pipeline(session, workspace=ws, name=spec.name)
            )
        except NotFound:
            latest = None
        current = latest.version if latest is not None else 0
        if if_version is not None and if_version != current:
            raise PreconditionFailed(
                f"pipeline {spec.name!r} is at version {current}, not {if_version}",
                hint="read it again and send its ETag in If-Match",
            )
        if latest is not None and latest.spec == spec.to_dict():
            pipeline = session.get(store.Pipeline, latest.pipeline_id)
            assert pipeline is not None
            return {**pipeline_version_info(pipeline, latest), "created": False}
        pipeline, version = store.add_pipeline_version(
            session, workspace=ws, name=spec.name, spec=spec.to_dict(), created_by=created_by
        )
        session.commit()
        info = pipeline_version_info(pipeline, version)
    log.info("pipeline %s version %d created", spec.name, info["version"])
    return {**info, "created": True}


def create_pipeline(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    steps: list[str],
    created_by: str = "",
    if_version: int | None = None,
) -> dict[str, Any]:
    """Validate and store a chain of model versions as the next version of a pipeline."""
    spec = build_chain(platform, workspace=workspace, name=name, steps=steps)
    return _store_spec(
        platform, workspace=workspace, spec=spec, created_by=created_by, if_version=if_version
    )


def apply_pipeline(
    platform: Platform,
    *,
    workspace: str,
    document: Any,
    created_by: str = "",
    if_version: int | None = None,
) -> dict[str, Any]:
    """Create the next version of a pipeline from a definition: a DAG (steps as objects)
    or a chain (steps as ``MODEL[:VERSION]`` strings)."""
    spec = build_spec(platform, workspace=workspace, document=document)
    return _store_spec(
        platform, workspace=workspace, spec=spec, created_by=created_by, if_version=if_version
    )


def build_spec(platform: Platform, *, workspace: str, document: Any) -> PipelineSpec:
    """A chain document ``{name, steps: [str, ...]}`` or a DAG document, resolved."""
    if (
        isinstance(document, dict)
        and isinstance(document.get("steps"), list)
        and document["steps"]
        and all(isinstance(step, str) for step in document["steps"])
    ):
        extra = set(document) - {"name", "steps"}
        if extra:
            raise PipelineError(
                f"invalid pipeline definition: unknown field(s) {sorted(extra)} in a chain",
                hint="a chain has name and steps only; describe outputs in a DAG definition",
            )
        name = document.get("name")
        if not isinstance(name, str):
            raise PipelineError("invalid pipeline definition: name: Field required")
        return build_chain(platform, workspace=workspace, name=name, steps=document["steps"])
    return build_from_document(platform, workspace=workspace, document=document)


def validate_definition(platform: Platform, *, workspace: str, document: Any) -> dict[str, Any]:
    """Resolve and validate a definition like a create would, storing nothing."""
    spec = build_spec(platform, workspace=workspace, document=document)
    validate_pipeline(spec)
    steps = [
        {
            "name": s.name,
            "model": s.model,
            "version": s.version,
            "inputs": {k: str(v) for k, v in s.inputs.items()},
        }
        for s in spec.steps
    ]
    return {
        "valid": True,
        "pipeline": {
            "pipeline": spec.name,
            "version": 0,
            "steps": steps,
            "inputs": [t.to_dict() for t in spec.input_specs()],
            "outputs": [t.to_dict() for t in spec.output_specs()],
            "created_at": store.utcnow().isoformat(),
        },
    }


def _deployed_version(session: Any, pipeline: store.Pipeline) -> int | None:
    dep = store.get_deployment(session, pipeline=pipeline)
    if dep is None or dep.state != "live":
        return None
    pv = session.get(store.PipelineVersion, dep.pipeline_version_id)
    return pv.version if pv is not None else None


def list_pipelines(
    platform: Platform,
    *,
    workspace: str,
    after_id: int | None = None,
    limit: int | None = None,
    name_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        page, more = store.list_pipelines(
            session, workspace=ws, after_id=after_id, limit=limit, name_prefix=name_prefix
        )
        result = []
        for pipeline in page:
            latest = store.get_pipeline_version(session, pipeline=pipeline)
            result.append(
                pipeline_version_info(pipeline, latest)
                | {"deployed_version": _deployed_version(session, pipeline)}
            )
        return result, more


def get_pipeline(
    platform: Platform, *, workspace: str, name: str, version: int | None = None
) -> dict[str, Any]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipeline = store.get_pipeline(session, workspace=ws, name=name)
        pv = store.get_pipeline_version(session, pipeline=pipeline, version=version)
        return pipeline_version_info(pipeline, pv) | {
            "deployed_version": _deployed_version(session, pipeline)
        }


def list_versions(platform: Platform, *, workspace: str, name: str) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipeline = store.get_pipeline(session, workspace=ws, name=name)
        return [
            pipeline_version_info(pipeline, pv)
            for pv in store.list_pipeline_versions(session, pipeline=pipeline)
        ]


def delete_pipeline(platform: Platform, *, workspace: str, name: str) -> None:
    """Forget a pipeline and all its versions; refused while it is deployed."""
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipeline = store.get_pipeline(session, workspace=ws, name=name)
        dep = store.get_deployment(session, pipeline=pipeline)
        if dep is not None and dep.state in ("live", "pending"):
            raise Conflict(
                f"pipeline {name!r} is deployed ({dep.ensemble})",
                hint=f"undeploy it first: lastmile undeploy {name}",
            )
        watching = [a.name for a in store.list_assays(session, pipeline_id=pipeline.id)]
        if watching:
            raise Conflict(
                f"pipeline {name!r} is watched by assay(s) {', '.join(watching)}",
                hint=f"delete them first: lastmile assay delete {watching[0]}",
            )
        store.delete_rollouts(session, pipeline=pipeline)
        store.delete_pipeline_history(session, pipeline=pipeline)
        store.delete_pipeline(session, pipeline=pipeline)
        session.commit()
