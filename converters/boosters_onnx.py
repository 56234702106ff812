"""XGBoost and LightGBM to ONNX with onnxmltools.

Both libraries have a native model file that is *not* a pickle: XGBoost's JSON / UBJSON
(``Booster.save_model``) and LightGBM's text format (``Booster.save_model``). Those are loaded
without any trust flag; joblib/pickle files need ``trust_pickle`` like any pickle. "Safe"
means no code execution, not a robust parser: corrupt files have made LightGBM 4.7 abort and
XGBoost 3.2 segfault, so each file is first parsed in a memory-capped child process
(``common.probe_in_child``, about 1 s) and only then loaded here.

Classifiers answer ``label`` (int64, one per row) and ``probabilities`` (float32, rows x
classes); LightGBM is converted with ``zipmap=False`` for that, and its converter declares the
label's batch dimension as a fixed 1, which is rewritten to a dynamic dimension here so that
Triton sees a batchable signature. onnxmltools' tree converters top out at opset 15 (it
refuses a higher ``target_opset``), so its default is kept.

A bare Booster has no ``predict_proba``: the reference recovers the probability matrix from
``Booster.predict`` (binary objectives give one column, the positive class) and the label as
its argmax.

Run alone: ``python -m converters.boosters_onnx model.json --framework xgboost --out-dir out/``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.common import (
    Arrays,
    ConversionError,
    ConvertedModel,
    Progress,
    first_error_lines,
    open_source,
    probe_in_child,
    require,
    version_of,
    write_onnx,
)
from converters.sklearn_onnx import cast_sample, load_pickle, single_input_spec
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}


def _load_xgboost(xgb: Any, path: Path) -> Any:
    probe_in_child(
        _XGBOOST_PROBE,
        path,
        what="an XGBoost model",
        hint="upload the complete .json or .ubj file written by Booster.save_model",
    )
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:  # XGBoostError
        raise InvalidModelFile(
            f"{path.name}: cannot be read as an XGBoost model "
            f"({first_error_lines(exc, limit=300)})",
            hint="upload the complete .json or .ubj file written by Booster.save_model",
        ) from exc
    return booster


_XGBOOST_PROBE = """
import xgboost
booster = xgboost.Booster()
booster.load_model(sys.argv[1])
booster.predict(xgboost.DMatrix([[0.0] * booster.num_features()]))
"""
_LIGHTGBM_PROBE = """
import lightgbm
booster = lightgbm.Booster(model_file=sys.argv[1])
booster.predict([[0.0] * booster.num_feature()])
"""


def _check_lightgbm_text(path: Path) -> None:
    data = path.read_bytes()
    if not data.startswith(b"tree"):
        raise InvalidModelFile(
            f"{path.name}: is not a LightGBM text model (it does not start with 'tree')",
            hint="upload the file written by Booster.save_model (text format)",
        )
    if b"end of trees" not in data:
        raise InvalidModelFile(
            f"{path.name}: is truncated (no 'end of trees' line)",
            hint="upload the complete text file written by Booster.save_model",
        )


def _load_lightgbm(lgb: Any, path: Path) -> Any:
    _check_lightgbm_text(path)
    probe_in_child(
        _LIGHTGBM_PROBE,
        path,
        what="a LightGBM model",
        hint="upload the complete text file written by Booster.save_model",
    )
    try:
        return lgb.Booster(model_file=str(path))
    except Exception as exc:  # LightGBMError
        raise InvalidModelFile(
            f"{path.name}: cannot be read as a LightGBM model "
            f"({first_error_lines(exc, limit=300)})",
            hint="upload the complete text file written by Booster.save_model",
        ) from exc


def _feature_count(model: Any, framework: str) -> int | None:
    count = getattr(model, "n_features_in_", None)
    if count is not None:
        return int(count)
    try:
        if framework == "xgboost" and hasattr(model, "num_features"):
            return int(model.num_features())
        if framework == "lightgbm" and hasattr(model, "num_feature"):
            return int(model.num_feature())
    except Exception:  # an unfitted wrapper raises; the caller then asks for inputs
        return None
    return None


def _check_type(framework: str, module: Any, model: Any) -> None:
    if framework == "xgboost":
        kinds: tuple[type, ...] = (module.Booster, module.XGBModel)
    else:
        kinds = (module.Booster, module.LGBMModel)
    if not isinstance(model, kinds):
        raise InvalidInput(
            f"framework {framework} expects a Booster or a scikit-learn wrapper, got "
            f"{type(model).__name__}"
        )


def _is_classifier_objective(framework: str, model: Any) -> bool:
    if hasattr(model, "predict_proba"):
        return True
    if framework == "xgboost":
        import json

        objective = json.loads(model.save_config())["learner"]["objective"]["name"]
    else:
        objective = str(model.params.get("objective", ""))
        if not objective:
            dump = model.dump_model(num_iteration=0)
            objective = str(dump.get("objective", ""))
    return objective.split(" ")[0].startswith(("binary", "multi"))


def _booster_reference(
    framework: str, module: Any, model: Any, output_names: list[str], name: str
) -> Any:
    classifier = len(output_names) == 2 and _is_classifier_objective(framework, model)

    def predict(x: np.ndarray) -> np.ndarray:
        if framework == "xgboost" and isinstance(model, module.Booster):
            return np.asarray(model.predict(module.DMatrix(x)))
        return np.asarray(model.predict(x))

    def reference(arrays: Arrays) -> Arrays:
        x = arrays[name]
        if hasattr(model, "predict_proba"):
            if classifier:
                outputs = [model.predict(x), model.predict_proba(x)]
            else:
                outputs = [model.predict(x)]
        elif classifier:
            proba = predict(x)
            if proba.ndim == 1:
                proba = np.stack([1.0 - proba, proba], axis=1)
            outputs = [proba.argmax(axis=1).astype(np.int64), proba]
        else:
            outputs = [predict(x)]
        return {n: np.asarray(v) for n, v in zip(output_names, outputs, strict=False)}

    return reference


def _free_batch_dims(model: Any) -> int:
    """Turn a fixed leading dim of 1 on any output into a dynamic 'N' (onnxmltools' LightGBM)."""
    changed = 0
    for output in model.graph.output:
        if not output.type.HasField("tensor_type"):
            continue
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
            changed += 1
    return changed


def convert_booster(
    source: object,
    *,
    framework: str,
    out_path: Path,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    trust_pickle: bool,
    max_bytes: int,
    progress: Progress,
) -> ConvertedModel:
    """Convert an XGBoost (``framework='xgboost'``) or LightGBM (``'lightgbm'``) model."""
    if framework not in ("xgboost", "lightgbm"):
        raise InvalidInput(f"unknown booster framework {framework!r}")
    module = require(framework, extra="boosters", framework=framework)
    onnxmltools = require("onnxmltools", extra="boosters", framework=framework)
    from onnxmltools.convert.common.data_types import FloatTensorType

    path, sha256, described = open_source(source, max_bytes=max_bytes)
    if path is not None:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            model = load_pickle(
                path,
                trust_pickle=trust_pickle,
                max_bytes=max_bytes,
                what=f"a pickled {framework} model",
            )
        else:
            progress(f"loading {path.name} ({framework}'s own format, no pickle)")
            loader = _load_xgboost if framework == "xgboost" else _load_lightgbm
            model = loader(module, path)
    else:
        model = source
    _check_type(framework, module, model)
    name, datatype, width = single_input_spec(
        model,
        inputs=inputs,
        sample=sample,
        count=_feature_count(model, framework),
        framework=framework,
    )
    if datatype != "FP32":
        raise InvalidInput(f"{framework} models take float32 inputs, not {datatype}")
    example = cast_sample(sample, name, datatype)
    progress(f"converting {type(model).__name__} with onnxmltools {onnxmltools.__version__}")
    initial = [(name, FloatTensorType([None, width]))]
    try:
        if framework == "xgboost":
            onx = onnxmltools.convert_xgboost(model, initial_types=initial)
        else:
            onx = onnxmltools.convert_lightgbm(model, initial_types=initial, zipmap=False)
    except Exception as exc:  # RuntimeError, NotImplementedError, KeyError on odd params
        raise ConversionError(
            f"onnxmltools cannot convert this {framework} model ({type(model).__name__}): "
            f"{first_error_lines(exc)}",
            hint="onnxmltools supports tree boosters with regression, binary and multiclass "
            "objectives; linear boosters, ranking and custom objectives are not converted",
        ) from exc
    if _free_batch_dims(onx):
        log.info("declared a dynamic batch dim on %s outputs", framework)
    output_names = write_onnx(onx, out_path)
    return ConvertedModel(
        onnx_path=out_path,
        reference=_booster_reference(framework, module, model, output_names, name),
        example=example,
        framework=framework,
        framework_version=str(module.__version__),
        converter="onnxmltools",
        converter_version=version_of("onnxmltools"),
        source=described,
        source_sha256=sha256,
    )


def main(argv: list[str] | None = None) -> int:
    from converters.api import main as api_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--framework" not in args:
        print("error: pass --framework xgboost or --framework lightgbm", file=sys.stderr)
        return 2
    return api_main(args)


if __name__ == "__main__":
    sys.exit(main())
