"""Model resource limits and external data through the real import path (API in-process on
SQLite, no Triton): a graph one request could use to exhaust memory is a 4xx problem naming
the size, with nothing stored; external data ends up inside the one stored file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from converters.onnx_import import load_model_file
from converters.onnx_limits import check_deployable
from manager import store
from manager.services import models
from manager.services.context import Platform
from tests.integration.api_harness import Api, running_api
from tests.onnx_limit_models import make_expand_bomb, make_external, make_per_row_expansion
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"
MIB = 1024 * 1024


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from running_api(
        tmp_path / "home", f"sqlite:///{tmp_path / 'api.db'}", max_tensor_bytes=2 * MIB
    )


def _upload(api: Api, name: str, path: Path, **params: object) -> object:
    return api.call(
        "POST",
        f"{WS}/models/{name}/versions",
        content=path.read_bytes(),
        params={"filename": path.name, **params},
        headers={"content-type": "application/octet-stream"},
    )


def _problem(response: object, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    return response.json()  # type: ignore[attr-defined, no-any-return]


def _stored_nothing(api: Api) -> None:
    assert api.call("GET", f"{WS}/models").json()["items"] == []
    assert list(api.settings.models_dir.iterdir()) == []
    assert [p for p in api.settings.run_dir.iterdir() if p.name.startswith(".upload")] == []


def test_an_expand_to_4_gib_is_a_422_naming_the_size_and_nothing_is_stored(
    api: Api, tmp_path: Path
) -> None:
    body = _problem(_upload(api, "bomb", make_expand_bomb(tmp_path / "bomb.onnx")), 422)
    assert body["type"] == "InvalidModelFile"
    assert "bomb.onnx: output tensor 'y' of shape [32768, 32768]" in body["detail"]
    assert "4.0 GiB" in body["detail"] and "limit of 2.0 MiB" in body["detail"]
    assert "LASTMILE_MAX_TENSOR_BYTES" in body["hint"]
    assert api.call("GET", f"{WS}/models/bomb").status_code == 404
    _stored_nothing(api)


def test_the_models_max_batch_size_decides_at_import_and_when_it_is_raised(
    api: Api, tmp_path: Path
) -> None:
    # 16,000 bytes a row: 1.0 MB at the default batch of 64, under the 2 MiB limit
    first = _upload(api, "rows", make_per_row_expansion(tmp_path / "rows.onnx"))
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    serving = f"{WS}/models/rows/serving"
    body = _problem(api.call("PUT", serving, json={"max_batch_size": 256}), 422)
    assert "model 'rows' version 1: intermediate tensor 'expanded'" in body["detail"]
    assert "[256, 1000, 4]" in body["detail"] and "at max batch size 256" in body["detail"]
    assert api.call("GET", serving).json()["serving"]["max_batch_size"] is None
    assert api.call("PUT", serving, json={"max_batch_size": 128}).status_code == 200
    # 17,600 bytes a row would pass at 64, but this model is served at 128
    wider = make_per_row_expansion(tmp_path / "wider.onnx", rows=1100)
    body = _problem(_upload(api, "rows", wider), 422)
    assert "[128, 1100, 4]" in body["detail"] and "2.1 MiB" in body["detail"]
    versions = api.call("GET", f"{WS}/models/rows").json()["versions"]
    assert [v["version"] for v in versions] == [1]
    assert len(list(api.settings.models_dir.iterdir())) == 1


def test_an_upload_whose_external_data_is_not_in_it_is_refused_with_a_way_out(
    api: Api, tmp_path: Path
) -> None:
    path = make_external(tmp_path / "ext.onnx", "ext.onnx.data")
    body = _problem(_upload(api, "ext", path), 422)
    assert "'ext.onnx.data', which does not exist next to the model" in body["detail"]
    assert "save_as_external_data=False" in body["hint"]
    _stored_nothing(api)


def test_external_data_is_embedded_in_the_one_stored_file(api: Api, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.arange(1, 5, dtype=np.float32).tobytes())
    path = make_external(folder / "model.onnx", "w.bin")
    platform = Platform(settings=api.settings, engine=store.make_engine(api.settings.db_url))
    try:
        info = models.import_model(platform, workspace="default", name="ext", path=path)
    finally:
        platform.engine.dispose()
    assert info["details"]["external_data_embedded"] == ["w.bin"]
    (stored,) = api.settings.models_dir.iterdir()
    assert stored.name == f"{info['sha256']}.onnx"
    model = load_model_file(stored)
    assert all(t.data_location == TensorProto.DEFAULT for t in model.graph.initializer)
    check_deployable(stored, max_batch_size=64, max_tensor_bytes=api.settings.max_tensor_bytes)
    session = ort.InferenceSession(str(stored), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]])
    # the same export, moved away from its data file, is still served from the registry
    (folder / "w.bin").unlink()
    artifact = api.call("GET", f"{WS}/models/ext/versions/1/artifact")
    assert artifact.status_code == 200 and artifact.content == stored.read_bytes()


def test_an_ordinary_model_is_stored_as_uploaded(api: Api, tmp_path: Path) -> None:
    path = make_affine(tmp_path / "scaler.onnx")
    assert _upload(api, "scaler", path).status_code == 201  # type: ignore[attr-defined]
    (stored,) = api.settings.models_dir.iterdir()
    assert stored.read_bytes() == path.read_bytes()


def test_importing_the_same_file_again_repairs_a_damaged_stored_copy(
    api: Api, tmp_path: Path
) -> None:
    """The stored file is the source every repair copies from: a re-import of the same bytes
    replaces a damaged (truncated) copy instead of keeping it."""
    path = make_affine(tmp_path / "same.onnx", 4, 2.0, 0.0)
    first = _upload(api, "same", path)
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    (stored,) = list(api.settings.models_dir.iterdir())
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])
    again = _upload(api, "same", path)
    assert again.status_code in (200, 201), again.text  # type: ignore[attr-defined]
    assert stored.read_bytes() == good
