"""Publishing into the model repository is atomic, and versions are immutable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
from manager.errors import Conflict, InvalidInput, NotFound
from manager.repository import writer as writer_module
from manager.repository.config import ensemble_config, model_config
from manager.repository.python_model import python_model_source
from manager.repository.writer import RepositoryWriter
from manager.triton.client import ModelConfig, config_from_text

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
)
MODEL_PY = {"model.py": python_model_source().encode()}


def config_for(versions: list[int], name: str = "ws.scaler") -> ModelConfig:
    return model_config(
        triton_name=name, signature=SIGNATURE, profile="cpu", max_batch_size=8, versions=versions
    )


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (files with content), ignoring the writer's lock file."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != ".lock"
    }


@pytest.fixture
def sources(tmp_path: Path) -> dict[int, Path]:
    folder = tmp_path / "store"
    folder.mkdir()
    files = {}
    for version in (1, 2, 3):
        files[version] = folder / f"v{version}.onnx"
        files[version].write_bytes(f"onnx bytes of version {version}".encode())
    return files


@pytest.fixture
def repo(tmp_path: Path) -> RepositoryWriter:
    return RepositoryWriter(tmp_path / "repository")


def test_new_model_is_published_with_config_and_versions(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    added = repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    assert added == [1]
    folder = repo.root / "ws.scaler"
    assert (folder / "1" / "model.onnx").read_bytes() == sources[1].read_bytes()
    assert (folder / "1" / "model.py").read_text() == python_model_source()
    assert repo.read_config("ws.scaler") == config_for([1])
    assert repo.list_models() == ["ws.scaler"]
    assert not (repo.root / ".staging").exists()


def test_republishing_identical_content_changes_nothing(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    before = snapshot(repo.root)
    assert repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY}) == []
    assert snapshot(repo.root) == before


def test_a_new_version_is_added_and_the_config_replaced(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    added = repo.write_model(
        "ws.scaler", config_for([1, 2]), {1: sources[1], 2: sources[2]}, {1: MODEL_PY, 2: MODEL_PY}
    )
    assert added == [2]
    assert (repo.root / "ws.scaler" / "2" / "model.onnx").read_bytes() == sources[2].read_bytes()
    assert list(repo.read_config("ws.scaler").version_policy.specific.versions) == [1, 2]


def test_published_versions_are_immutable(repo: RepositoryWriter, sources: dict[int, Path]) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    before = snapshot(repo.root)
    with pytest.raises(Conflict, match=r"version 1 of model 'ws.scaler'.*different files"):
        repo.write_model(
            "ws.scaler", config_for([1, 2]), {1: sources[2], 2: sources[2]}, {1: MODEL_PY}
        )
    assert snapshot(repo.root) == before
    assert not (repo.root / ".staging").exists()


def test_missing_source_file_leaves_a_new_model_unpublished(
    repo: RepositoryWriter, sources: dict[int, Path], tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        repo.write_model(
            "ws.scaler", config_for([1, 2]), {1: sources[1], 2: tmp_path / "missing.onnx"}
        )
    assert repo.list_models() == []
    assert snapshot(repo.root) == {}


def test_missing_source_file_leaves_the_serving_model_as_it_was(
    repo: RepositoryWriter, sources: dict[int, Path], tmp_path: Path
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    before = snapshot(repo.root)
    with pytest.raises(NotFound):
        repo.write_model(
            "ws.scaler", config_for([1, 2]), {1: sources[1], 2: tmp_path / "missing.onnx"}
        )
    assert snapshot(repo.root) == before


def test_failure_while_moving_into_place_rolls_back(
    repo: RepositoryWriter, sources: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    before = snapshot(repo.root)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        repo.write_model(
            "ws.scaler",
            config_for([1, 2, 3]),
            {1: sources[1], 2: sources[2], 3: sources[3]},
            {1: MODEL_PY, 2: MODEL_PY, 3: MODEL_PY},
        )
    assert snapshot(repo.root) == before
    assert not (repo.root / ".staging").exists()


def test_ensemble_gets_an_empty_version_folder(repo: RepositoryWriter) -> None:
    pipeline = PipelineSpec(
        name="fraud",
        steps=(PipelineStep("scale", "scaler", 1, SIGNATURE, {"x": TensorRef("inputs", "x")}),),
        outputs={"y": TensorRef("scale", "y")},
    )
    config = ensemble_config(
        triton_name="ws.fraud.v1",
        pipeline=pipeline,
        step_models={"scale": "ws.scaler"},
        max_batch_size=8,
    )
    repo.write_ensemble("ws.fraud.v1", config)
    folder = repo.root / "ws.fraud.v1"
    assert (folder / "1").is_dir() and list((folder / "1").iterdir()) == []
    assert repo.read_config("ws.fraud.v1") == config
    # Triton refuses a pushed ensemble without any file, so the push carries a placeholder
    assert repo.files_for_push("ws.fraud.v1") == {"1/.keep": b""}
    with pytest.raises(InvalidInput, match="not an ensemble"):
        repo.write_ensemble("ws.scaler", config_for([1]))


def test_files_for_push_lists_every_version_file(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model(
        "ws.scaler", config_for([1, 2]), {1: sources[1], 2: sources[2]}, {1: MODEL_PY, 2: MODEL_PY}
    )
    files = repo.files_for_push("ws.scaler")
    assert sorted(files) == ["1/model.onnx", "1/model.py", "2/model.onnx", "2/model.py"]
    assert files["2/model.onnx"] == sources[2].read_bytes()
    with pytest.raises(NotFound):
        repo.files_for_push("ws.missing")


def test_read_config_parses_with_the_real_schema(repo: RepositoryWriter) -> None:
    with pytest.raises(NotFound, match=r"ws\.none"):
        repo.read_config("ws.none")
    folder = repo.root / "ws.typo"
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text('name: "ws.typo"\nmax_batch_sizee: 1\n')
    with pytest.raises(InvalidInput, match="max_batch_sizee"):
        repo.read_config("ws.typo")


def test_remove_model_takes_the_folder_out(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: MODEL_PY})
    assert repo.remove_model("ws.scaler") is True
    assert repo.list_models() == []
    assert not (repo.root / "ws.scaler").exists()
    assert not (repo.root / ".staging").exists()
    assert repo.remove_model("ws.scaler") is False


def test_remove_versions_drops_only_versions_the_config_no_longer_names(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1, 2]), {1: sources[1], 2: sources[2]})
    with pytest.raises(Conflict, match="still in its config"):
        repo.remove_versions("ws.scaler", keep={2})
    repo.write_model("ws.scaler", config_for([2]), {2: sources[2]})
    assert repo.remove_versions("ws.scaler", keep={2}) == [1]
    assert sorted(p.name for p in (repo.root / "ws.scaler").iterdir()) == ["2", "config.pbtxt"]


def test_list_models_ignores_hidden_and_incomplete_folders(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]})
    (repo.root / ".staging" / "leftover" / "ws.ghost").mkdir(parents=True)
    (repo.root / "ws.half").mkdir()
    assert repo.list_models() == ["ws.scaler"]
    assert RepositoryWriter(repo.root / "nowhere").list_models() == []


@pytest.mark.parametrize("name", ["../escape", "ws/../x", ".staging", "", "Ws.Upper", "a..b"])
def test_unsafe_model_names_are_refused_before_any_write(
    repo: RepositoryWriter, sources: dict[int, Path], name: str
) -> None:
    with pytest.raises(InvalidInput):
        repo.write_model(name, config_for([1]), {1: sources[1]})
    assert not repo.root.exists()


def test_config_name_must_match_the_folder(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    with pytest.raises(InvalidInput, match=r"published as"):
        repo.write_model("ws.other", config_for([1]), {1: sources[1]})


@pytest.mark.parametrize("bad", ["../model.py", "sub/model.py", "config.pbtxt", "model.onnx"])
def test_unsafe_extra_file_names_are_refused(
    repo: RepositoryWriter, sources: dict[int, Path], bad: str
) -> None:
    with pytest.raises(InvalidInput):
        repo.write_model("ws.scaler", config_for([1]), {1: sources[1]}, {1: {bad: b"x"}})
    assert repo.list_models() == []


def test_written_config_text_is_what_triton_reads(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]})
    text = (repo.root / "ws.scaler" / "config.pbtxt").read_text()
    assert config_from_text(text) == config_for([1])
    assert 'backend: "python"' in text
    assert os.stat(repo.root / "ws.scaler" / "config.pbtxt").st_size > 0


def test_config_naming_a_version_without_files_is_refused(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    with pytest.raises(InvalidInput, match="serves version 2"):
        repo.write_model("ws.scaler", config_for([1, 2]), {1: sources[1]})
    assert repo.list_models() == []
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]})
    repo.write_model("ws.scaler", config_for([1, 2]), {2: sources[2]})  # 1 is published
    assert list(repo.read_config("ws.scaler").version_policy.specific.versions) == [1, 2]


# -- batches --------------------------------------------------------------------------------
def fraud_ensemble() -> ModelConfig:
    pipeline = PipelineSpec(
        name="fraud",
        steps=(PipelineStep("scale", "scaler", 1, SIGNATURE, {"x": TensorRef("inputs", "x")}),),
        outputs={"y": TensorRef("scale", "y")},
    )
    return ensemble_config(
        triton_name="ws.fraud.v1",
        pipeline=pipeline,
        step_models={"scale": "ws.scaler"},
        max_batch_size=8,
    )


def test_a_batch_publishes_what_single_writes_would(
    repo: RepositoryWriter, sources: dict[int, Path], tmp_path: Path
) -> None:
    single = RepositoryWriter(tmp_path / "single")
    single.write_model("ws.scaler", config_for([1, 2]), {1: sources[1], 2: sources[2]})
    single.write_model("ws.other", config_for([1], "ws.other"), {1: sources[3]}, {1: MODEL_PY})
    single.write_ensemble("ws.fraud.v1", fraud_ensemble())
    with repo.batch() as batch:
        batch.write_model("ws.scaler", config_for([1, 2]), {1: sources[1], 2: sources[2]})
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: sources[3]}, {1: MODEL_PY})
        batch.write_ensemble("ws.fraud.v1", fraud_ensemble())
        assert repo.list_models() == []  # nothing is visible before the block ends
    assert snapshot(repo.root) == snapshot(single.root)
    assert batch.added == {"ws.scaler": [1, 2], "ws.other": [1], "ws.fraud.v1": [1]}
    with repo.batch() as again:  # adding a version to a published model
        again.write_model("ws.scaler", config_for([1, 2, 3]), {3: sources[3]})
    assert again.added == {"ws.scaler": [3]}
    assert not (repo.root / ".staging").exists()


def test_a_batch_with_a_conflict_publishes_nothing(
    repo: RepositoryWriter, sources: dict[int, Path]
) -> None:
    repo.write_model("ws.scaler", config_for([1]), {1: sources[1]})
    before = snapshot(repo.root)
    with pytest.raises(Conflict, match=r"version 1 of model 'ws\.scaler'"), repo.batch() as batch:
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: sources[1]})
        batch.write_model("ws.scaler", config_for([1]), {1: sources[2]})
    assert snapshot(repo.root) == before
    with pytest.raises(RuntimeError), repo.batch() as batch:
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: sources[1]})
        raise RuntimeError("the caller failed half way")
    assert snapshot(repo.root) == before
    with pytest.raises(InvalidInput, match="twice"), repo.batch() as batch:
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: sources[1]})
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: sources[1]})
    assert snapshot(repo.root) == before
    assert not (repo.root / ".staging").exists()
