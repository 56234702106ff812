"""Figures into the store and back (SQLite and the real PostgreSQL): Triton names mapped to
workspace / pipeline / version / step, scrapes recorded as points, a pipeline's summary, and
the retention policy (downsampling, pruning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from manager import store
from manager.errors import InvalidInput, NotFound
from manager.services import metric_names
from manager.services.context import Platform
from manager.services.metric_names import NameCache, Owner
from manager.services.metrics import Collector, apply_retention, when
from manager.services.metrics_view import pipeline_metrics
from tests.conftest import make_settings
from tests.unit.test_metric_rates import TEMPLATE, ZERO


def _spec(*steps: tuple[str, int]) -> dict[str, Any]:
    return {"steps": [{"name": m, "model": m, "version": v} for m, v in steps], "outputs": {}}


def _pipelines(engine: Engine) -> None:
    with Platform(settings=make_settings(Path("/nonexistent")), engine=engine).session() as s:
        default = store.ensure_workspace(s, name="default")
        other = store.ensure_workspace(s, name="other")
        store.add_pipeline_version(s, workspace=default, name="fraud", spec=_spec(("scaler", 1)))
        store.add_pipeline_version(
            s, workspace=default, name="fraud", spec=_spec(("scaler", 2), ("clf", 1))
        )
        store.add_pipeline_version(s, workspace=default, name="churn", spec=_spec(("scaler", 1)))
        store.add_pipeline_version(s, workspace=other, name="fraud", spec=_spec(("clf", 1)))
        s.commit()


@pytest.fixture
def platform(engine: Engine, tmp_path: Path) -> Platform:
    _pipelines(engine)
    return Platform(settings=make_settings(tmp_path / "home", scrape_interval_s=5.0), engine=engine)


def test_triton_names_map_back_to_pipelines_versions_and_steps(platform: Platform) -> None:
    with platform.session() as session:
        names = metric_names.load(session)
    assert names.owners("default.fraud.v2", "1") == [Owner("default", "fraud", 2, "")]
    assert names.owners("default.fraud.v3.clf", "1") == [Owner("default", "fraud", 3, "clf")]
    # a shared step: every pipeline that chains that model version, no pipeline version
    assert names.owners("default.scaler", "1") == [
        Owner("default", "churn", None, "scaler"), Owner("default", "fraud", None, "scaler")
    ]  # fmt: skip
    assert names.owners("default.scaler", "2") == [Owner("default", "fraud", None, "scaler")]
    assert names.owners("other.clf", "1") == [Owner("other", "fraud", None, "clf")]
    # nothing owns these: kept under workspace "" with the Triton name as the step
    for name, version in (("default.scaler", "9"), ("default.ghost.v1", "1"), ("x", "1"),
                          ("default.fraud.vx", "1"), ("default.fraud.v0", "1")):  # fmt: skip
        assert names.owners(name, version) == [Owner("", "", None, name)]


def test_the_name_cache_sees_new_pipeline_versions(platform: Platform) -> None:
    cache = NameCache()
    with platform.session() as session:
        assert cache.get(session).owners("default.late.v1") == [
            Owner("", "", None, "default.late.v1")
        ]
        ws = store.get_workspace(session, name="default")
        store.add_pipeline_version(session, workspace=ws, name="late", spec=_spec(("clf", 1)))
        session.commit()
        assert cache.get(session).owners("default.late.v1") == [Owner("default", "late", 1, "")]


def _text(**values: float) -> str:
    text = TEMPLATE.format(**{**ZERO, **values})
    return text.replace('model="default.fraud.v1"', 'model="default.fraud.v2"')


def test_recorded_scrapes_sum_to_the_counters_and_read_back_per_variant(platform: Platform) -> None:
    collector = Collector(platform)
    server = "http://127.0.0.1:8100"
    t0 = 1_000_000.0
    collector.record(ts=t0, triton={server: _text(success=10, scaler=10)})
    collector.record(ts=t0 + 5, triton={server: _text(success=40, scaler=40, backend=3)})
    # the server restarts (the control plane says so), then serves 12 more
    collector.restarted(server, t0 + 7)
    collector.record(ts=t0 + 6.5, triton={server: _text(success=99)})  # read before: dropped
    collector.record(ts=t0 + 10, triton={server: _text(success=12, scaler=12, gpu=0.5)})
    info = pipeline_metrics(platform, workspace="default", pipeline="fraud", since="1h",
                            now=t0 + 11)  # fmt: skip
    (v2,) = info["variants"]
    assert v2["variant"] == "fraud/2" and v2["gateway"] == {}
    requests = v2["triton"]["requests_per_s"]
    assert requests["total"] == pytest.approx(30 + 12) and requests["points"] == 2
    assert requests["latest"] == pytest.approx(12 / 3) and requests["min"] >= 0
    assert v2["triton"]['failures_per_s{reason="BACKEND"}']["total"] == pytest.approx(3)
    # the shared scaler (model version 1) belongs to fraud (and churn) as a step
    assert info["steps"]["scaler:1"]["requests_per_s"]["total"] == pytest.approx(42)
    assert info["servers"][server]['gpu_utilization{gpu="GPU-7c1b"}']["latest"] == 0.5
    churn = pipeline_metrics(platform, workspace="default", pipeline="churn", since="1h",
                             now=t0 + 11)  # fmt: skip
    assert churn["variants"] == [] and "scaler:1" in churn["steps"]
    # one variant, and only its own steps
    only = pipeline_metrics(platform, workspace="default", pipeline="fraud", since="1h",
                            variant="fraud/1", now=t0 + 11)  # fmt: skip
    assert only["variants"] == [] and set(only["steps"]) == {"scaler:1"}
    # a period that ends before the figures, or another source, has none
    assert pipeline_metrics(platform, workspace="default", pipeline="fraud", since="30s",
                            now=t0 + 100)["variants"] == []  # fmt: skip
    assert pipeline_metrics(platform, workspace="default", pipeline="fraud", since="1h",
                            source="prometheus", now=t0 + 11)["variants"] == []  # fmt: skip
    with platform.session() as session:
        values = session.exec(select(store.MetricPoint.value)).all()
    assert values and min(values) >= 0


def test_bad_queries_say_what_was_wrong(platform: Platform) -> None:
    def ask(**kw: Any) -> Any:
        return pipeline_metrics(platform, workspace="default", **{"pipeline": "fraud", **kw})

    with pytest.raises(InvalidInput, match="'5x' is not a duration"):
        ask(since="5x")
    with pytest.raises(InvalidInput, match="is not a version of pipeline 'fraud'") as err:
        ask(variant="churn/1")
    assert err.value.hint and "--variant fraud/2" in err.value.hint
    with pytest.raises(NotFound, match="has no version 9"):
        ask(variant="9")
    with pytest.raises(NotFound, match="pipeline 'ghost' does not exist"):
        ask(pipeline="ghost")
    with pytest.raises(InvalidInput, match="unknown metrics source"):
        ask(source="graphite")


def _point(ts: float, value: float, **kw: Any) -> store.MetricPoint:
    fields = {"source": "triton", "server": "s", "workspace": "default", "pipeline": "fraud",
              "version": 1, "name": "requests_per_s", "labels": {}, **kw}  # fmt: skip
    return store.MetricPoint(ts=when(ts), interval_s=5.0, value=value, **fields)


def test_retention_downsamples_old_points_and_keeps_their_counts(platform: Platform) -> None:
    now = 3600.0 * 277_777  # on the hour
    day, week = 86400.0, 7 * 86400.0
    with platform.session() as session:
        recent = [_point(now - 60 + 5 * i, 1.0) for i in range(6)]
        # 10 minutes a day old (two 5-minute buckets), 2 minutes a week old (one hour)
        old = [_point(now - day - 3600 + 5 * (i + 1), 2.0 + i % 2) for i in range(120)]
        older = [_point(now - week - 7200 + 5 * (i + 1), 4.0) for i in range(24)]
        gone = [_point(now - 100 * day, 9.0)]
        store.add_metric_points(session, points=recent + old + older + gone)
        store.add_metric_samples(session, samples=[store.MetricSample(
            ts=when(now - 7200), server="s", metric="nv_x", value=1.0)])  # fmt: skip
        session.commit()
    done = apply_retention(platform, now=now)
    # 5-minute points: from `old` and `older`; hourly: the one of `older` (`old`'s are too young)
    assert (done["downsampled"], done["into"]) == (120 + 24 + 1, 2 + 1 + 1)
    with platform.session() as session:
        rows = session.exec(select(store.MetricPoint)).all()
        samples = session.exec(select(store.MetricSample)).all()
    assert samples == []
    by_res: dict[int, list[store.MetricPoint]] = {}
    for r in rows:
        by_res.setdefault(r.resolution_s, []).append(r)
    assert len(by_res[0]) == 6  # recent: as measured
    five = sorted(by_res[300], key=lambda r: r.ts)
    assert len(five) == 2 and all(r.ts.timestamp() % 300 == 0 for r in five)
    assert sum(r.value * r.interval_s for r in five) == pytest.approx(sum(2.5 * 5 for _ in old))
    (hourly,) = by_res[3600]
    assert hourly.value * hourly.interval_s == pytest.approx(24 * 4.0 * 5)
    assert min(r.ts.timestamp() for r in rows) > now - 90 * day
    assert apply_retention(platform, now=now)["downsampled"] == 0  # nothing left to do
