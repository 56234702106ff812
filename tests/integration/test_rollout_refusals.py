"""Starting a rollout with bad input is a clear 4xx and changes nothing, on SQLite and
PostgreSQL: weights that do not sum to 100, unknown versions, a second rollout on the same
pipeline, a candidate whose signature differs, parameters of another strategy. The API runs
in-process without Triton; the pipeline's deployment is marked live in the store directly
(what is under test is the refusal, which happens before anything is loaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager import store
from manager.names import triton_ensemble_name
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine, make_softmax_classifier

WS = "/api/v1/workspaces/default"
P = f"{WS}/pipelines/p"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def _upload(api: Api, name: str, path: Path) -> None:
    r = api.call(
        "POST",
        f"{WS}/models/{name}/versions",
        content=path.read_bytes(),
        params={"filename": path.name},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text


def _live(api: Api, version: int) -> None:
    from sqlmodel import Session

    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        ws = store.get_workspace(session, name="default")
        pipe = store.get_pipeline(session, workspace=ws, name="p")
        pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
        store.save_deployment(
            session,
            pipeline=pipe,
            pipeline_version=pv,
            ensemble=triton_ensemble_name("default", "p", version),
            triton_models=["default.scaler"],
            state="live",
        )
        session.commit()
    engine.dispose()


def test_bad_rollouts_are_refused_and_change_nothing(api: Api, tmp_path: Path) -> None:
    _upload(api, "scaler", make_affine(tmp_path / "a1.onnx", 4, 1.0, 0.0))
    _upload(api, "scaler", make_affine(tmp_path / "a2.onnx", 4, 2.0, 0.0))
    _upload(api, "clf", make_softmax_classifier(tmp_path / "c.onnx", 4, 3, input_name="y"))
    for steps in (["scaler:1"], ["scaler:2"], ["scaler:1", "clf"]):
        r = api.call("POST", f"{WS}/pipelines", json={"name": "p", "steps": steps})
        assert r.status_code == 201, r.text

    def start(**body: object) -> tuple[int, str]:
        r = api.call("POST", f"{P}/rollouts", json=body)
        detail = r.json().get("detail", "")
        return r.status_code, str(detail)

    # not live yet: a rollout starts from a live version
    code, detail = start(strategy="canary", candidates=[2])
    assert code == 409 and "not live" in detail
    _live(api, 1)

    code, detail = start(strategy="ab", candidates=[2], params={"weights": {"1": 70, "2": 20}})
    assert code == 422 and "sum to 100" in detail and "90" in detail
    code, detail = start(strategy="ab", candidates=[2], params={"weights": {"1": 70, "3": 30}})
    assert code == 422 and "every variant" in detail
    code, detail = start(strategy="canary", candidates=[9])
    assert code == 404 and "no version 9" in detail
    code, detail = start(strategy="canary", candidates=[1])
    assert code == 422 and "stable version" in detail
    code, detail = start(strategy="canary", candidates=[3])
    assert code == 422 and "outputs" in detail and "version 3" in detail
    code, detail = start(strategy="canary", candidates=[2], params={"steps": [5, 50]})
    assert code == 422 and "100" in detail
    code, detail = start(strategy="canary", candidates=[2], params={"sample": 0.5})
    assert code == 422 and "sample" in detail and "canary" in detail
    code, detail = start(strategy="shadow", candidates=[2], params={"sample": 0})
    assert code == 422 and "sample" in detail
    code, detail = start(strategy="teleport", candidates=[2])
    assert code == 422 and "strategy" in detail
    code, detail = start(strategy="canary", candidates=[])
    assert code == 422
    code, detail = start(strategy="hot-swap", candidates=[2], params={"candidate_servers": 1})
    assert code == 422 and "candidate_servers" in detail and "hot-swap" in detail
    for bad in (0, -1, 1.5, True, "1"):
        code, detail = start(strategy="shadow", candidates=[2], params={"candidate_servers": bad})
        assert code == 422 and "candidate_servers must be a whole number" in detail, bad
    assert api.call("GET", f"{P}/rollouts").json() == []

    # valid input: refused only because no Triton is attached, and nothing is left behind
    code, detail = start(strategy="canary", candidates=[2])
    assert code == 502 and "no Triton" in detail
    assert api.call("GET", f"{P}/rollouts").json() == []
    assert api.call("GET", f"{P}/rollouts/current").status_code == 404
    r = api.call("POST", f"{P}/rollouts/current/promote")
    assert r.status_code == 409 and "no active rollout" in r.json()["detail"]


def test_one_active_rollout_per_pipeline_in_the_store(api: Api, tmp_path: Path) -> None:
    _upload(api, "scaler", make_affine(tmp_path / "a1.onnx", 4, 1.0, 0.0))
    r = api.call("POST", f"{WS}/pipelines", json={"name": "p", "steps": ["scaler:1"]})
    assert r.status_code == 201
    from sqlmodel import Session

    from manager.errors import Conflict

    engine = store.make_engine(api.settings.db_url)
    try:
        with Session(engine) as session:
            ws = store.get_workspace(session, name="default")
            pipe = store.get_pipeline(session, workspace=ws, name="p")

            def rollout() -> store.Rollout:
                return store.Rollout(
                    pipeline_id=pipe.id,  # type: ignore[arg-type]
                    strategy="canary",
                    stable_version=1,
                    candidates=[2],
                )

            first = store.add_rollout(session, rollout())
            session.commit()
            with pytest.raises(Conflict, match="already has an active rollout"):
                store.add_rollout(session, rollout())
            found = session.get(store.Rollout, first.id)
            assert found is not None
            first = found
            first.state = "aborted"
            store.save_rollout(session, first)
            session.commit()
            second = store.add_rollout(session, rollout())  # the pipeline is free again
            session.commit()
            assert second.active_pipeline_id == pipe.id and first.active_pipeline_id is None
            generations = [store.next_generation(session) for _ in range(3)]
            session.commit()
            assert generations == sorted(generations) and len(set(generations)) == 3
    finally:
        engine.dispose()
