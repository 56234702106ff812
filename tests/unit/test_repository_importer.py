"""A foreign repository's models and ensembles read back as signatures and pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.domain import Signature, TensorRef, TensorSpec
from manager.errors import InvalidInput, PipelineError
from manager.repository.config import ensemble_config
from manager.repository.importer import ensemble_pipeline, model_signature
from manager.repository.validate import read_repository, validate_repository
from manager.repository.writer import RepositoryWriter
from tests.unit.test_repository_validate import (
    CLASSIFIER,
    ENSEMBLE,
    IDENTITY,
    SCALER,
    build_repository,
    edit,
    ensemble_text,
    step,
    write_model,
)

NAMES = {"ws.scaler": "scaler", "ws.classifier": "classifier"}


def test_signatures_come_back_from_configs(tmp_path: Path) -> None:
    repo = read_repository(build_repository(tmp_path))
    assert model_signature(repo.models["ws.scaler"]) == SCALER
    assert model_signature(repo.models["ws.classifier"]) == CLASSIFIER
    write_model(tmp_path / "more", "ws.fixed", IDENTITY.replace("max_batch_size: 8", ""))
    fixed = read_repository(tmp_path / "more").models["ws.fixed"]
    assert model_signature(fixed) == Signature(
        inputs=(TensorSpec("x", "FP32", (4,)),),
        outputs=(TensorSpec("y", "FP32", (4,)),),
        batched=False,
    )


def test_an_ensemble_becomes_the_pipeline_it_runs(tmp_path: Path) -> None:
    root = build_repository(tmp_path)
    edit(root, ENSEMBLE, lambda c: setattr(step(c, 2), "model_version", -1))
    repo = read_repository(root)
    spec = ensemble_pipeline(repo, repo.models[ENSEMBLE], pipeline_name="fraud", model_names=NAMES)
    # step names come back from Lastmile's internal tensor names ("scale.y" → step "scale")
    assert [(s.name, s.model, s.version) for s in spec.steps] == [
        ("scale", "scaler", 1),
        ("classifier", "classifier", 1),  # -1 is pinned to the newest served version
    ]
    assert spec.steps[0].inputs == {"x": TensorRef("inputs", "x")}
    assert spec.steps[1].inputs == {"x": TensorRef("scale", "y")}
    assert spec.outputs == {"probabilities": TensorRef("classifier", "probabilities")}
    # and the builder turns it back into an ensemble that validates
    rebuilt = tmp_path / "rebuilt"
    writer = RepositoryWriter(rebuilt)
    for name in ("ws.scaler", "ws.classifier"):
        model = repo.models[name]
        version = model.versions[1]
        extra = None
        if model.config.backend == "python":
            extra = {1: {"model.py": (version / "model.py").read_bytes()}}
        writer.write_model(name, model.config, {1: version / "model.onnx"}, extra)
    writer.write_ensemble(
        "ws.fraud.v2",
        ensemble_config(
            triton_name="ws.fraud.v2",
            pipeline=spec,
            step_models={"scale": "ws.scaler", "classifier": "ws.classifier"},
            max_batch_size=8,
        ),
    )
    assert validate_repository(rebuilt) == []


def test_unnamed_step_models_and_nested_ensembles_are_refused(tmp_path: Path) -> None:
    repo = read_repository(build_repository(tmp_path))
    with pytest.raises(InvalidInput, match=r"step 2: no registered name.*'ws.classifier'"):
        ensemble_pipeline(
            repo, repo.models[ENSEMBLE], pipeline_name="fraud", model_names={"ws.scaler": "s"}
        )
    write_model(tmp_path / "nested", "ws.id", IDENTITY)
    write_model(tmp_path / "nested", "ws.inner", ensemble_text(("ws.id", {"x": "x"}, {"y": "y"})))
    write_model(
        tmp_path / "nested", "ws.outer", ensemble_text(("ws.inner", {"x": "x"}, {"y": "y"}))
    )
    nested = read_repository(tmp_path / "nested")
    with pytest.raises(PipelineError, match=r"'ws.outer', step 1 \(model 'ws.inner'\).*ensemble"):
        ensemble_pipeline(
            nested, nested.models["ws.outer"], pipeline_name="p", model_names={"ws.inner": "i"}
        )
