"""Repairing published versions from the stored files, and finding staging leftovers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from manager.domain import Signature, TensorSpec
from manager.errors import Conflict, LastmileError
from manager.repository.config import model_config
from manager.repository.python_model import python_model_source
from manager.repository.writer import DigestCache, RepositoryWriter, sha256_file, tree_digest
from manager.triton.client import ModelConfig

SIGNATURE = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
)
MODEL_PY = {"model.py": python_model_source().encode()}


def config_for(versions: list[int], name: str = "ws.m") -> ModelConfig:
    return model_config(
        triton_name=name, signature=SIGNATURE, profile="cpu", max_batch_size=8, versions=versions
    )


@pytest.fixture
def stored(tmp_path: Path) -> dict[int, Path]:
    (tmp_path / "store").mkdir()
    files = {}
    for version in (1, 2):
        files[version] = tmp_path / "store" / f"v{version}.onnx"
        files[version].write_bytes(f"the bytes of version {version}".encode() * 100)
    return files


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(
    repo: RepositoryWriter,
    stored: dict[int, Path],
    *,
    repair: bool = False,
    expected_sha256: dict[int, str] | None = None,
) -> list[int]:
    extras = {1: MODEL_PY, 2: MODEL_PY}
    return repo.write_model(
        "ws.m", config_for([1, 2]), stored, extras, repair=repair, expected_sha256=expected_sha256
    )


def test_repair_replaces_a_truncated_or_deleted_file_from_the_store(
    tmp_path: Path, stored: dict[int, Path]
) -> None:
    repo = RepositoryWriter(tmp_path / "repo")
    publish(repo, stored)
    model_file = repo.root / "ws.m" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:10])
    (repo.root / "ws.m" / "2" / "model.py").unlink()
    with pytest.raises(Conflict, match="already published with different files"):
        publish(repo, stored)
    digests = {v: sha(p) for v, p in stored.items()}
    assert publish(repo, stored, repair=True, expected_sha256=digests) == [1, 2]
    assert model_file.read_bytes() == stored[1].read_bytes()
    assert (repo.root / "ws.m" / "2" / "model.py").read_bytes() == MODEL_PY["model.py"]
    assert publish(repo, stored, repair=True, expected_sha256=digests) == []  # nothing left
    assert not (repo.root / ".staging").exists()


def test_a_damaged_stored_file_is_never_published(tmp_path: Path, stored: dict[int, Path]) -> None:
    repo = RepositoryWriter(tmp_path / "repo")
    digests = {v: sha(p) for v, p in stored.items()}
    publish(repo, stored)
    stored[2].write_bytes(b"bit rot")
    # the published copy of version 2 is intact: it stays, the rest can still be repaired
    (repo.root / "ws.m" / "1" / "model.onnx").unlink()
    assert publish(repo, stored, repair=True, expected_sha256=digests) == [1]
    assert (repo.root / "ws.m" / "2" / "model.onnx").read_bytes() != b"bit rot"
    # once the published copy is damaged too, nothing can restore it: a clear error
    (repo.root / "ws.m" / "2" / "model.onnx").unlink()
    with pytest.raises(LastmileError, match=r"stored file of version 2 of 'ws.m'.*is damaged"):
        publish(repo, stored, repair=True, expected_sha256=digests)
    assert not (repo.root / "ws.m" / "2" / "model.onnx").exists()


def test_staging_left_by_a_killed_writer_is_found_but_not_one_in_use(
    tmp_path: Path, stored: dict[int, Path]
) -> None:
    repo = RepositoryWriter(tmp_path / "repo")
    publish(repo, stored)
    left = repo.root / ".staging" / "deadbeef"
    (left / "ws.m" / "1").mkdir(parents=True)
    (left / "ws.m" / "1" / "model.onnx").write_bytes(b"half")
    with repo.batch() as batch:  # a writer at work holds its staging folder
        batch.write_model("ws.other", config_for([1], "ws.other"), {1: stored[1]}, {1: MODEL_PY})
        assert repo.leftovers() == [".staging/deadbeef"]
        assert repo.remove_leftovers() == [".staging/deadbeef"]
        assert len(list((repo.root / ".staging").iterdir())) == 1  # the batch's own
    assert not left.exists()
    assert repo.leftovers() == []
    assert (repo.root / "ws.other" / "1" / "model.onnx").is_file()


def test_the_digest_cache_never_answers_for_changed_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(b"a" * 100)
    cache = DigestCache()
    assert tree_digest(folder, cache) == {"model.onnx": sha256_file(path)}
    path.write_bytes(b"b" * 100)  # same size, within the same clock tick
    assert cache.sha256(path) == sha256_file(path)
    settled = DigestCache(settle_s=0, max_entries=1)
    assert settled.sha256(path) == sha256_file(path)
    path.write_bytes(b"c" * 10)
    assert settled.sha256(path) == sha256_file(path)
