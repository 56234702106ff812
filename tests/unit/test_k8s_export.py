"""`lastmile export k8s` rendering (manager.k8s.export), pure: a repository and a pipeline in,
a Kustomize folder out, which kustomize builds and the manifest checker passes; the routes
point at the StatefulSet's own pods and the gateway may reach exactly those. The end-to-end
export from a running system is in tests/e2e/test_repository_io.py.

Needs kustomize (`make test-deps` installs it): skipped without one, except on CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from manager.errors import InvalidInput
from manager.k8s import build, check
from manager.k8s.export import CONFIGMAP_MAX_BYTES, ExportSettings, render
from rollout.gateway import parse_args

REPOSITORY: dict[str, bytes | None] = {
    "default.double/config.pbtxt": b'name: "default.double"\nbackend: "onnxruntime"\n',
    "default.double/1/model.onnx": bytes(range(256)) * 2000,  # binary, ~500 KB
    "default.triple/config.pbtxt": b'name: "default.triple"\nbackend: "onnxruntime"\n',
    "default.triple/1/model.onnx": bytes(range(256)) * 2000,
    "default.fraud_check.v3/config.pbtxt": b'name: "default.fraud_check.v3"\n',
    "default.fraud_check.v3/1": None,  # an ensemble's empty version folder
}


def _write(files: dict[str, bytes | None], root: Path) -> Path:
    for path, data in files.items():
        if data is None:
            (root / path).mkdir(parents=True, exist_ok=True)
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    return root


def _export(tmp_path: Path, kustomize: list[str], **settings: Any) -> list[dict[str, Any]]:
    files = render(
        workspace="default", pipeline="fraud_check", version=3,
        ensemble="default.fraud_check.v3", repository=REPOSITORY,
        settings=ExportSettings(**settings),
    )  # fmt: skip
    return build(_write(files, tmp_path / "out"), command=kustomize)


def _get(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


@pytest.mark.parametrize("overlay", ["gpu", "cpu-dev"])
def test_the_bundle_builds_and_passes_every_check(
    tmp_path: Path, kustomize: list[str], overlay: str
) -> None:
    manifests = _export(tmp_path, kustomize, overlay=overlay, replicas=3, gpus=2)
    assert check(manifests) == []
    (sts,) = _get(manifests, "StatefulSet")
    assert sts["metadata"]["name"] == "fraud-check-triton" and sts["spec"]["replicas"] == 3
    assert all(m["metadata"]["namespace"] == "lastmile" for m in manifests)
    pod = sts["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert "--load-model=default.fraud_check.v3" in triton["args"]
    assert "--model-control-mode=explicit" in triton["args"]
    limits = triton["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 2 and pod["nodeSelector"]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod

    # the repository reaches /models through ConfigMaps holding exactly its files
    maps = {m["metadata"]["name"]: m for m in _get(manifests, "ConfigMap")}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    mounted: dict[str, bytes] = {}
    for source in volume["projected"]["sources"]:
        cm = maps[source["configMap"]["name"]]  # the generated name, hash suffix and all
        data = {**cm.get("data", {}), **cm.get("binaryData", {})}
        for item in source["configMap"]["items"]:
            value = data[item["key"]]
            mounted[item["path"]] = (
                value.encode()
                if item["key"] in cm.get("data", {})
                else (__import__("base64").b64decode(value))
            )
    expected = {p: d for p, d in REPOSITORY.items() if d is not None}
    expected["default.fraud_check.v3/1/.keep"] = b""  # the empty folder, made by a file in it
    assert mounted == expected

    # the routes name the StatefulSet's pods, which the gateway alone may reach
    (deployment,) = _get(manifests, "Deployment")
    gateway = deployment["spec"]["template"]["spec"]["containers"][0]
    routes_map = next(m for m in maps.values() if "routes.json" in m.get("data", {}))
    table = json.loads(routes_map["data"]["routes.json"])
    (route,) = table["routes"].values()
    (variant,) = route["variants"]
    assert variant["name"] == "fraud_check/3"
    hosts = [f"fraud-check-triton-{i}.fraud-check-triton" for i in range(3)]
    assert [t["url"] for t in variant["targets"]] == [f"http://{h}:8000" for h in hosts]
    allowed = {a.split("=", 1)[1] for a in gateway["args"] if a.startswith("--allowed-upstream")}
    assert allowed == {f"{h}:{p}" for h in hosts for p in (8000, 8001)}
    config = parse_args(gateway["args"])
    assert config.routes_file is not None and config.allowed_upstreams is not None


def test_object_storage_instead_of_configmaps(tmp_path: Path, kustomize: list[str]) -> None:
    manifests = _export(tmp_path, kustomize, repository_url="s3://models/fraud")
    assert check(manifests) == []
    (sts,) = _get(manifests, "StatefulSet")
    triton = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://models/fraud" in triton["args"]
    assert [m["metadata"]["name"] for m in _get(manifests, "ConfigMap")] == [
        m["metadata"]["name"]
        for m in _get(manifests, "ConfigMap")
        if "routes" in m["metadata"]["name"]
    ]


def test_what_cannot_be_served_is_refused_with_the_way_out() -> None:
    big = {"default.big/1/model.onnx": b"\0" * (CONFIGMAP_MAX_BYTES + 1)}
    with pytest.raises(InvalidInput) as caught:
        render(workspace="default", pipeline="big", version=1, ensemble="default.big.v1",
               repository=big, settings=ExportSettings())  # fmt: skip
    assert "more than a ConfigMap holds" in str(caught.value)
    assert "--repository-url" in (caught.value.hint or "")
    for settings, message in [
        (ExportSettings(replicas=0), "replicas must be 1..64"),
        (ExportSettings(gpus=9), "gpus per Triton pod must be 1..8"),
        (ExportSettings(namespace="Prod"), "is not a Kubernetes name"),
        (ExportSettings(repository_url="/mnt/models"), "not object storage Triton reads"),
        (ExportSettings(gateway_image="lastmile:latest"), "is not pinned"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            render(workspace="default", pipeline="p", version=1, ensemble="default.p.v1",
                   repository=REPOSITORY, settings=settings)  # fmt: skip
