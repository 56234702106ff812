"""The management API in-process (no Triton attached) on SQLite and PostgreSQL: imports,
pipelines, versions, deletion, ETags, and every refusal as problem+json with nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto

from manager.settings import Settings
from tests.integration.api_harness import running_api
from tests.onnx_models import make_affine, make_softmax_classifier

WS = "/api/v1/workspaces/default"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Settings]]:
    for harness in running_api(tmp_path / "home", database_url, max_upload_bytes=4096):
        harness.client.headers["authorization"] = f"Bearer {harness.owner_key}"
        yield harness.client, harness.settings


def _upload(client: TestClient, name: str, path: Path, **params: object) -> object:
    return client.post(
        f"{WS}/models/{name}/versions",
        content=path.read_bytes(),
        params={"filename": path.name, **params},
        headers={"content-type": "application/octet-stream"},
    )


def _items(client: TestClient, path: str) -> list:  # type: ignore[type-arg]
    return client.get(path).json()["items"]  # type: ignore[no-any-return]


def _nothing_written(client: TestClient, settings: Settings) -> None:
    assert _items(client, f"{WS}/models") == []
    assert list(settings.models_dir.iterdir()) == []
    assert [p for p in settings.run_dir.iterdir() if p.name.startswith(".upload")] == []


def test_import_registers_versions_with_signature(
    api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, settings = api
    path = make_affine(tmp_path / "scaler.onnx", 4, output_name="z")
    first = _upload(client, "scaler", path)
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    body = first.json()  # type: ignore[attr-defined]
    assert body["version"] == 1 and body["signature"]["batched"] is True
    assert body["signature"]["outputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 4]}]
    again = _upload(client, "scaler", path)
    assert again.status_code == 200  # type: ignore[attr-defined]
    assert again.json()["version"] == 1 and again.json()["created"] is False  # type: ignore[attr-defined]
    forced = _upload(client, "scaler", path, force="true")
    assert forced.json()["version"] == 2  # type: ignore[attr-defined]
    # content-addressed: the same bytes are kept once
    assert len(list(settings.models_dir.iterdir())) == 1
    assert body["created_by"] == "owner"
    one = client.get(f"{WS}/models/scaler/versions/1")
    assert one.status_code == 200 and one.json()["details"]["source_sha256"] == body["sha256"]
    artifact = client.get(f"{WS}/models/scaler/versions/1/artifact")
    assert artifact.status_code == 200 and artifact.content == path.read_bytes()
    # delete a version no deployment serves; the file stays while version 2 keeps it
    assert client.delete(f"{WS}/models/scaler/versions/1").status_code == 204
    assert [v["version"] for v in client.get(f"{WS}/models/scaler").json()["versions"]] == [2]
    assert len(list(settings.models_dir.iterdir())) == 1
    assert client.delete(f"{WS}/models/scaler/versions/2").status_code == 204
    assert client.get(f"{WS}/models/scaler").status_code == 404
    assert list(settings.models_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "name", "status", "kind", "message"),
    [
        (b"\x08\x07garbage" * 20, "broken", 422, "InvalidModelFile", "bad.onnx"),
        (b"x" * 5000, "big", 413, "PayloadTooLarge", "4096 bytes"),
        (b"", "empty", 422, "InvalidInput", "empty"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    api: tuple[TestClient, Settings],
    content: bytes,
    name: str,
    status: int,
    kind: str,
    message: str,
) -> None:
    client, settings = api
    r = client.post(
        f"{WS}/models/{name}/versions",
        content=content,
        params={"filename": "bad.onnx"},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == kind and message in r.json()["detail"]
    _nothing_written(client, settings)


def test_invalid_model_name_is_refused(api: tuple[TestClient, Settings], tmp_path: Path) -> None:
    client, settings = api
    r = _upload(client, "Bad_Name", make_affine(tmp_path / "a.onnx"))
    assert r.status_code == 422  # type: ignore[attr-defined]
    assert "name" in r.json()["detail"]  # type: ignore[attr-defined]
    _nothing_written(client, settings)


def test_pipeline_refusals_name_the_problem(
    api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, _ = api
    _upload(client, "scaler", make_affine(tmp_path / "s.onnx", 4, output_name="z"))
    _upload(client, "ints", make_affine(tmp_path / "i.onnx", 4, dtype=TensorProto.INT64))
    _upload(client, "wide", make_softmax_classifier(tmp_path / "w.onnx", 8, 3))

    r = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler", "ghost"]})
    assert r.status_code == 404 and "model 'ghost' is not registered" in r.json()["detail"]
    r = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler", "ints"]})
    assert r.status_code == 422 and r.json()["type"] == "PipelineError"
    assert "FP32" in r.json()["detail"] and "INT64" in r.json()["detail"]
    r = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler", "wide"]})
    assert r.status_code == 422 and "wide" in r.json()["detail"]
    r = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler:9"]})
    assert r.status_code == 404 and "no version 9" in r.json()["detail"]
    r = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler:x"]})
    assert r.status_code == 422 and "positive integer" in r.json()["detail"]
    assert _items(client, f"{WS}/pipelines") == []

    ok = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler"]})
    assert ok.status_code == 201 and ok.json()["version"] == 1
    assert ok.headers["etag"] == '"v1"'
    same = client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler"]})
    assert same.status_code == 200 and same.json()["created"] is False
    # optimistic concurrency: a write based on an old version is refused
    stale = client.post(
        f"{WS}/pipelines", json={"name": "p", "steps": ["scaler", "scaler"]},
        headers={"if-match": '"v0"'},
    )  # fmt: skip
    assert stale.status_code == 412 and "at version 1" in stale.json()["detail"]
    fresh = client.post(
        f"{WS}/pipelines", json={"name": "p", "steps": ["scaler", "scaler"]},
        headers={"if-match": '"v1"'},
    )  # fmt: skip
    assert fresh.status_code == 201 and fresh.json()["version"] == 2
    checked = client.post(f"{WS}/pipelines/validate", json={"name": "q", "steps": ["scaler"]})
    assert checked.status_code == 200 and checked.json()["valid"] is True
    assert client.get(f"{WS}/pipelines/q").status_code == 404
    versions = client.get(f"{WS}/pipelines/p/versions").json()
    assert [v["version"] for v in versions] == [1, 2]
    assert client.delete(f"{WS}/pipelines/p").status_code == 204
    assert client.get(f"{WS}/pipelines/p").status_code == 404


def test_deploy_without_triton_says_how_to_start_it(
    api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, _ = api
    _upload(client, "scaler", make_affine(tmp_path / "s.onnx", 4, output_name="z"))
    client.post(f"{WS}/pipelines", json={"name": "p", "steps": ["scaler"]})
    r = client.post(f"{WS}/deployments", json={"pipeline": "p", "version": "latest"})
    assert r.status_code == 502 and r.json()["hint"] == "start the system with: lastmile up"
    assert client.get(f"{WS}/deployments").json() == []
    r = client.post(f"{WS}/deployments", json={"pipeline": "p"})
    assert r.status_code == 422 and "version" in r.json()["detail"]
    r = client.post(f"{WS}/deployments", json={"pipeline": "ghost", "version": 1})
    assert r.status_code == 404 and "pipeline 'ghost' does not exist" in r.json()["detail"]
    r = client.post(f"{WS}/deployments", json={"pipeline": "p", "version": 9})
    assert r.status_code == 404 and "no version 9" in r.json()["detail"]
    r = client.post(f"{WS}/deployments", json={"pipeline": "Bad Name", "version": 1})
    assert r.status_code == 422 and "pipeline" in r.json()["detail"]
    assert client.get(f"{WS}/deployments").json() == []


def test_serving_options_are_checked_against_the_model_then_stored(
    api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, _ = api
    _upload(client, "scaler", make_affine(tmp_path / "s.onnx", 4, output_name="z"))
    url = f"{WS}/models/scaler/serving"
    refusals = [
        ({"gpus": [0]}, "need the gpu profile"),
        ({"preferred_batch_sizes": [4, 500]}, "preferred batch sizes [500] are outside 1..64"),
        ({"tuning": ["no-such-preset"]}, "no-such-preset"),
        ({"tuning": ["ensemble"]}, "selects 'ensemble'"),
        ({"instances": 0}, "greater than or equal to 1"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
        ({"max_queue_delay_us": 2**64}, "max_queue_delay_us"),
    ]
    for body, message in refusals:
        r = client.put(url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert message in r.text, (body, r.text)
    assert _items(client, f"{WS}/models")[0]["serving"]["instances"] is None
    etag = client.get(url).headers["etag"]

    r = client.put(
        url,
        json={"instances": 2, "preferred_batch_sizes": [8, 4], "max_queue_delay_us": 500,
              "warmup": True, "tuning": ["response-cache"]},
        headers={"if-match": etag},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["etag"] != etag
    stale = client.put(url, json={"instances": 3}, headers={"if-match": etag})
    assert stale.status_code == 412
    config = r.json()["config"]
    assert "count: 2" in config and "preferred_batch_size: 4" in config
    assert "max_queue_delay_microseconds: 500" in config and "zero_data: true" in config
    assert "response_cache" in config
    assert _items(client, f"{WS}/models")[0]["serving"]["preferred_batch_sizes"] == [8, 4]
    names = {t["name"] for t in client.get("/api/v1/templates").json()}
    assert {"python-onnxruntime", "onnxruntime-gpu", "tensorrt-plan", "ensemble"} <= names
    assert {"dynamic-batching", "response-cache", "tensorrt-accelerator"} <= names


def test_serving_options_refuse_batching_for_a_model_without_batch_dim(
    api: tuple[TestClient, Settings], tmp_path: Path
) -> None:
    client, _ = api
    _upload(client, "fixed", make_affine(tmp_path / "f.onnx", 4, batch_dim=1))
    r = client.put(f"{WS}/models/fixed/serving", json={"max_queue_delay_us": 100})
    assert r.status_code == 422 and "needs a batch dimension" in r.json()["detail"]
