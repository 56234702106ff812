"""Building blocks of putting pipeline versions on Triton: which model versions a set of
pipeline versions needs (grouped per Triton model, shared or a version's private copies), their
configs and files in the repository, loading composing models before the ensembles that chain
them, and putting the repository back when a load fails. ``deployments`` and ``rollouts``
compose these; ``reconcile`` and the repository export reuse them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from manager import store
from manager.domain import PipelineSpec, ServingOptions, Signature
from manager.errors import LastmileError, PipelineError, TritonError
from manager.names import (
    step_model_name,
)
from manager.repository.config import (
    PYTHON_MODEL_FILENAME,
    effective_max_batch_size,
    ensemble_config,
    model_config,
)
from manager.repository.python_model import bytecode_cache_blocker, python_model_source
from manager.repository.writer import RepositoryWriter
from manager.services.context import Platform
from manager.triton.fleet import FleetClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Needed:
    """A registered model as Triton must serve it: its versions and their files."""

    triton_name: str
    signature: Signature
    files: dict[int, Path]
    options: ServingOptions
    # version → sha256 of its stored file (its content address): what a published copy must be
    digests: dict[int, str] = field(default_factory=dict)
    model: str = ""  # the registered model's name


def collect_models(
    session: Any,
    ws: store.Workspace,
    specs: list[PipelineSpec],
    prefixes: list[str | None] | None = None,
) -> dict[str, _Needed]:
    """Every model version the given pipeline specs use, grouped per Triton model (keyed by
    its Triton name). ``prefixes[i]``: spec i's steps use the private copies of its pipeline
    version (``names.copy_prefix``); None: the workspace's shared models."""
    versions: dict[str, dict[int, store.ModelVersion]] = {}
    options: dict[str, ServingOptions] = {}
    names: dict[str, str] = {}
    for i, spec in enumerate(specs):
        prefix = prefixes[i] if prefixes else None
        for step in spec.steps:
            model = store.get_model(session, workspace=ws, name=step.model)
            mv = store.get_model_version(session, model=model, version=step.version)
            triton_name = step_model_name(ws.name, step.model, prefix)
            versions.setdefault(triton_name, {})[mv.version] = mv
            options[triton_name] = ServingOptions.from_dict(model.serving)
            names[triton_name] = step.model
    needed: dict[str, _Needed] = {}
    for triton_name, by_version in versions.items():
        model_name = names[triton_name]
        signatures = {v: Signature.from_dict(mv.signature) for v, mv in by_version.items()}
        first_version, first = next(iter(sorted(signatures.items())))
        for v, sig in signatures.items():
            if sig != first:
                raise PipelineError(
                    f"model {model_name!r}: versions {first_version} and {v} are both in use but "
                    "have different signatures; Triton serves all versions of a model with "
                    "one config",
                    hint="deploy pipelines that use the same version, or import the new "
                    "signature under a new model name",
                )
        needed[triton_name] = _Needed(
            triton_name=triton_name,
            signature=first,
            files={v: Path(mv.path) for v, mv in by_version.items()},
            options=options[triton_name],
            digests={v: mv.sha256 for v, mv in by_version.items()},
            model=model_name,
        )
    return needed


def version_extras(config: Any, versions: set[int]) -> dict[int, dict[str, bytes]] | None:
    """Files published next to each version's model file: the generated ``model.py`` of the
    CPU profile's Python-backend models."""
    if config.backend != "python":
        return None
    model_py = python_model_source().encode()
    return {v: {PYTHON_MODEL_FILENAME: model_py} for v in versions}


def published_extras(config: Any, versions: set[int]) -> dict[int, dict[str, bytes]] | None:
    """``version_extras`` and, beside a Python-backend ``model.py``, the file that stops the
    stub from writing bytecode into the version folder (which would make Triton load the model
    a second time: ``python_model.BYTECODE_CACHE_BLOCKER``). Not part of ``version_extras``:
    a version's content (its digests, what reconcile compares) leaves bytecode caches out."""
    extras = version_extras(config, versions)
    if extras is None:
        return None
    return {v: {**files, **bytecode_cache_blocker()} for v, files in extras.items()}


def _write_model(writer: RepositoryWriter, item: _Needed, config: Any, versions: set[int]) -> None:
    # The store is the source of truth: a published version whose files were damaged (deleted,
    # truncated) is replaced by the stored file, once that file is checked against its content
    # address (a damaged stored file is refused, never published).
    writer.write_model(
        item.triton_name,
        config,
        {v: item.files[v] for v in versions},
        extra_files=published_extras(config, versions),
        repair=True,
        expected_sha256={v: item.digests[v] for v in versions if v in item.digests},
    )


def model_config_for(
    platform: Platform,
    item: _Needed,
    profile: Literal["cpu", "gpu"] | None = None,
    template: str | None = None,
) -> Any:
    """The config of one Triton model serving every version in ``item`` (``template``: a
    backend preset instead of the profile's, e.g. ``onnxruntime-cpu``)."""
    settings = platform.settings
    return model_config(
        triton_name=item.triton_name,
        signature=item.signature,
        profile=profile or settings.profile,
        max_batch_size=settings.max_batch_size,
        versions=sorted(item.files),
        options=item.options,
        template=template,
        template_dirs=settings.template_dir,
    )


def write_models(
    platform: Platform,
    writer: RepositoryWriter,
    needed: dict[str, _Needed],
    profile: Literal["cpu", "gpu"] | None = None,
    template: str | None = None,
) -> None:
    for item in needed.values():
        config = model_config_for(platform, item, profile, template)
        _write_model(writer, item, config, set(item.files))


@dataclass
class _Snapshot:
    """The repository before a deploy wrote to it: enough to put it back exactly."""

    configs: dict[str, Any]  # Triton name → previous config, None if the model was new
    folders: dict[str, set[int]]  # Triton name → version folders that existed
    ensemble_existed: bool


def _snapshot(writer: RepositoryWriter, needed: dict[str, _Needed], ensemble: str) -> _Snapshot:
    present = set(writer.list_models())
    return _Snapshot(
        configs={
            item.triton_name: writer.read_config(item.triton_name)
            if item.triton_name in present
            else None
            for item in needed.values()
        },
        folders={
            item.triton_name: set(writer.version_folders(item.triton_name))
            for item in needed.values()
            if item.triton_name in present
        },
        ensemble_existed=ensemble in present,
    )


def _roll_back(
    platform: Platform,
    writer: RepositoryWriter,
    needed: dict[str, _Needed],
    snapshot: _Snapshot,
    ensemble: str,
    dependents: list[str],
) -> None:
    """A deploy failed: restore the repository and what Triton serves to the state before."""
    assert platform.triton is not None
    by_triton = {item.triton_name: item for item in needed.values()}
    with platform.triton.client(platform.settings.triton_load_timeout_s) as client:
        if not snapshot.ensemble_existed:
            _quietly(client.unload_model, ensemble)
            writer.remove_model(ensemble)
        for name, old in snapshot.configs.items():
            if old is None:
                _quietly(client.unload_model, name)
                writer.remove_model(name)
                continue
            keep = set(old.version_policy.specific.versions)
            if keep <= set(by_triton[name].files):
                _write_model(writer, by_triton[name], old, keep)
            writer.remove_versions(name, snapshot.folders[name])
            _quietly(_load, platform, client, writer, name)
        for name in dependents:
            _quietly(_load, platform, client, writer, name)


def _quietly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except LastmileError as exc:
        log.warning("while rolling back: %s", exc)


def write_ensemble(
    platform: Platform,
    writer: RepositoryWriter,
    ws: str,
    spec: PipelineSpec,
    ensemble: str,
    needed: dict[str, _Needed],
    prefix: str | None = None,
) -> None:
    writer.write_ensemble(
        ensemble, ensemble_config_for(platform, ws, spec, ensemble, needed, prefix), repair=True
    )


def ensemble_config_for(
    platform: Platform,
    ws: str,
    spec: PipelineSpec,
    ensemble: str,
    needed: dict[str, _Needed],
    prefix: str | None = None,
) -> Any:
    """The config of a pipeline version's ensemble (``needed``: its workspace's models, by
    Triton name; ``prefix``: its steps are the version's private copies)."""
    step_models = {s.name: step_model_name(ws, s.model, prefix) for s in spec.steps}
    # Triton: an ensemble may not batch more than any of its steps. Each step's figure is the
    # one write_models put in its config (a configured 256 included, 0 when it cannot batch,
    # which makes the ensemble unbatched too), not the settings' default.
    max_batch = min(
        effective_max_batch_size(
            needed[step_models[s.name]].signature,
            default=platform.settings.max_batch_size,
            options=needed[step_models[s.name]].options,
        )
        for s in spec.steps
    )
    return ensemble_config(
        triton_name=ensemble, pipeline=spec, step_models=step_models, max_batch_size=max_batch
    )


def _uses(ws: str, spec: PipelineSpec, triton_models: set[str], prefix: str | None = None) -> bool:
    return any(step_model_name(ws, s.model, prefix) in triton_models for s in spec.steps)


def step_models(ws: str, spec: PipelineSpec, prefix: str | None = None) -> set[str]:
    """Triton names of a pipeline version's step models (shared, or its private copies)."""
    return {step_model_name(ws, s.model, prefix) for s in spec.steps}


def _load_models_then_dependents(
    platform: Platform,
    client: FleetClient,
    writer: RepositoryWriter,
    models: set[str],
    dependents: list[str],
    new: Sequence[str] = (),
) -> None:
    """Load composing models, then the ensembles using them: ``new`` ones (written by this
    change) always, ``dependents`` (unchanged, already serving) only where they are not ready.

    Triton reloads a serving ensemble itself when one of its composing models is reloaded
    (an ensemble load starts no process, but each one is a moment of re-validation); one that
    it could not reload (a pushed ensemble: its own repository does not hold the composing
    models) is no longer ready, and is loaded here.
    """
    for name in sorted(models):
        _load(platform, client, writer, name)
    for name in dependents:
        if client.is_model_ready(name):
            log.debug("%s was reloaded by Triton with its composing models", name)
            continue
        _load(platform, client, writer, name)
    for name in new:
        _load(platform, client, writer, name)


def _load(platform: Platform, client: FleetClient, writer: RepositoryWriter, name: str) -> None:
    """Load one model; push config and files when Triton does not share our disk."""
    assert platform.triton is not None
    if platform.triton.shares_repository:
        client.load_model(name)
    else:  # (Triton's poll error on a pushed ensemble is the fleet client's to judge)
        client.load_model(name, config=writer.read_config(name), files=writer.files_for_push(name))
    if not client.is_model_ready(name):
        raise TritonError(f"Triton loaded {name!r} but it is not ready")


def check_resources(
    platform: Platform, needed: dict[str, _Needed], triton_models: set[str]
) -> None:
    """Before anything is written: every version a deploy publishes keeps its external data
    inside its folder and no tensor beyond LASTMILE_MAX_TENSOR_BYTES at its maximum batch."""
    from converters.onnx_limits import check_deployable

    settings = platform.settings
    for item in needed.values():
        if item.triton_name not in triton_models:
            continue  # already served by other live deployments
        batch = effective_max_batch_size(
            item.signature, default=settings.max_batch_size, options=item.options
        )
        for version, path in sorted(item.files.items()):
            check_deployable(
                path,
                max_batch_size=batch,
                max_tensor_bytes=settings.max_tensor_bytes,
                where=f"model {item.model!r} version {version}",
            )
