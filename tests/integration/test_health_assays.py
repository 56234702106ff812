"""Health assays and the live-figure charts, through the management API (in process, no
Triton) on SQLite and PostgreSQL.

The figures are written into the store as the scraper stores them (its arithmetic has tests
of its own): one-minute gateway points of a pipeline's two versions, version 2 slow and
failing after the third minute. The health assays must judge exactly those windows bad.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import Session

from manager import store
from manager.services import metrics_charts
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def _figures(api: Api, end: datetime) -> None:
    """Six minutes of gateway figures for fraud/1 and fraud/2, ending at `end`."""
    api.import_model("double", make_affine(api.settings.home / "d.onnx", 4, 2.0, 0.0))
    r = api.call("POST", f"{WS}/pipelines", json={"name": "fraud", "steps": ["double"]})
    assert r.status_code == 201, r.text
    engine = store.make_engine(api.settings.db_url)
    start = end - timedelta(minutes=6)
    with Session(engine) as session:
        for minute in range(1, 7):
            ts = start + timedelta(minutes=minute)
            bad = minute > 3
            for version, p99 in ((1, 12.0), (2, 480.0 if bad else 14.0)):
                errors = 5.0 if (version == 2 and bad) else 0.0
                for name, value in (
                    ("gateway_latency_p99_ms", p99),
                    ("gateway_requests_per_s", 50.0),
                    ("gateway_errors_per_s", errors),
                ):
                    session.add(
                        store.MetricPoint(
                            ts=ts, interval_s=60.0, source="gateway", server="gw",
                            workspace="default", pipeline="fraud", version=version,
                            name=name, value=value,
                        )
                    )  # fmt: skip
            # the shared step "double" (no version of its own): queueing from minute 5 on
            session.add(
                store.MetricPoint(
                    ts=ts, interval_s=60.0, source="triton", server="t", workspace="default",
                    pipeline="fraud", version=None, step="double", name="queue_ms_avg",
                    value=40.0 if minute > 4 else 1.0,
                )
            )  # fmt: skip
        session.commit()
    engine.dispose()


def test_health_assays_judge_the_live_figures_of_one_version(api: Api) -> None:
    _figures(api, T0 + timedelta(minutes=6))
    for name, figure, alert in (("slow", "p99_ms", 250.0), ("failing", "error_rate", 0.05)):
        r = api.call("POST", f"{WS}/assays", json={
            "name": name, "pipeline": "fraud", "kind": "health", "figure": figure,
            "version": 2, "window_s": 60, "alert": alert,
        })  # fmt: skip
        assert r.status_code == 201, r.text
        assert r.json()["target"] == {"figure": figure, "step": "", "version": 2}
        r = api.call("POST", f"{WS}/assays/{name}/backfill", json={
            "since": T0.isoformat(), "until": (T0 + timedelta(minutes=6)).isoformat(),
        })  # fmt: skip
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["ok"] * 3 + ["alert"] * 3, results
        if figure == "p99_ms":
            assert [x["score"] for x in results] == [14.0] * 3 + [480.0] * 3
        else:  # 5 errors/s of 50 requests/s
            assert [x["score"] for x in results] == [0.0] * 3 + [pytest.approx(0.1)] * 3
    r = api.call("POST", f"{WS}/assays", json={
        "name": "p99-all", "pipeline": "fraud", "kind": "health", "figure": "p99_ms",
        "window_s": 180, "interval_s": 60, "warning": 100,
    })  # fmt: skip
    assert r.status_code == 201, r.text
    r = api.call("POST", f"{WS}/assays/p99-all/backfill", json={
        "since": T0.isoformat(), "until": (T0 + timedelta(minutes=6)).isoformat(),
    })  # fmt: skip
    # both versions, windows of 3 minutes every minute: the worst interval of each
    assert [x["score"] for x in r.json()["results"]] == [14.0, 480.0, 480.0, 480.0]

    r = api.call("POST", f"{WS}/assays", json={
        "name": "queueing", "pipeline": "fraud", "kind": "health", "figure": "queue_ms",
        "step": "double", "version": 2, "window_s": 60, "alert": 20,
    })  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["target"] == {"figure": "queue_ms", "step": "double", "version": 2}
    r = api.call("POST", f"{WS}/assays/queueing/backfill", json={
        "since": T0.isoformat(), "until": (T0 + timedelta(minutes=6)).isoformat(),
    })  # fmt: skip
    assert [x["score"] for x in r.json()["results"]] == [1.0] * 4 + [40.0] * 2
    for spec, words in (
        ({"figure": "p99_ms", "step": "double"}, "measured for the whole pipeline"),
        ({"figure": "queue_ms", "step": "ghost"}, "has no step running model 'ghost'"),
    ):
        r = api.call("POST", f"{WS}/assays", json={
            "name": "bad", "pipeline": "fraud", "kind": "health", "window_s": 60,
            "alert": 1, **spec,
        })  # fmt: skip
        assert r.status_code == 422 and words in r.json()["detail"], r.text


def test_live_figures_chart_one_line_per_variant(api: Api) -> None:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    _figures(api, now)
    platform = api.client.app.state.system.platform  # type: ignore[attr-defined]
    lines = metrics_charts.series(
        platform, workspace="default", pipeline="fraud", figure="p99", since="1h"
    )
    assert sorted(lines) == ["fraud/1", "fraud/2"]
    assert [v for _, v in lines["fraud/2"]] == [14.0] * 3 + [480.0] * 3
    r = api.call("GET", f"{WS}/pipelines/fraud/metrics/chart", params={"figure": "errors"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    texts = " ".join(e.text or "" for e in ET.fromstring(r.content).iter())
    assert "fraud/1" in texts and "fraud/2" in texts and "errors / s" in texts
    r = api.call("GET", f"{WS}/pipelines/fraud/metrics/chart", params={"figure": "temperature"})
    assert r.status_code == 422 and "unknown chart" in r.json()["detail"]
    r = api.call("GET", f"{WS}/pipelines/ghost/metrics/chart")
    assert r.status_code == 404
