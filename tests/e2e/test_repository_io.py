"""Repositories out and back in: export a pipeline, load the export on a separate Triton,
re-import it into a fresh registry and export again: the same configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from manager import supervisor
from manager.k8s import build, check, find_kustomize
from manager.k8s.render import KustomizeNotFound
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import free_ports, make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import make_add, make_affine

pytestmark = pytest.mark.e2e

DIAMOND = """\
name: diamond
steps:
  - {name: a, model: double, inputs: {x: $inputs.x}}
  - {name: b, model: triple, inputs: {x: $inputs.x}}
  - {name: c, model: addpair, inputs: {p: $a.y, q: $b.y}}
outputs: {score: $c.z}
"""


def _configs(root: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted(root.glob("*/config.pbtxt"))}


def test_export_loads_on_triton_and_reimport_gives_the_same_configs(
    system: RunningSystem, tmp_path: Path
) -> None:
    make_affine(tmp_path / "double.onnx", 4, 2.0, 0.0)
    make_affine(tmp_path / "triple.onnx", 4, 3.0, 0.0)
    make_add(tmp_path / "addpair.onnx", 4, input_names=("p", "q"), output_name="z")
    for name in ("double", "triple", "addpair"):
        system.cli("model", "import", str(tmp_path / f"{name}.onnx"), "--name", name)
    system.cli("model", "configure", "double", "--instances", "2", "--preferred-batch", "4,8")
    (tmp_path / "diamond.yaml").write_text(DIAMOND)
    system.cli("pipeline", "apply", str(tmp_path / "diamond.yaml"))

    gpu = tmp_path / "export-gpu"
    system.cli("repo", "export", "diamond", str(gpu))
    assert 'backend: "onnxruntime"' in (gpu / "default.double" / "config.pbtxt").read_text()
    assert (gpu / "default.double" / "1" / "model.onnx").is_file()
    assert system.cli("repo", "validate", str(gpu)).returncode == 0

    # `lastmile export k8s` ships the same builder's repository inside a Kustomize folder
    bundle = tmp_path / "k8s"
    info = json.loads(
        system.cli(
            "export", "k8s", "diamond", "--out", str(bundle), "--replicas", "2", "--json"
        ).stdout
    )
    assert "kustomization.yaml" in info["files"]
    assert _files(bundle / "model_repository") == _files(gpu)
    assert system.cli("repo", "validate", str(bundle / "model_repository")).returncode == 0
    cpu_dev = tmp_path / "k8s-cpu"  # no GPU there: the same builder with the CPU preset
    system.cli("export", "k8s", "diamond", "--out", str(cpu_dev), "--overlay", "cpu-dev")
    config = (cpu_dev / "model_repository" / "default.double" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "KIND_CPU" in config
    assert "KIND_GPU" not in config
    if (kustomize := _kustomize()) is not None:
        assert check(build(bundle, command=kustomize)) == []
        assert check(build(cpu_dev, command=kustomize)) == []

    # the embedded profile's export loads on a Triton that has never seen Lastmile
    cpu = tmp_path / "export-cpu"
    system.cli("repo", "export", "diamond", str(cpu), "--profile", "cpu")
    http, grpc, metrics = free_ports(3)
    with EmbeddedTriton(repository=cpu, work_dir=tmp_path / "w", http_port=http,
                        grpc_port=grpc, metrics_port=metrics,
                        log_path=tmp_path / "t.log") as other, other.client() as c:  # fmt: skip
        for name in ("default.double", "default.triple", "default.addpair", "default.diamond.v1"):
            c.load_model(name)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        x = np.ones((2, 4), np.float32)
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        score = client.infer("default.diamond.v1", [inp]).as_numpy("score")
        client.close()
    np.testing.assert_allclose(score, x * 5)

    fresh = RunningSystem(settings=make_settings(tmp_path / "fresh-home"), state={})
    fresh.state = json.loads(fresh.cli("up", "--detach", "--json").stdout)
    try:
        info = json.loads(fresh.cli("repo", "import", str(gpu), "--json").stdout)
        assert sorted(m["name"] for m in info["models"]) == ["addpair", "double", "triple"]
        assert [p["pipeline"] for p in info["pipelines"]] == ["diamond"]
        again = tmp_path / "export-again"
        fresh.cli("repo", "export", "diamond", str(again))
        assert _configs(again) == _configs(gpu)
        assert _files(again) == _files(gpu)
        fresh.cli("deploy", "diamond", "--version", "latest")  # and the imported pipeline serves
        client = httpclient.InferenceServerClient(fresh.gateway)
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(np.ones((2, 4), np.float32))
        np.testing.assert_allclose(client.infer("diamond", [inp]).as_numpy("score"), x * 5)
        client.close()
    finally:
        supervisor.stop(fresh.settings)


def test_broken_repository_is_listed_and_import_registers_nothing(
    system: RunningSystem, tmp_path: Path
) -> None:
    repo = tmp_path / "broken"
    (repo / "default.m" / "1").mkdir(parents=True)  # model file missing
    (repo / "default.m" / "config.pbtxt").write_text(
        'name: "default.m"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]\n'
    )
    (repo / "default.e.v1" / "1").mkdir(parents=True)
    (repo / "default.e.v1" / "config.pbtxt").write_text(
        'name: "default.e.v1"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [{ name: "x" data_type: TYPE_INT64 dims: [4] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]\n'
        'ensemble_scheduling { step [{ model_name: "default.m" model_version: -1 '
        'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }] }\n'
    )
    proc = system.cli("repo", "validate", str(repo), check=False)
    assert proc.returncode == 1
    text = proc.stdout.replace("\n", " ")
    assert "default.m" in text and "model.onnx" in text  # the missing file ...
    assert "TYPE_INT64" in text or "INT64" in text  # ... does not hide the dtype mismatch
    before = system.cli("model", "list", "--json").stdout
    proc = system.cli("repo", "import", str(repo), check=False)
    assert proc.returncode == 6 and "problem(s)" in proc.stderr
    assert system.cli("model", "list", "--json").stdout == before


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _kustomize() -> list[str] | None:
    """kustomize to build the export with (tests/unit/test_k8s_export.py needs it on CI)."""
    try:
        return find_kustomize()
    except KustomizeNotFound:
        return None
