"""Keras to ONNX with tf2onnx (TensorFlow backend).

TensorFlow is a large install that most users of this project never need, so it is not part
of ``make install``: the ``keras`` extra brings ``tensorflow-cpu`` and ``tf2onnx`` (both accept
the project's numpy 1.26 and protobuf 6 pins). Without them this module says which extra to
install and touches nothing.

``.keras`` files are zip archives of a JSON config and weights; they are loaded with Keras'
``safe_mode=True``, which refuses to deserialise Python lambdas (marshalled bytecode) unless
the caller trusts the file (``trust_pickle``, logged). Legacy ``.h5`` files can carry the same
bytecode, so they need ``trust_pickle`` like a pickle.
tf2onnx's ``from_keras`` (checked with Keras 3.15, TensorFlow 2.21, tf2onnx 1.17) writes
opset 17 with the batch dimension left dynamic.

Run alone: ``python -m converters.keras_onnx model.keras --out-dir out/``.
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.common import (
    KSERVE_TO_NUMPY,
    Arrays,
    ConversionError,
    ConvertedModel,
    Progress,
    first_error_lines,
    framework_main,
    gate_pickle,
    open_source,
    require,
    version_of,
)
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile

log = logging.getLogger(__name__)

OPSET = 17


def _load(keras: Any, path: Path, *, trust_pickle: bool) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        gate_pickle(
            path,
            trust_pickle=trust_pickle,
            what="a legacy HDF5 Keras model (it may carry marshalled Python code)",
        )
    elif suffix != ".keras":
        raise InvalidInput(
            f"{path.name}: Keras models are imported from .keras files",
            hint="save with model.save('model.keras')",
        )
    elif not zipfile.is_zipfile(path):
        raise InvalidModelFile(
            f"{path.name}: is not a .keras archive (truncated, or another format)",
            hint="upload the complete file written by model.save('model.keras')",
        )
    safe = suffix == ".keras" and not trust_pickle
    if not safe:
        log.warning("loading %s with Keras safe_mode off because the caller trusted it", path)
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=safe)
    except Exception as exc:  # ValueError for lambdas in safe mode, OSError, zip errors
        raise InvalidModelFile(
            f"{path.name}: cannot be loaded by Keras ({first_error_lines(exc, limit=300)})",
            hint="a custom layer must be importable; Python lambdas are refused unless the "
            "file is trusted (trust_pickle)",
        ) from exc


def _input_specs(model: Any, inputs: Sequence[TensorSpec] | None) -> list[TensorSpec]:
    if inputs:
        return list(inputs)
    specs = []
    for position, tensor in enumerate(model.inputs):
        name = str(getattr(tensor, "name", "") or f"input_{position}").split(":")[0]
        shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
        dtype = np.dtype(str(getattr(tensor.dtype, "name", tensor.dtype))).name
        datatype = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64"}
        specs.append(TensorSpec(name=name, datatype=datatype.get(dtype, "FP32"), shape=shape))
    return specs


def convert_keras(
    source: object,
    *,
    out_path: Path,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    trust_pickle: bool,
    max_bytes: int,
    progress: Progress,
) -> ConvertedModel:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = require("tensorflow", extra="keras", framework="keras")
    tf2onnx = require("tf2onnx", extra="keras", framework="keras")
    keras = require("keras", extra="keras", framework="keras")
    path, sha256, described = open_source(source, max_bytes=max_bytes)
    if path is not None:
        progress(f"loading {path.name} with Keras {keras.__version__} (safe mode)")
        model = _load(keras, path, trust_pickle=trust_pickle)
    else:
        model = source
    if not hasattr(model, "inputs") or not model.inputs:
        raise InvalidInput(
            "framework keras expects a built Keras model with known inputs",
            hint="build the model (call it once, or use keras.Input) before converting",
        )
    specs = _input_specs(model, inputs)
    signature = [
        tf.TensorSpec(
            [None, *[None if d < 0 else d for d in spec.shape[1:]]],
            KSERVE_TO_NUMPY[spec.datatype],
            name=spec.name,
        )
        for spec in specs
    ]
    progress(f"converting with tf2onnx {tf2onnx.__version__}, opset {OPSET}")
    try:
        proto, _ = tf2onnx.convert.from_keras(
            model, input_signature=signature, opset=OPSET, output_path=str(out_path)
        )
    except Exception as exc:  # tf2onnx raises ValueError/RuntimeError on unsupported ops
        raise ConversionError(
            f"tf2onnx cannot convert the Keras model: {first_error_lines(exc)}",
            hint="an operation without an ONNX mapping (custom layer, rare TF op)",
        ) from exc
    input_names = [i.name for i in proto.graph.input]
    output_names = [o.name for o in proto.graph.output]

    def reference(arrays: Arrays) -> Arrays:
        feed = [arrays[n] for n in input_names]
        result = model(feed[0] if len(feed) == 1 else feed, training=False)
        values = list(result.values()) if isinstance(result, dict) else result
        if not isinstance(values, (list, tuple)):
            values = [values]
        return {n: np.asarray(v) for n, v in zip(output_names, values, strict=False)}

    return ConvertedModel(
        onnx_path=out_path,
        reference=reference,
        example=dict(sample) if sample is not None else None,
        framework="keras",
        framework_version=str(keras.__version__),
        converter="tf2onnx",
        converter_version=version_of("tf2onnx"),
        source=described,
        source_sha256=sha256,
        details={"tensorflow_version": str(tf.__version__)},
    )


def main(argv: list[str] | None = None) -> int:
    return framework_main(argv, "keras")


if __name__ == "__main__":
    sys.exit(main())
