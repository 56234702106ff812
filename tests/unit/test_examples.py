"""Every file the README's examples use ships in ``examples/`` or is made by the command the
README shows (``python examples/make_models.py``), and each one opens with its own tools.

The README is read, not a copy of its list: a new ``examples/...`` path there that nothing
ships or makes fails this test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from converters.onnx_import import inspect_onnx
from manager.domain import PipelineSpec, PipelineStep, TensorRef
from manager.repository.pipeline import sort_steps, validate_pipeline
from manager.repository.validate import validate_repository

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
MAKE_COMMAND = "python examples/make_models.py"


def readme_example_paths() -> list[str]:
    found = re.findall(r"examples/[A-Za-z0-9_./-]*[A-Za-z0-9_]", README.read_text())
    return sorted({p for p in found if p != "examples/make_models.py"})


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the script as the README does, into a fresh folder standing in for examples/."""
    out = tmp_path_factory.mktemp("examples")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_models.py"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def _where(example: str, made: Path) -> Path:
    """A README path ``examples/X``: shipped in the repo, or made by the script into ``made``."""
    relative = example.removeprefix("examples/")
    shipped = EXAMPLES / relative
    return shipped if shipped.exists() else made / relative


def test_readme_shows_the_command_that_makes_the_examples() -> None:
    assert MAKE_COMMAND in README.read_text()
    assert readme_example_paths(), "the README's examples point at nothing in examples/"


def test_every_example_the_readme_names_exists(made: Path) -> None:
    missing = [p for p in readme_example_paths() if not _where(p, made).exists()]
    assert missing == [], f"README names {missing}, which nothing ships or makes"


def test_readme_onnx_models_pass_the_checker(made: Path) -> None:
    onnx_files = [p for p in readme_example_paths() if p.endswith(".onnx")]
    assert "examples/models/scaler.onnx" in onnx_files
    for example in onnx_files:
        onnx.checker.check_model(str(_where(example, made)), full_check=True)


def test_diamond_yaml_parses_and_fits_the_models_the_script_makes(made: Path) -> None:
    """The YAML's models (double, triple, addpair) are made as models/NAME.onnx: build the
    pipeline from their real signatures and validate it the way `pipeline apply` does."""
    document = yaml.safe_load((EXAMPLES / "diamond.yaml").read_text())
    assert document["name"] == "diamond"
    steps = tuple(
        PipelineStep(
            name=step["name"],
            model=step["model"],
            version=1,
            signature=inspect_onnx(
                made / "models" / f"{step['model']}.onnx", max_bytes=1 << 20
            ).signature,
            inputs={k: TensorRef.parse(v) for k, v in step["inputs"].items()},
        )
        for step in document["steps"]
    )
    outputs = {k: TensorRef.parse(v) for k, v in document["outputs"].items()}
    validate_pipeline(sort_steps(PipelineSpec(name="diamond", steps=steps, outputs=outputs)))


def test_fraud_chain_models_fit_the_readme_request(made: Path) -> None:
    """`lastmile infer fraud --input x='[[0.1, 0.2, 0.3, 0.4]]'` → probabilities of 3 classes."""
    scaler = inspect_onnx(made / "models" / "scaler.onnx", max_bytes=1 << 20).signature
    classifier = inspect_onnx(made / "models" / "classifier.onnx", max_bytes=1 << 20).signature
    assert [(t.name, t.shape) for t in scaler.inputs] == [("x", (-1, 4))]
    assert [(t.name, t.shape) for t in classifier.outputs] == [("probabilities", (-1, 3))]


def test_example_repository_validates_clean(made: Path) -> None:
    assert validate_repository(made / "repository") == []
    folders = (p.name for p in (made / "repository").iterdir() if not p.name.startswith("."))
    assert sorted(folders) == [
        "default.classifier",
        "default.fraud.v1",
        "default.scaler",
    ]


def test_framework_models_open_with_their_framework(made: Path) -> None:
    models = made / "models"
    torch = pytest.importorskip("torch")
    module = torch.jit.load(str(models / "mlp.pt"))
    assert tuple(module(torch.zeros(2, 8)).shape) == (2, 2)  # `--input x:float32:-1,8`
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    assert joblib.load(models / "model.joblib").n_features_in_ == 6
    xgboost = pytest.importorskip("xgboost")
    assert xgboost.Booster(model_file=str(models / "model.json")).num_features() == 6
    lightgbm = pytest.importorskip("lightgbm")
    assert lightgbm.Booster(model_file=str(models / "model.txt")).num_feature() == 6
