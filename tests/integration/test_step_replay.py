"""Drift assays on a tensor between two pipeline steps (issue #11): the capture summariser
replays the captured pipeline inputs through the upstream step model (onnxruntime on the
registered ONNX file) and stores the tensor under side "step" like a captured one.

The pipeline is two affine steps, a: double (y = 2x + 1) then b: scale3 (y = 3·features - 1),
so the tensor between them is numpy's 2x + 1 of what was sent. The calls are written by the
gateway's real capture spool (HTTP JSON in regular batches, JSON of mixed shapes and gRPC one
by one) and read by the real summariser; the assays go through the API on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select
from tritonclient.grpc import service_pb2 as pb

import rollout.capture
from manager import store
from manager.assays import drift
from manager.assays.binning import bin_counts_values
from manager.model_files import sample_to_npz_bytes
from manager.services.capture import PassResult, Summariser
from rollout.capture import GRPC, HTTP, CaptureSpool
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import expected_affine, make_affine

WS = "/api/v1/workspaces/default"
CHAIN = {
    "name": "chain",
    "steps": [
        {"name": "a", "model": "double", "inputs": {"x": "$inputs.raw"}},
        {"name": "b", "model": "scale3", "inputs": {"features": "$a.y"}},
    ],
    "outputs": {"score": "$b.y"},
}


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


@pytest.fixture
def minute(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The start of the one-minute window every captured call falls in (the spool's clock
    set inside it: a test that crosses a minute boundary must not split its traffic)."""
    start = (int(time.time()) // 60 - 2) * 60
    monkeypatch.setattr(rollout.capture, "_now", lambda: start + 20.0)
    return datetime.fromtimestamp(start, tz=timezone.utc)


def _setup(api: Api, tmp_path: Path) -> None:
    """double imported with a sample N(0, 1) (its import baseline double-v1 holds inputs/x
    and outputs/y), scale3 without one, and the pipeline chaining them."""
    sample = np.random.default_rng(5).normal(0, 1, size=(2000, 4)).astype(np.float32)
    path = make_affine(tmp_path / "double.onnx", 4, 2.0, 1.0)
    r = api.call(
        "POST", f"{WS}/models/double/versions",
        files={"file": ("double.onnx", path.read_bytes()),
               "sample": ("sample.npz", sample_to_npz_bytes(sample))},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    api.import_model(
        "scale3", make_affine(tmp_path / "s.onnx", 4, 3.0, -1.0, input_name="features")
    )
    r = api.call("POST", f"{WS}/pipelines", json=CHAIN)
    assert r.status_code == 201, r.text


def _create(api: Api, name: str, **spec: Any) -> Any:
    body = {"name": name, "pipeline": "chain", "window_s": 60, "warning": 0.1, "alert": 0.25,
            "binning": {"mode": "quantile", "bins": 6}, **spec}  # fmt: skip
    return api.call("POST", f"{WS}/assays", json=body)


def _json_call(raw: np.ndarray) -> tuple[bytes, bytes]:
    score = expected_affine(expected_affine(raw, 2.0, 1.0), 3.0, -1.0)
    request = {"inputs": [{"name": "raw", "shape": list(raw.shape), "datatype": "FP32",
                           "data": raw.ravel().tolist()}]}  # fmt: skip
    answer = {"model_name": "chain", "outputs": [{"name": "score", "shape": list(score.shape),
              "datatype": "FP32", "data": score.ravel().tolist()}]}  # fmt: skip
    return json.dumps(request).encode(), json.dumps(answer).encode()


def _grpc_call(raw: np.ndarray) -> tuple[bytes, bytes]:
    score = expected_affine(expected_affine(raw, 2.0, 1.0), 3.0, -1.0)
    request = pb.ModelInferRequest(model_name="chain")
    request.inputs.add(name="raw", datatype="FP32", shape=list(raw.shape))
    request.raw_input_contents.append(raw.tobytes())
    answer = pb.ModelInferResponse(model_name="chain")
    answer.outputs.add(name="score", datatype="FP32", shape=list(score.shape))
    answer.raw_output_contents.append(score.tobytes())
    return request.SerializeToString(), answer.SerializeToString()


def _capture(api: Api, calls: list[tuple[int, np.ndarray]]) -> None:
    """The calls (protocol, pipeline input) to version 1 as the gateway's spool writes them."""
    spool = CaptureSpool(api.settings.capture_dir)
    spool.start()
    for protocol, raw in calls:
        request, answer = (_json_call if protocol == HTTP else _grpc_call)(raw)
        spool.offer("default/chain", "chain/1", protocol, [request], -1, [answer], -1)
    spool.stop()


def _summarise(api: Api) -> PassResult:
    engine = store.make_engine(api.settings.db_url)
    try:
        return Summariser(engine=engine, directory=api.settings.capture_dir).run_once()
    finally:
        engine.dispose()


def _tensors(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    view = api.call("GET", f"{WS}/pipelines/chain/capture").json()
    return {(t["side"], t["tensor"]): t for t in view["tensors"]}


def test_a_tensor_between_steps_is_replayed_as_numpy_computes_it_and_scores_a_shift(
    api: Api, tmp_path: Path, minute: datetime
) -> None:
    _setup(api, tmp_path)
    rng = np.random.default_rng(9)
    before = [(HTTP, rng.normal(0, 1, size=(2, 4)).astype(np.float32)) for _ in range(20)]
    _capture(api, before)
    first = _summarise(api)  # no assay watches a step tensor yet: nothing is replayed
    assert (first.replayed, first.replay_failed, first.records) == (0, 0, 20)
    assert ("step", "a.y") not in _tensors(api)

    # an assay on b's input and one on a's output: the same tensor, no baseline named
    mid = _create(api, "mid", step="scale3", side="inputs", tensor="features")
    assert mid.status_code == 201, mid.text
    target = mid.json()["target"]
    assert (target["side"], target["tensor"], target["step"]) == ("step", "a.y", "scale3")
    assert mid.json()["baseline"] == "double-v1"  # a's import baseline knows it as outputs/y
    out = _create(api, "a-out", step="double", side="outputs", tensor="y", element=1)
    assert out.status_code == 201, out.text
    assert out.json()["target"]["tensor"] == "a.y" and out.json()["baseline"] == "double-v1"

    # shifted traffic: regular JSON batches (decoded together), then mixed shapes and gRPC
    regular = [(HTTP, rng.normal(2, 1, size=(2, 4)).astype(np.float32)) for _ in range(150)]
    mixed = [
        (HTTP if i % 3 else GRPC, rng.normal(2, 1, size=(1 + i % 3, 4)).astype(np.float32))
        for i in range(60)
    ]
    _capture(api, regular)
    second = _summarise(api)
    _capture(api, mixed)
    third = _summarise(api)
    assert (second.replayed, third.replayed) == (150, 60)
    assert second.replay_failed == third.replay_failed == 0 and not third.errors
    assert second.to_dict()["replayed"] == 150

    sent = np.concatenate([raw for _, raw in regular + mixed])
    between = expected_affine(sent, 2.0, 1.0)  # what step a hands to step b
    seen = _tensors(api)[("step", "a.y")]
    assert (seen["version"], seen["rows"], seen["elements"]) == (1, len(sent), 4)
    assert (seen["count"], seen["missing"]) == (between.size, 0)
    assert seen["min"] == pytest.approx(float(between.min()))
    assert seen["max"] == pytest.approx(float(between.max()))
    assert seen["mean"] == pytest.approx(float(between.astype(np.float64).mean()), rel=1e-9)
    assert _tensors(api)[("inputs", "raw")]["rows"] == len(sent) + 40  # captured as ever

    for name, values in (("mid", between.ravel()), ("a-out", between[:, 1])):
        assay = api.call("GET", f"{WS}/assays/{name}").json()
        until = minute + timedelta(minutes=1)
        r = api.call(
            "POST",
            f"{WS}/assays/{name}/backfill",
            json={"since": minute.isoformat(), "until": until.isoformat()},
        )
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        counts = bin_counts_values(values, np.asarray(assay["edges"]), True)
        # the window was summarised while the assays existed: binned exactly, every value
        assert result["details"]["exact_windows"] == 1
        assert result["window_counts"] == counts.tolist()
        assert result["score"] == pytest.approx(drift.psi(assay["baseline_counts"], counts), 1e-9)
        assert result["status"] == "alert" and result["score"] > 0.25


def test_a_step_that_cannot_be_replayed_is_refused_when_the_assay_is_made(
    api: Api, tmp_path: Path
) -> None:
    """Every model the registry imports is ONNX; a version of another format (a future
    Python-backend model, here written into the store as such) cannot be replayed."""
    _setup(api, tmp_path)
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        version = session.exec(
            select(store.ModelVersion).join(store.Model).where(store.Model.name == "double")
        ).one()
        version.format = "python"
        session.add(version)
        session.commit()
    engine.dispose()
    r = _create(api, "mid", step="scale3", side="inputs", tensor="features", baseline="double-v1")
    assert r.status_code == 422, r.text
    detail, hint = r.json()["detail"], r.json()["hint"]
    assert "input 'features' of step 'scale3' is between steps" in detail
    assert "step 'a' runs model double:1, a python model, not ONNX" in detail
    assert "watch the pipeline's own input or output" in hint and "health" in hint
    # a step tensor the gateway captures stays watchable; nothing was stored for the refusal
    fed = _create(api, "fed", step="double", side="inputs", tensor="x")
    assert fed.status_code == 201, fed.text
    assert [a["name"] for a in api.call("GET", f"{WS}/assays").json()] == ["fed"]


def test_a_replay_that_fails_is_counted_and_the_rest_is_summarised(
    api: Api, tmp_path: Path, minute: datetime
) -> None:
    _setup(api, tmp_path)
    assert _create(api, "mid", step="scale3", side="inputs", tensor="features").status_code == 201
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:  # double's file goes missing from the model store
        path = session.exec(
            select(store.ModelVersion.path).join(store.Model).where(store.Model.name == "double")
        ).one()
    engine.dispose()
    Path(path).unlink()
    rng = np.random.default_rng(4)
    _capture(api, [(HTTP, rng.normal(size=(2, 4)).astype(np.float32)) for _ in range(30)])
    result = _summarise(api)
    assert (result.replayed, result.replay_failed) == (0, 30)
    assert result.to_dict()["replay_failed"] == 30
    assert any("replay default/chain v1" in e and "missing" in e for e in result.errors)
    tensors = _tensors(api)
    assert ("step", "a.y") not in tensors
    assert tensors[("inputs", "raw")]["rows"] == tensors[("outputs", "score")]["rows"] == 60
