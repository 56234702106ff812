"""Resource limits of ONNX graphs and their external data: a graph one request could use to
exhaust memory is refused with the tensor, its shape and size, and the setting to change;
external data that is not a plain file inside the model's folder is refused before it is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters import onnx_limits
from converters.onnx_import import (
    check_external_data,
    inspect_onnx,
    load_model_file,
    load_self_contained,
)
from converters.onnx_limits import check_deployable, check_tensor_sizes, human_bytes
from manager.errors import InvalidModelFile
from manager.settings import Settings
from tests.onnx_limit_models import (
    int64_tensor,
    make_expand_bomb,
    make_external,
    make_per_row_expansion,
    save_graph,
    write_weights,
)
from tests.onnx_models import make_affine, make_softmax_classifier

GIB = 1024**3
LIMIT = 10 * 1024 * 1024


def refused(model: Path | onnx.ModelProto, *, batch: int = 64, limit: int = GIB) -> str:
    with pytest.raises(InvalidModelFile) as info:
        check_tensor_sizes(model, max_batch_size=batch, max_tensor_bytes=limit)
    return str(info.value)


# -- tensor sizes ---------------------------------------------------------------------------


def test_expand_of_a_one_by_one_input_to_4_gib_is_refused_naming_the_size(
    tmp_path: Path,
) -> None:
    path = make_expand_bomb(tmp_path / "bomb.onnx")
    message = refused(path)
    assert "bomb.onnx" in message
    assert "output tensor 'y' of shape [32768, 32768] (FLOAT)" in message
    assert "4.0 GiB (4294967296 bytes)" in message
    assert "limit of 1.0 GiB" in message
    assert "per request" in message  # a static 1×1 input: no batch dimension to lower
    assert "LASTMILE_MAX_TENSOR_BYTES" in message and "LASTMILE_MAX_BATCH_SIZE" not in message


def test_a_huge_intermediate_behind_a_small_output_is_refused(tmp_path: Path) -> None:
    message = refused(make_expand_bomb(tmp_path / "hidden.onnx", hide_in_intermediate=True))
    assert "intermediate tensor 'big' of shape [32768, 32768]" in message and "4.0 GiB" in message


def test_a_declared_small_shape_does_not_hide_a_huge_tensor(tmp_path: Path) -> None:
    model = load_model_file(make_expand_bomb(tmp_path / "liar.onnx"))
    for dim in model.graph.output[0].type.tensor_type.shape.dim:
        dim.dim_value = 1
    model.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1]))
    before = model.SerializeToString()
    assert "4.0 GiB" in refused(model)
    assert model.SerializeToString() == before  # the caller's model is not modified


@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_ordinary_models_pass(tmp_path: Path, batch: int) -> None:
    for path in (
        make_affine(tmp_path / "affine.onnx", n_features=512),
        make_softmax_classifier(tmp_path / "clf.onnx", 64, 10),
    ):
        check_tensor_sizes(path, max_batch_size=batch, max_tensor_bytes=GIB)
        check_tensor_sizes(load_model_file(path), max_batch_size=batch, max_tensor_bytes=GIB)


def test_a_per_row_intermediate_scales_with_the_max_batch_size(tmp_path: Path) -> None:
    path = make_per_row_expansion(tmp_path / "rows.onnx")  # 16,000 bytes a row
    check_tensor_sizes(path, max_batch_size=64, max_tensor_bytes=GIB)  # 1,024,000 bytes
    message = refused(path, batch=64, limit=512 * 1024)
    assert "intermediate tensor 'expanded' of shape [64, 1000, 4]" in message
    assert "1024000 bytes" in message and "1000.0 KiB" in message
    assert "at max batch size 64" in message and "limit of 512.0 KiB" in message
    assert "LASTMILE_MAX_BATCH_SIZE" in message and "LASTMILE_MAX_TENSOR_BYTES" in message
    check_tensor_sizes(path, max_batch_size=16, max_tensor_bytes=512 * 1024)  # 256,000 bytes


def test_onnxruntime_agrees_with_the_inferred_size(tmp_path: Path) -> None:
    """The size the check computes is the size the runtime really allocates."""
    path = make_per_row_expansion(tmp_path / "rows.onnx", rows=10)
    sizes = {
        s.name: s
        for s in onnx_limits.tensor_sizes(load_model_file(path), max_batch_size=3, where="m")
    }
    exposed = load_model_file(path)  # the intermediate made an output, to read it back
    exposed.graph.output.append(helper.make_tensor_value_info("expanded", TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    _, expanded = session.run(None, {"x": np.ones((3, 4), np.float32)})
    assert sizes["expanded"].shape == expanded.shape == (3, 10, 4)
    assert sizes["expanded"].nbytes == expanded.nbytes


def test_dims_that_stay_unknown_are_skipped_not_guessed(tmp_path: Path) -> None:
    # the target shape comes from the request's values: nothing can be said at import
    by_value = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "by_value",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    check_tensor_sizes(
        save_graph(by_value, tmp_path / "v.onnx"), max_batch_size=64, max_tensor_bytes=64
    )
    # a symbolic non-batch dim (sequence length) times a large constant
    tiled = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "tiled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "wide"])],
        [int64_tensor("repeats", [1, 1_000_000])],
    )
    check_tensor_sizes(
        save_graph(tiled, tmp_path / "t.onnx"), max_batch_size=64, max_tensor_bytes=64
    )


def test_a_model_without_a_batch_dimension_is_checked_as_declared(tmp_path: Path) -> None:
    path = make_affine(tmp_path / "fixed.onnx", n_features=1024, batch_dim=8)  # 32 KiB
    check_tensor_sizes(path, max_batch_size=4096, max_tensor_bytes=32 * 1024)
    message = refused(path, batch=4096, limit=32 * 1024 - 1)
    assert "of shape [8, 1024]" in message and "32.0 KiB" in message and "per request" in message


def test_large_weights_are_not_needed_to_size_the_graph(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((2048, 2048), np.float32), "w")  # 16 MiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2048])],
        [weights],
    )
    path = save_graph(graph, tmp_path / "dense.onnx")
    message = refused(path, batch=64, limit=256 * 1024)
    assert "output tensor 'y' of shape [64, 2048]" in message and "512.0 KiB" in message


def test_human_bytes() -> None:
    assert human_bytes(12) == "12 bytes"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(4 * GIB) == "4.0 GiB"


def test_the_setting_defaults_to_one_gib_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().max_tensor_bytes == GIB
    monkeypatch.setenv("LASTMILE_MAX_TENSOR_BYTES", "4096")
    assert Settings().max_tensor_bytes == 4096
    monkeypatch.setenv("LASTMILE_MAX_TENSOR_BYTES", "0")
    with pytest.raises(ValueError, match="max_tensor_bytes"):
        Settings()


def test_command_line_lists_tensors_and_exits_2_on_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert onnx_limits.main([str(make_affine(tmp_path / "ok.onnx"))]) == 0
    assert onnx_limits.main([str(make_expand_bomb(tmp_path / "bomb.onnx"))]) == 2
    captured = capsys.readouterr()
    assert "4.0 GiB" in captured.out and "'y'" in captured.err


# -- external data --------------------------------------------------------------------------


def external_refusal(path: Path) -> str:
    """Refused the same way at import (inspect_onnx), when embedding, and before a deploy."""
    messages = []
    for check in (
        lambda: inspect_onnx(path, max_bytes=LIMIT),
        lambda: load_self_contained(path, max_bytes=LIMIT),
        lambda: check_deployable(path, max_batch_size=64, max_tensor_bytes=GIB),
    ):
        with pytest.raises(InvalidModelFile) as info:
            check()
        messages.append(str(info.value))
    assert all(path.name in m and "'w'" in m for m in messages), messages
    return messages[0]


def test_external_data_escaping_with_dotdot_is_refused(tmp_path: Path) -> None:
    write_weights(tmp_path / "x")
    message = external_refusal(make_external(tmp_path / "model" / "m.onnx", "../x"))
    assert "'../x'" in message and "leaves the model's folder" in message and "'..'" in message


def test_external_data_at_an_absolute_path_is_refused(tmp_path: Path) -> None:
    secret = write_weights(tmp_path / "secret.bin")
    message = external_refusal(make_external(tmp_path / "model" / "m.onnx", str(secret)))
    assert "an absolute path" in message and "next to the model" in message


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_external_data_through_a_symlink_is_refused(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    real = write_weights(tmp_path / "secret.bin" if target == "outside" else folder / "real.bin")
    os.symlink(real, folder / "weights.bin")
    message = external_refusal(make_external(folder / "m.onnx", "weights.bin"))
    assert "symbolic link" in message and "copy the data file" in message


def test_external_data_under_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    write_weights(tmp_path / "elsewhere" / "w.bin")
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "model" / "data")
    assert "symbolic link" in external_refusal(
        make_external(tmp_path / "model" / "m.onnx", "data/w.bin")
    )


@pytest.mark.parametrize("name", ["model.py", "config.pbtxt", "model.onnx", "Model.PY"])
def test_external_data_named_like_a_generated_file_is_refused(tmp_path: Path, name: str) -> None:
    write_weights(tmp_path / name)
    message = external_refusal(make_external(tmp_path / "upload.onnx", name))
    assert "a name Lastmile writes into Triton's version folder" in message
    assert "config.pbtxt" in message and "model.py" in message and "rename" in message


def test_external_data_pointing_at_the_model_itself_is_refused(tmp_path: Path) -> None:
    message = external_refusal(make_external(tmp_path / "self.onnx", "self.onnx"))
    assert "the model file itself" in message


def test_external_data_past_the_end_of_its_file_or_of_the_wrong_size_is_refused(
    tmp_path: Path,
) -> None:
    write_weights(tmp_path / "w.bin")
    message = external_refusal(make_external(tmp_path / "late.onnx", "w.bin", offset=8))
    assert "past the end of that 16-byte file" in message
    write_weights(tmp_path / "long.bin", n=8)
    model = load_model_file(make_external(tmp_path / "short.onnx", "long.bin"))
    model.graph.initializer[0].external_data[2].value = "32"  # length
    (tmp_path / "short.onnx").write_bytes(model.SerializeToString())
    assert "32 bytes, but its shape [4] needs 16" in external_refusal(tmp_path / "short.onnx")


def test_external_data_inside_the_folder_is_accepted_and_embedded(tmp_path: Path) -> None:
    write_weights(tmp_path / "data" / "w.bin", prefix=b"\0" * 8)
    path = make_external(tmp_path / "m.onnx", "data/w.bin", offset=8)
    model = load_model_file(path)
    assert check_external_data(path, model, max_bytes=LIMIT) == ["data/w.bin"]
    assert inspect_onnx(path, max_bytes=LIMIT).signature.batched
    embedded, locations = load_self_contained(path, max_bytes=LIMIT)
    assert locations == ["data/w.bin"]
    assert all(t.data_location == TensorProto.DEFAULT for t in embedded.graph.initializer)
    onnx.checker.check_model(embedded)
    session = ort.InferenceSession(embedded.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 5, dtype=np.float32), (2, 1)))
    # once embedded and stored alone, the file is deployable; the original is not
    stored = tmp_path / "store" / "abc.onnx"
    stored.parent.mkdir()
    stored.write_bytes(embedded.SerializeToString())
    check_deployable(stored, max_batch_size=64, max_tensor_bytes=GIB)
    with pytest.raises(InvalidModelFile) as info:
        check_deployable(path, max_batch_size=64, max_tensor_bytes=GIB, where="model 'm' v1")
    assert "model 'm' v1" in str(info.value) and "import the model again" in str(info.value)


def test_a_self_contained_model_is_loaded_as_it_is(tmp_path: Path) -> None:
    path = make_affine(tmp_path / "plain.onnx")
    model, locations = load_self_contained(path, max_bytes=LIMIT)
    assert locations == [] and model.SerializeToString() == path.read_bytes()


def test_deploy_check_refuses_a_stored_bomb_with_the_name_given(tmp_path: Path) -> None:
    path = make_expand_bomb(tmp_path / "0123abcd.onnx")
    with pytest.raises(InvalidModelFile) as info:
        check_deployable(
            path, max_batch_size=0, max_tensor_bytes=GIB, where="model 'bomb' version 1"
        )
    assert str(info.value).startswith("model 'bomb' version 1: output tensor 'y'")
    assert "4.0 GiB" in str(info.value) and "per request" in str(info.value)
