"""An assay as a canary gate (manager.services.assay_runs.gate, rollout_checks): a step passes
only once every gating assay has judged a window after the step began without an alert; an
alert fails it; a gate naming an unknown assay, or one of another pipeline, is refused when
the rollout starts. On SQLite and PostgreSQL, the windows as in test_assays_api."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from manager import store
from manager.errors import InvalidInput
from manager.services import assay_runs, rollout_checks
from manager.services.context import Platform
from tests.integration.api_harness import Api, running_api
from tests.integration.test_assays_api import T0, WS, _capture, _create, _setup


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def test_the_gate_holds_on_silence_passes_clean_windows_and_fails_on_an_alert(
    api: Api, tmp_path: Path
) -> None:
    _base, windows = _setup(api, tmp_path)
    _create(api)
    _capture(api, windows)
    platform = api.client.app.state.system.platform  # type: ignore[attr-defined]
    assert isinstance(platform, Platform)

    def gate(after_minutes: float) -> dict | None:  # type: ignore[type-arg]
        after = T0 + timedelta(minutes=after_minutes)
        return assay_runs.gate(platform, names=["x-drift"], workspace="default", after=after)

    def judge(minutes: range) -> None:  # what the schedule would have judged, window by window
        engine = store.make_engine(api.settings.db_url)
        with Session(engine) as session:
            assay = store.find_assay(
                session, workspace=store.get_workspace(session, name="default"), name="x-drift"
            )
            assert assay is not None
            for minute in minutes:
                end = T0 + timedelta(minutes=minute)
                result = assay_runs.evaluate(session, assay, end - timedelta(minutes=1), end)
                store.save_assay_result(session, result)
            session.commit()
        engine.dispose()

    hold = gate(0)
    assert hold is not None and "waiting for a judged window of assay(s) x-drift" in hold["hold"]
    judge(range(1, 4))  # windows from the baseline's distribution
    assert gate(0) is None
    judge(range(4, 7))  # shifted
    failed = gate(2)
    assert failed is not None and "assay 'x-drift': psi" in failed["fail"], failed
    later = gate(6)  # a step that began after the last judged window waits
    assert later is not None and "hold" in later
    missing = assay_runs.gate(platform, names=["ghost"], workspace="default", after=T0)
    assert missing == {"fail": "gate assay 'ghost' no longer exists"}


def test_a_gate_must_name_assays_of_the_same_pipeline(api: Api, tmp_path: Path) -> None:
    _setup(api, tmp_path)
    _create(api)
    r = api.call("POST", f"{WS}/pipelines", json={"name": "other", "steps": ["double"]})
    assert r.status_code == 201, r.text
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        ws = store.get_workspace(session, name="default")
        fraud = store.get_pipeline(session, workspace=ws, name="fraud")
        other = store.get_pipeline(session, workspace=ws, name="other")
        stable = store.get_pipeline_version(session, pipeline=fraud, version=1)
        checked = rollout_checks._check_gate_assays(session, fraud, ["x-drift", "x-drift"])
        assert checked == ["x-drift"]
        for pipe, names, words in (
            (fraud, ["ghost"], "no assay 'ghost'"),
            (other, ["x-drift"], "watches another pipeline"),
            (fraud, "x-drift", "a list of assay names"),
        ):
            with pytest.raises(InvalidInput, match=words):
                rollout_checks._check_gate_assays(session, pipe, names)
        assert stable.version == 1
    engine.dispose()
