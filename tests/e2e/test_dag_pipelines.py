"""Pipelines as DAGs from YAML: a diamond (fan-out then fan-in) and renamed tensors with
several outputs, deployed on the embedded Triton, answers equal to running the steps by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from tests.e2e.conftest import RunningSystem
from tests.onnx_models import make_add, make_affine

pytestmark = pytest.mark.e2e

DIAMOND = """\
name: diamond
steps:
  - name: a
    model: double            # a registered model, optionally model:version
    inputs: {x: $inputs.x}   # model input ← pipeline input or another step's output
  - name: b
    model: triple
    inputs: {x: $inputs.x}
  - name: c
    model: addpair
    inputs: {p: $a.y, q: $b.y}
outputs: {score: $c.z}       # pipeline output name ← step output
"""

RENAMED = """\
name: renamed
steps:
  - name: second
    model: triple
    inputs: {x: $first.y}
  - name: first
    model: double
    inputs: {x: $inputs.features}
outputs: {result: $second.y, doubled: $first.y}
"""


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(ort.InferenceSession(str(path)).run(None, feeds))


@pytest.fixture(scope="module")
def registered(system: RunningSystem, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dag")
    files = {
        "double": make_affine(d / "double.onnx", 4, 2.0, 0.0),
        "triple": make_affine(d / "triple.onnx", 4, 3.0, 0.5),
        "addpair": make_add(d / "addpair.onnx", 4, input_names=("p", "q"), output_name="z"),
    }
    for name, path in files.items():
        system.cli("model", "import", str(path), "--name", name)
    return files


def _infer(system: RunningSystem, model: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer(model, [inp])
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        client.close()


def test_diamond_pipeline_from_yaml(
    system: RunningSystem, registered: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "diamond.yaml").write_text(DIAMOND)
    info = json.loads(
        system.cli("pipeline", "apply", str(tmp_path / "diamond.yaml"), "--json").stdout
    )
    assert info["created"] is True and info["version"] == 1
    assert [t["name"] for t in info["inputs"]] == ["x"]
    assert [t["name"] for t in info["outputs"]] == ["score"]
    again = json.loads(
        system.cli("pipeline", "apply", str(tmp_path / "diamond.yaml"), "--json").stdout
    )
    assert again["created"] is False and again["version"] == 1

    system.cli("deploy", "diamond", "--version", "latest")
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    (a,) = _run(registered["double"], {"x": x})
    (b,) = _run(registered["triple"], {"x": x})
    (expected,) = _run(registered["addpair"], {"p": a, "q": b})
    got = _infer(system, "diamond", "x", x)
    assert set(got) == {"score"}
    np.testing.assert_allclose(got["score"], expected, rtol=1e-5, atol=1e-6)


def test_renamed_tensors_and_several_outputs(
    system: RunningSystem, registered: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "renamed.yaml").write_text(RENAMED)
    system.cli("pipeline", "apply", str(tmp_path / "renamed.yaml"))
    system.cli("deploy", "renamed", "--version", "latest")
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    (doubled,) = _run(registered["double"], {"x": x})
    (result,) = _run(registered["triple"], {"x": doubled})
    got = _infer(system, "renamed", "features", x)
    np.testing.assert_allclose(got["result"], result, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["doubled"], doubled, rtol=1e-5, atol=1e-6)
    client = httpclient.InferenceServerClient(system.gateway)
    meta = client.get_model_metadata("renamed")
    client.close()
    assert [t["name"] for t in meta["inputs"]] == ["features"]
    assert sorted(t["name"] for t in meta["outputs"]) == ["doubled", "result"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: bad\nsteps: [\n", "bad.yaml:3:1: not valid YAML"),
        ("name: bad\nsteps: []\noutputs: {o: $a.y}\n", "steps: List should have at least 1"),
        (DIAMOND.replace("$b.y}", "$b.nope}"), "'nope'"),
        (DIAMOND.replace("model: triple", "model: ghost"), "model 'ghost' is not registered"),
        (
            DIAMOND.replace("{x: $inputs.x}\n  - name: c", "{x: $c.z}\n  - name: c"),
            "depend on each other in a circle",
        ),
        (DIAMOND + "extra: 1\n", "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_definitions_are_refused_and_write_nothing(
    system: RunningSystem, registered: dict[str, Path], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = system.cli("pipeline", "list", "--json").stdout
    proc = system.cli("pipeline", "apply", str(path), check=False)
    assert proc.returncode in (3, 6)  # not found (a model), or invalid input
    assert message in proc.stderr.replace("\n", " "), proc.stderr
    assert system.cli("pipeline", "list", "--json").stdout == before
