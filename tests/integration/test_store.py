"""The registry on both stores: SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.errors import NotFound

SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    "batched": True,
}


def _add(session: Session, ws: store.Workspace, name: str, sha: str) -> store.ModelVersion:
    _, version = store.add_model_version(
        session, workspace=ws, name=name, sha256=sha, size_bytes=10, path=f"/m/{sha}.onnx",
        signature=SIG, details={"opset": 17},
    )  # fmt: skip
    return version


def test_model_versions_are_numbered_per_model(engine: Engine) -> None:
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        assert [_add(s, ws, "scaler", c * 64).version for c in "abc"] == [1, 2, 3]
        assert _add(s, ws, "other", "d" * 64).version == 1
        s.commit()
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        model = store.get_model(s, workspace=ws, name="scaler")
        assert store.get_model_version(s, model=model, version=None).version == 3
        v2 = store.get_model_version(s, model=model, version=2)
        assert v2.sha256 == "b" * 64 and v2.signature == SIG and v2.details == {"opset": 17}


def test_unknown_model_and_version_are_not_found(engine: Engine) -> None:
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        with pytest.raises(NotFound, match="model 'nope' is not registered"):
            store.get_model(s, workspace=ws, name="nope")
        _add(s, ws, "m", "a" * 64)
        model = store.get_model(s, workspace=ws, name="m")
        with pytest.raises(NotFound, match="has no version 7"):
            store.get_model_version(s, model=model, version=7)


def test_uncommitted_import_leaves_nothing(engine: Engine) -> None:
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        _add(s, ws, "m", "a" * 64)
        s.rollback()
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        assert list(store.list_models(s, workspace=ws)[0]) == []


def test_pipeline_versions_and_deployment_update_in_place(engine: Engine) -> None:
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        pipe, v1 = store.add_pipeline_version(s, workspace=ws, name="p", spec={"a": 1})
        _, v2 = store.add_pipeline_version(s, workspace=ws, name="p", spec={"a": 2})
        assert (v1.version, v2.version) == (1, 2)
        store.save_deployment(s, pipeline=pipe, pipeline_version=v1, ensemble="default.p.v1",
                              triton_models=["default.m"], state="live")  # fmt: skip
        store.save_deployment(s, pipeline=pipe, pipeline_version=v2, ensemble="default.p.v2",
                              triton_models=["default.m"], state="live")  # fmt: skip
        s.commit()
    with Session(engine) as s:
        deps = store.list_deployments(s)
        assert len(deps) == 1 and deps[0].ensemble == "default.p.v2"
        assert deps[0].triton_models == ["default.m"]


def test_metric_samples_latest_scrape_and_pruning(engine: Engine) -> None:
    now = store.utcnow()
    with Session(engine) as s:
        rows = [
            store.MetricSample(ts=now - timedelta(days=9), server="t", model="m", version="1",
                               metric="nv_inference_count", value=1.0),
            store.MetricSample(ts=now, server="t", model="m", version="1",
                               metric="nv_inference_count", value=5.0),
            store.MetricSample(ts=now, server="t", model="", metric="nv_cpu_utilization",
                               labels={"x": "y"}, value=0.5),
        ]  # fmt: skip
        store.add_metric_samples(s, samples=rows)
        s.commit()
        latest = store.latest_metric_samples(s)
        assert sorted((r.metric, r.value) for r in latest) == [
            ("nv_cpu_utilization", 0.5), ("nv_inference_count", 5.0)
        ]  # fmt: skip
        assert [r.value for r in store.latest_metric_samples(s, model="m")] == [5.0]
        store.prune_metric_samples(s, before=now - timedelta(days=7))
        s.commit()
        from sqlmodel import select

        assert len(s.exec(select(store.MetricSample)).all()) == 2
