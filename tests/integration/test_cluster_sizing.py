"""A pipeline's size on a Kubernetes cluster, kept with the pipeline (``lastmile pipeline
cluster``) and rendered by ``export k8s`` unless one export says otherwise; through the real
API (in process, no Triton) on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    for api in running_api(tmp_path / "home", database_url):
        api.import_model("double", make_affine(tmp_path / "d.onnx", 4, 2.0, 0.0))
        r = api.call("POST", f"{WS}/pipelines", json={"name": "fraud", "steps": ["double"]})
        assert r.status_code == 201, r.text
        yield api


def _sized(api: Api, **query: Any) -> tuple[int, int, int]:
    """(Triton pods, GPUs per pod, gateway pods) of the exported bundle's manifests."""
    r = api.call("GET", f"{WS}/pipelines/fraud/export/k8s", params=query)
    assert r.status_code == 200, r.text
    docs: list[dict[str, Any]] = []
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".yaml"):
                text = tar.extractfile(member).read()  # type: ignore[union-attr]
                docs += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    sts = next(d for d in docs if d.get("kind") == "StatefulSet")
    limits = sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    gateway = next(d for d in docs if d.get("kind") == "Deployment")
    return sts["spec"]["replicas"], int(limits["nvidia.com/gpu"]), gateway["spec"]["replicas"]


def test_the_export_renders_the_pipelines_own_size_unless_told_otherwise(api: Api) -> None:
    url = f"{WS}/pipelines/fraud/cluster"
    shown = api.call("GET", url).json()
    assert (shown["replicas"], shown["gpus"], shown["gateway_replicas"], shown["set"]) == (
        1, 1, 2, [],
    )  # fmt: skip
    assert _sized(api) == (1, 1, 2)
    r = api.call("PUT", url, json={"replicas": 3, "gpus": 2})
    assert r.status_code == 200, r.text
    assert r.json()["set"] == ["gpus", "replicas"]
    assert _sized(api) == (3, 2, 2)  # the pipeline's own
    assert _sized(api, replicas=5) == (5, 2, 2)  # one export's choice wins for that export
    r = api.call("PUT", url, json={"replicas": None, "gateway_replicas": 4})
    assert r.json()["set"] == ["gateway_replicas", "gpus"]
    assert _sized(api) == (1, 2, 4)


def test_bad_sizes_are_refused_and_change_nothing(api: Api) -> None:
    url = f"{WS}/pipelines/fraud/cluster"
    api.call("PUT", url, json={"gpus": 2})
    for body, words in (
        ({"replicas": 0}, "replicas (Triton pods) must be a whole number from 1 to 64"),
        ({"gpus": 9}, "gpus (GPUs per Triton pod (gpu overlay)) must be"),
        ({"gpus": 1, "gateway_replicas": 65}, "gateway_replicas"),
        ({"pods": 3}, "pods"),  # not a setting
    ):
        r = api.call("PUT", url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert words in r.text, (body, r.text)
    assert api.call("GET", url).json()["gpus"] == 2  # the refused changes left it alone
    viewer = api.user("watcher", "default", "viewer")
    assert api.call("PUT", url, key=viewer, json={"gpus": 1}).status_code == 403
    assert api.call("GET", url, key=viewer).json()["gpus"] == 2
    assert api.call("GET", f"{WS}/pipelines/ghost/cluster").status_code == 404
