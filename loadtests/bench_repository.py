"""Repository scale: generate and validate a 1,000-model repository, timed per phase.

    python loadtests/bench_repository.py [--pipelines 500] [--profile cpu|gpu] [--json]

In a temporary folder, with the real builder: every pipeline is two step models (an affine
scaler and a softmax classifier, real ONNX files, real configs from the ``cpu`` or ``gpu``
preset) and one ensemble wiring them, so 500 pipelines are 1,000 models + 500 ensembles. They
are published with ``RepositoryWriter.batch()`` (atomic, one filesystem sync), then
``validate_repository`` reads and checks the whole folder, which must report no problem.
Target (the issue "Model repositories and ensembles"): generate + validate in under 10 s on
the 2-core development machine. For comparison, the same writer publishing one model at a
time (an fsync per file and folder) is timed on a sample, side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec  # noqa: E402
from manager.names import triton_ensemble_name, triton_model_name  # noqa: E402
from manager.repository.config import ensemble_config, model_config  # noqa: E402
from manager.repository.python_model import python_model_source  # noqa: E402
from manager.repository.validate import validate_repository  # noqa: E402
from manager.repository.writer import RepositoryWriter  # noqa: E402
from manager.triton.client import ModelConfig  # noqa: E402
from tests.onnx_models import make_affine, make_softmax_classifier  # noqa: E402

TARGET_S = 10.0
WORKSPACE = "bench"
SCALER = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
)
CLASSIFIER = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 3)),),
    batched=True,
)

Profile = Literal["cpu", "gpu"]
Planned = tuple[str, ModelConfig, Path | None]  # Triton name, config, ONNX file (None: ensemble)


def plan_pipeline(i: int, profile: Profile, onnx: dict[str, Path]) -> list[Planned]:
    """The two step models and the ensemble of pipeline ``i``, built by the real builder."""
    scale = triton_model_name(WORKSPACE, f"scale-{i}")
    classify = triton_model_name(WORKSPACE, f"classify-{i}")
    items: list[Planned] = []
    for name, signature, source in (
        (scale, SCALER, onnx["scaler"]),
        (classify, CLASSIFIER, onnx["classifier"]),
    ):
        config = model_config(
            triton_name=name, signature=signature, profile=profile, max_batch_size=8, versions=[1]
        )
        items.append((name, config, source))
    pipeline = PipelineSpec(
        name=f"pipe-{i}",
        steps=(
            PipelineStep("scale", f"scale-{i}", 1, SCALER, {"x": TensorRef("inputs", "x")}),
            PipelineStep(
                "classify", f"classify-{i}", 1, CLASSIFIER, {"x": TensorRef("scale", "y")}
            ),
        ),
        outputs={"probabilities": TensorRef("classify", "probabilities")},
    )
    ensemble = triton_ensemble_name(WORKSPACE, f"pipe-{i}", 1)
    config = ensemble_config(
        triton_name=ensemble,
        pipeline=pipeline,
        step_models={"scale": scale, "classify": classify},
        max_batch_size=8,
    )
    items.append((ensemble, config, None))
    return items


def _extra(config: ModelConfig, model_py: bytes) -> dict[int, dict[str, bytes]] | None:
    return {1: {"model.py": model_py}} if config.backend == "python" else None


def run(pipelines: int, profile: Profile, sample: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lastmile-bench-repo-") as tmp:
        work = Path(tmp)
        onnx = {
            "scaler": make_affine(work / "src" / "scaler.onnx"),
            "classifier": make_softmax_classifier(work / "src" / "classifier.onnx"),
        }
        model_py = python_model_source().encode()
        root = work / "repository"

        start = time.perf_counter()
        planned = [item for i in range(pipelines) for item in plan_pipeline(i, profile, onnx)]
        built = time.perf_counter()
        writer = RepositoryWriter(root)
        with writer.batch() as batch:
            for name, config, source in planned:
                if source is None:
                    batch.write_ensemble(name, config)
                else:
                    batch.write_model(name, config, {1: source}, _extra(config, model_py))
        written = time.perf_counter()
        problems = validate_repository(root)
        validated = time.perf_counter()

        # Side by side: the same writer, one model at a time, on a sample of the step models.
        singles = [item for item in planned if item[2] is not None][:sample]
        one_by_one = RepositoryWriter(work / "one-by-one")
        t0 = time.perf_counter()
        for name, config, source in singles:
            assert source is not None
            one_by_one.write_model(name, config, {1: source}, _extra(config, model_py))
        single_s = time.perf_counter() - t0

    models = len(planned)
    generation_s = written - start
    validation_s = validated - written
    total_s = validated - start
    batch_write_ms = (written - built) / models * 1e3
    single_write_ms = single_s / max(1, len(singles)) * 1e3
    return {
        "pipelines": pipelines,
        "profile": profile,
        "models": models,
        "build_configs_s": round(built - start, 3),
        "write_s": round(written - built, 3),
        "generation_s": round(generation_s, 3),
        "validation_s": round(validation_s, 3),
        "total_s": round(total_s, 3),
        "per_model_ms": round(total_s / models * 1e3, 3),
        "validation_per_model_ms": round(validation_s / models * 1e3, 3),
        "write_per_model_ms_batch": round(batch_write_ms, 3),
        "write_per_model_ms_one_by_one": round(single_write_ms, 3),
        "one_by_one_sample": len(singles),
        "batch_speedup": round(single_write_ms / batch_write_ms, 1) if batch_write_ms else None,
        "problems": len(problems),
        "first_problems": [str(p) for p in problems[:5]],
        "target_s": TARGET_S,
        "target_met": total_s < TARGET_S and not problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=500, help="two-step pipelines")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--sample", type=int, default=100, help="models written one by one for comparison"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.pipelines, args.profile, args.sample)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['models']} models ({args.pipelines} two-step pipelines, "
            f"profile {args.profile})\n"
            f"  generation  {result['generation_s']:7.2f} s  (configs "
            f"{result['build_configs_s']:.2f} s, batch write {result['write_s']:.2f} s)\n"
            f"  validation  {result['validation_s']:7.2f} s  "
            f"({result['validation_per_model_ms']:.2f} ms/model, {result['problems']} problems)\n"
            f"  total       {result['total_s']:7.2f} s  ({result['per_model_ms']:.2f} ms/model)\n"
            f"  writer      batch {result['write_per_model_ms_batch']:.2f} ms/model vs one by one "
            f"{result['write_per_model_ms_one_by_one']:.2f} ms/model "
            f"(x{result['batch_speedup']}, sample {result['one_by_one_sample']})\n"
            f"  target      < {TARGET_S:.0f} s: {'met' if result['target_met'] else 'NOT met'}"
        )
        for line in result["first_problems"]:
            print(f"  problem: {line}")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
