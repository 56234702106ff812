"""Writes every model file the README's examples import, so each command there runs as shown.

    python examples/make_models.py              # into examples/models/ and examples/repository/
    python examples/make_models.py --out DIR    # into DIR/models/ and DIR/repository/

Model files are binaries, so they are built here instead of being committed: small, fixed
numbers (seeded), in seconds. The ONNX models come from the same builders the tests use
(``tests/onnx_models.py``), so what the README shows is what the test suite exercises:

- ``models/scaler.onnx``, ``models/classifier.onnx``: the ``fraud`` chain (x[4] → y[4] →
  probabilities[3]); ``models/double.onnx``, ``triple.onnx``, ``addpair.onnx``: the models
  ``examples/diamond.yaml`` names (x → y twice, then p + q → z).
- ``models/mlp.pt`` (TorchScript, 8 features), ``models/model.joblib`` (scikit-learn, 6),
  ``models/model.json`` (XGBoost, 6), ``models/model.txt`` (LightGBM, 6): the "any framework"
  imports. Each needs its framework (the ``torch``, ``sklearn`` and ``boosters`` extras that
  ``make install`` installs); a missing one is skipped with a note, the rest still get made.
- ``repository/``: the fraud chain as a Triton model repository, built by Lastmile's own
  repository builder, for ``lastmile repo validate`` and ``lastmile repo import``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: reuse the repo's builders
    sys.path.insert(0, str(ROOT))

from tests.onnx_models import make_add, make_affine, make_softmax_classifier  # noqa: E402

FEATURES = 4  # the fraud chain: `lastmile infer fraud --input x='[[0.1, 0.2, 0.3, 0.4]]'`
TABULAR_FEATURES = 6  # `--input x:float32:-1,6` in the README
MLP_FEATURES = 8  # `--input x:float32:-1,8`


def make_onnx_models(models: Path) -> list[Path]:
    return [
        make_affine(models / "scaler.onnx", FEATURES, scale=0.5, bias=-0.1),
        make_softmax_classifier(models / "classifier.onnx", FEATURES, n_classes=3),
        make_affine(models / "double.onnx", FEATURES, scale=2.0, bias=0.0),
        make_affine(models / "triple.onnx", FEATURES, scale=3.0, bias=0.0),
        make_add(models / "addpair.onnx", FEATURES, input_names=("p", "q"), output_name="z"),
    ]


def _tabular() -> tuple[object, object]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, TABULAR_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(np.int64)
    return x, y


def make_torchscript(models: Path) -> Path:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(MLP_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    ).eval()
    path = models / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(path))
    return path


def make_sklearn(models: Path) -> Path:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _tabular()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(x, y)
    path = models / "model.joblib"
    joblib.dump(model, path)  # a pickle: the README imports it with --trust-pickle
    return path


def make_xgboost(models: Path) -> Path:
    import xgboost

    x, y = _tabular()
    model = xgboost.XGBClassifier(n_estimators=8, max_depth=2, random_state=0).fit(x, y)
    path = models / "model.json"
    model.get_booster().save_model(str(path))
    return path


def make_lightgbm(models: Path) -> Path:
    import lightgbm

    x, y = _tabular()
    model = lightgbm.LGBMClassifier(
        n_estimators=8, num_leaves=4, min_child_samples=5, random_state=0, verbose=-1
    ).fit(x, y)
    path = models / "model.txt"
    model.booster_.save_model(str(path))
    return path


FRAMEWORK_MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "mlp.pt": (make_torchscript, "torch"),
    "model.joblib": (make_sklearn, "sklearn"),
    "model.json": (make_xgboost, "boosters"),
    "model.txt": (make_lightgbm, "boosters"),
}


def make_repository(models: Path, repository: Path) -> Path:
    """The fraud chain (scaler → classifier) as a repository a stock Triton loads."""
    from converters.onnx_import import inspect_onnx
    from manager.domain import PipelineSpec, PipelineStep, TensorRef
    from manager.repository.config import ensemble_config, model_config
    from manager.repository.writer import RepositoryWriter

    writer = RepositoryWriter(repository)
    signatures = {}
    for name in ("scaler", "classifier"):
        source = models / f"{name}.onnx"
        signatures[name] = inspect_onnx(source, max_bytes=1 << 20).signature
        triton_name = f"default.{name}"
        config = model_config(
            triton_name=triton_name,
            signature=signatures[name],
            profile="gpu",  # backend "onnxruntime": what NGC Triton images serve
            max_batch_size=8,
            versions=[1],
        )
        writer.write_model(triton_name, config, {1: source})
    pipeline = PipelineSpec(
        name="fraud",
        steps=(
            PipelineStep(
                "scaler", "scaler", 1, signatures["scaler"], {"x": TensorRef("inputs", "x")}
            ),
            PipelineStep(
                "classifier",
                "classifier",
                1,
                signatures["classifier"],
                {"x": TensorRef("scaler", "y")},
            ),
        ),
        outputs={"probabilities": TensorRef("classifier", "probabilities")},
    )
    ensemble = "default.fraud.v1"
    writer.write_ensemble(
        ensemble,
        ensemble_config(
            triton_name=ensemble,
            pipeline=pipeline,
            step_models={"scaler": "default.scaler", "classifier": "default.classifier"},
            max_batch_size=8,
        ),
    )
    return repository


def make_all(out: Path) -> tuple[list[Path], list[str]]:
    """Everything under ``out``; returns the paths made and one note per file skipped."""
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    made = make_onnx_models(models)
    skipped = []
    for filename, (make, extra) in FRAMEWORK_MODELS.items():
        try:
            made.append(make(models))
        except ImportError as exc:
            skipped.append(
                f"{filename}: needs the {extra!r} extra ({exc.name or exc}); "
                f"pip install -e '.[{extra}]' and run this again"
            )
    repository = out / "repository"
    if repository.exists() and any(repository.iterdir()):
        skipped.append(f"repository/: {repository} is not empty; remove it to rebuild it")
    else:
        made.append(make_repository(models, repository))
    return made, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write models/ and repository/ into (default: examples/)",
    )
    args = parser.parse_args(argv)
    made, skipped = make_all(args.out)
    for path in made:
        print(f"made {path}")
    for note in skipped:
        print(f"skipped {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
