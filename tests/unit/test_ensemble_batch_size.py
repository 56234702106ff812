"""The ensemble batches exactly as much as its steps' generated configs allow.

``lastmile model configure NAME --max-batch-size 256`` must reach the ensemble: Triton refuses
a request larger than the ensemble's max_batch_size even when every step would take it.
These tests run the deploy's own writers (``write_models`` + ``write_ensemble``) into a folder
and read back what Triton would read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from manager.domain import (
    PipelineSpec,
    PipelineStep,
    ServingOptions,
    Signature,
    TensorRef,
    TensorSpec,
)
from manager.repository.config import effective_max_batch_size
from manager.repository.validate import validate_repository
from manager.repository.writer import RepositoryWriter
from manager.services import deployments
from manager.services.context import Platform
from manager.settings import Settings
from tests.onnx_models import make_affine

BATCHED = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
)
FIXED = Signature(
    inputs=(TensorSpec("x", "FP32", (1, 4)),),
    outputs=(TensorSpec("y", "FP32", (1, 4)),),
    batched=False,
)
ENSEMBLE = "ws.chain.v1"


def _platform(tmp_path: Path) -> Platform:
    settings = Settings(home=tmp_path / "home", max_batch_size=64)
    return Platform(settings=settings, engine=create_engine("sqlite://"))


def _deploy_files(
    tmp_path: Path, platform: Platform, steps: dict[str, tuple[Signature, ServingOptions]]
) -> RepositoryWriter:
    """Write the step models and the chain ensemble over them, as a deploy does."""
    onnx_file = make_affine(tmp_path / "affine.onnx")
    needed = {
        f"ws.{model}": deployments._Needed(
            triton_name=f"ws.{model}", signature=sig, files={1: onnx_file}, options=options
        )
        for model, (sig, options) in steps.items()
    }
    previous = "$inputs.x"
    pipeline_steps = []
    for model, (sig, _) in steps.items():
        pipeline_steps.append(
            PipelineStep(
                name=model,
                model=model,
                version=1,
                signature=sig,
                inputs={"x": TensorRef.parse(previous)},
            )
        )
        previous = f"${model}.y"
    spec = PipelineSpec(
        name="chain", steps=tuple(pipeline_steps), outputs={"y": TensorRef.parse(previous)}
    )
    writer = RepositoryWriter(tmp_path / "repository")
    deployments.write_models(platform, writer, needed)
    deployments.write_ensemble(platform, writer, "ws", spec, ENSEMBLE, needed)
    return writer


@pytest.mark.parametrize("configured", [256, 8])
def test_ensemble_max_batch_size_follows_a_configured_step(tmp_path: Path, configured: int) -> None:
    platform = _platform(tmp_path)
    writer = _deploy_files(
        tmp_path,
        platform,
        {
            "scaler": (BATCHED, ServingOptions(max_batch_size=configured)),
            "other": (BATCHED, ServingOptions(max_batch_size=configured)),
        },
    )
    assert writer.read_config("ws.scaler").max_batch_size == configured
    assert writer.read_config(ENSEMBLE).max_batch_size == configured
    assert validate_repository(writer.root) == []


def test_ensemble_takes_the_smallest_step_not_the_settings_default(tmp_path: Path) -> None:
    platform = _platform(tmp_path)
    writer = _deploy_files(
        tmp_path,
        platform,
        {
            "big": (BATCHED, ServingOptions(max_batch_size=256)),
            "mid": (BATCHED, ServingOptions(max_batch_size=128)),
        },
    )
    assert writer.read_config(ENSEMBLE).max_batch_size == 128
    assert validate_repository(writer.root) == []


def test_a_step_configured_without_batching_makes_the_ensemble_unbatched(
    tmp_path: Path,
) -> None:
    platform = _platform(tmp_path)
    writer = _deploy_files(
        tmp_path,
        platform,
        {
            "big": (BATCHED, ServingOptions(max_batch_size=256)),
            "zero": (BATCHED, ServingOptions(max_batch_size=0)),
        },
    )
    assert writer.read_config("ws.zero").max_batch_size == 0
    assert writer.read_config(ENSEMBLE).max_batch_size == 0
    assert validate_repository(writer.root) == []


def test_effective_max_batch_size_is_what_model_config_writes() -> None:
    assert effective_max_batch_size(BATCHED, default=64) == 64
    assert effective_max_batch_size(BATCHED, default=64, options=ServingOptions()) == 64
    assert (
        effective_max_batch_size(BATCHED, default=64, options=ServingOptions(max_batch_size=256))
        == 256
    )
    assert (
        effective_max_batch_size(BATCHED, default=64, options=ServingOptions(max_batch_size=0)) == 0
    )
    assert (
        effective_max_batch_size(FIXED, default=64, options=ServingOptions(max_batch_size=8)) == 0
    )
