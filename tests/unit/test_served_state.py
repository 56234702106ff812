"""A deployment listing tells which live deployments are not really served, asking the running
system once for the whole listing (each ask reads the store and every Triton replica's index).
The store is real (SQLite); the running system's answer is a stand-in (the listing is the
subject here; tests/e2e/test_fleet.py and test_self_healing.py run the real one)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from manager import store
from manager.services import deployments
from manager.services.context import Platform
from manager.settings import Settings
from tests.unit.test_repository_config import CHAIN


def test_a_listing_asks_once_what_is_unserved_and_marks_those_unavailable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    engine = store.make_engine(settings.db_url)
    store.init_db(engine)
    with Session(engine) as s:
        ws = store.get_workspace(s, name="default")
        for name in ("p", "q", "r"):
            pipe, version = store.add_pipeline_version(
                s, workspace=ws, name=name, spec=CHAIN.to_dict()
            )
            store.save_deployment(s, pipeline=pipe, pipeline_version=version,
                                  ensemble=f"default.{name}.v1", triton_models=[],
                                  state="failed" if name == "r" else "live")  # fmt: skip
        s.commit()
    asked: list[int] = []

    def unserved() -> dict[str, str]:
        asked.append(1)
        return {"default.q.v1": "not loaded on Triton", "default.r.v1": "not loaded on Triton"}

    platform = Platform(settings=settings, engine=engine, unserved=unserved)
    try:
        listed = {d["pipeline"]: d for d in deployments.list_deployments(platform)}
        assert asked == [1]
        assert listed["p"]["state"] == "live"
        assert (listed["q"]["state"], listed["q"]["error"]) == (
            "unavailable",
            "not loaded on Triton",
        )
        assert listed["r"]["state"] == "failed"  # only a live deployment can be unavailable
        one = platform.served_state({"state": "live", "ensemble": "default.q.v1"})
        assert one["state"] == "unavailable" and asked == [1, 1]  # alone, it asks itself
    finally:
        engine.dispose()
