"""Assays through the management API (in process, no Triton) on SQLite and PostgreSQL.

Captured traffic reaches the store through the summariser's own `store_groups` (decoding the
gateway's bytes has tests of its own): a baseline N(0, 1), then windows drawn from N(0, 1) and
from N(2, 1). The assay must score the first below its warning and the second above its alert,
equal to 1e-9 to the metric computed here from the raw values binned with numpy; results,
alerts, backfill, charts and every refusal are read back through the API.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session

from manager import store
from manager.assays import drift
from manager.assays.binning import bin_counts_values
from manager.services import assay_runs
from manager.services.capture import store_groups, summaries_of
from manager.services.context import Platform
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
RNG_SEED = 11


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def _setup(api: Api, tmp_path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Model, pipeline, a baseline, and 6 one-minute windows of version 1's inputs (3 from
    the baseline's distribution, then 3 shifted by two standard deviations) to `_capture`."""
    api.import_model("double", make_affine(tmp_path / "d.onnx", 4, 2.0, 0.0))
    r = api.call("POST", f"{WS}/pipelines", json={"name": "fraud", "steps": ["double"]})
    assert r.status_code == 201, r.text
    rng = np.random.default_rng(RNG_SEED)
    base = rng.normal(0, 1, size=(4000, 4))
    windows = [rng.normal(0 if i < 3 else 2, 1, size=(500, 4)) for i in range(6)]
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        ws = store.get_workspace(session, name="default")
        rows, pooled, elements = summaries_of([base])
        session.add(
            store.Baseline(
                workspace_id=ws.id,  # type: ignore[arg-type]
                name="normal",
                source="file",
                tensors={
                    "inputs/x": {
                        "rows": rows,
                        "pooled": pooled.to_json(),
                        "elements": [e.to_json() for e in elements],
                    }
                },
            )
        )
        session.commit()
    engine.dispose()
    return base, windows


def _capture(api: Api, windows: list[np.ndarray], first: int = 0) -> None:
    """The windows as the summariser stores them (one pass), from minute `first` on."""
    groups = {
        ("default", "fraud", 1, "inputs", "x", T0 + timedelta(minutes=first + i)): [data]
        for i, data in enumerate(windows)
    }
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        store_groups(session, groups, 60)
        session.commit()
    engine.dispose()


def _create(api: Api, **spec: object) -> dict:  # type: ignore[type-arg]
    body = {
        "name": "x-drift", "pipeline": "fraud", "tensor": "x", "baseline": "normal",
        "window_s": 60, "warning": 0.1, "alert": 0.25, **spec,
    }  # fmt: skip
    r = api.call("POST", f"{WS}/assays", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_backfill_scores_each_window_like_an_independent_computation(
    api: Api, tmp_path: Path
) -> None:
    base, windows = _setup(api, tmp_path)
    _capture(api, windows[:1])  # summarised before the assay exists: binned from its sketch
    assay = _create(api, binning={"mode": "quantile", "bins": 8})
    _capture(api, windows[1:], first=1)  # after: binned exactly as they are summarised
    edges = np.asarray(assay["edges"])
    # the baseline's counts come from its sketch (within its 0.5 % relative accuracy)
    exact = bin_counts_values(base.ravel(), edges, True)
    assert np.abs(np.asarray(assay["baseline_counts"]) - exact).max() <= 0.02 * exact.max()
    assert sum(assay["baseline_counts"]) == base.size
    r = api.call(
        "POST",
        f"{WS}/assays/x-drift/backfill",
        json={"since": T0.isoformat(), "until": (T0 + timedelta(minutes=6)).isoformat()},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["window_start"][:16] for res in results] == [
        (T0 + timedelta(minutes=i)).isoformat()[:16] for i in range(6)
    ]
    sketched, *exactly = zip(results, windows, strict=True)
    res, data = sketched
    assert res["details"]["exact_windows"] == 0
    counts = bin_counts_values(data.ravel(), edges, True)
    assert np.abs(np.asarray(res["window_counts"]) - counts).max() <= 0.05 * counts.max()
    for res, data in exactly:
        counts = bin_counts_values(data.ravel(), edges, True)
        assert res["details"]["exact_windows"] == 1
        assert res["window_counts"] == counts.tolist()
        assert res["score"] == pytest.approx(drift.psi(assay["baseline_counts"], counts), abs=1e-9)
        assert res["count"] == data.size
    assert [res["status"] for res in results] == ["ok"] * 3 + ["alert"] * 3
    assert (
        max(res["score"] for res in results[:3])
        < 0.1
        < 0.25
        < min(res["score"] for res in results[3:])
    )
    # backfill never alerts, and is kept apart from scheduled results
    assert api.call("GET", f"{WS}/alerts").json() == []
    assert api.call("GET", f"{WS}/assays/x-drift/results").json()["results"] == []
    r = api.call("GET", f"{WS}/assays/x-drift/results", params={"backfill": True})
    assert len(r.json()["results"]) == 6


def test_scheduled_windows_raise_alerts_and_charts_show_them(api: Api, tmp_path: Path) -> None:
    _base, windows = _setup(api, tmp_path)
    assay = _create(api, element=2, metric="ks", warning=0.1, alert=0.3)
    _capture(api, windows)
    # created "now": the schedule starts from its creation; move it back to T0 for the test
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:
        row = store.find_assay(
            session, workspace=store.get_workspace(session, name="default"), name="x-drift"
        )
        assert row is not None
        row.created_at = T0
        session.add(row)
        session.commit()
    engine.dispose()
    platform = api.client.app.state.system.platform  # type: ignore[attr-defined]
    assert isinstance(platform, Platform)
    done = assay_runs.run_due(platform, now=T0 + timedelta(minutes=6, seconds=10), delay_s=5)
    assert [d["status"] for d in done] == ["ok"] * 3 + ["alert"] * 3
    for result, data in zip(done, windows, strict=True):  # element 2 alone, KS, exact counts
        counts = bin_counts_values(data[:, 2], np.asarray(assay["edges"]), True)
        assert result["score"] == pytest.approx(drift.ks(assay["baseline_counts"], counts), 1e-9)
    # the next pass has nothing new to judge
    assert assay_runs.run_due(platform, now=T0 + timedelta(minutes=6, seconds=50), delay_s=5) == []
    alerts = api.call("GET", f"{WS}/alerts", params={"assay": "x-drift"}).json()
    assert [a["status"] for a in alerts] == ["alert"] * 3
    assert alerts[0]["delivery"] == "none"  # no webhook configured
    assert "assay 'x-drift': ks" in alerts[0]["message"] and "[2]" in alerts[0]["message"]
    shown = api.call("GET", f"{WS}/assays/x-drift").json()
    assert shown["latest"]["status"] == "alert" and shown["last_window_end"] is not None

    svg = api.call("GET", f"{WS}/assays/x-drift/chart", params={"since": T0.isoformat()})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    texts = " ".join(t or "" for t in (e.text for e in ET.fromstring(svg.content).iter()))
    assert "x-drift" in texts and "alert 0.3" in texts
    png = api.call("GET", f"{WS}/assays/x-drift/chart", params={"kind": "histogram", "fmt": "png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_a_window_with_too_few_values_is_no_data_not_an_alert(api: Api, tmp_path: Path) -> None:
    """10 calls (40 values) shifted by two standard deviations: below the default 100 values a
    window is not judged; an assay that asks for fewer judges it (and it alerts)."""
    _setup(api, tmp_path)
    shifted = np.random.default_rng(5).normal(2, 1, size=(10, 4))
    few = _create(api)
    assert few["min_values"] == 100
    _create(api, name="x-any", min_values=1)
    _capture(api, [shifted])
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(minutes=1)).isoformat()}
    r = api.call("POST", f"{WS}/assays/x-drift/backfill", json=window)
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert (result["status"], result["score"], result["count"]) == ("no_data", None, 40)
    assert result["details"]["min_values"] == 100
    r = api.call("POST", f"{WS}/assays/x-any/backfill", json=window)
    [result] = r.json()["results"]
    assert result["status"] == "alert" and result["score"] >= 0.25 and result["count"] == 40


BAD_SPECS: list[tuple[dict[str, Any], int, str]] = [
    ({"baseline": "ghost"}, 404, "no baseline 'ghost'"),
    ({"tensor": "y"}, 422, "has no 'inputs/y'"),
    ({"element": 9}, 422, "element 9 is outside"),
    ({"warning": None, "alert": None}, 422, "needs a warning or an alert threshold"),
    ({"warning": 0.5, "alert": 0.2}, 422, "warning"),
    ({"metric": "entropy"}, 422, "metric must be one of"),
    ({"kind": "health", "figure": "temperature"}, 422, "health figure must be one of"),
    ({"pipeline": "nope"}, 404, "nope"),
    ({"binning": {"mode": "explicit", "edges": [3, 1]}}, 422, "edges"),
    ({"webhook_url": "ftp://example.com/hook"}, 422, "http"),
    ({"min_values": 0}, 422, "min_values"),
]


def test_bad_assays_are_refused_with_the_reason_and_nothing_is_stored(
    api: Api, tmp_path: Path
) -> None:
    _setup(api, tmp_path)
    for spec, status, words in BAD_SPECS:
        body = {
            "name": "x-drift", "pipeline": "fraud", "tensor": "x", "baseline": "normal",
            "window_s": 60, "warning": 0.1, "alert": 0.25, **spec,
        }  # fmt: skip
        r = api.call("POST", f"{WS}/assays", json=body)
        assert r.status_code == status, (spec, r.text)
        assert words in r.json()["detail"], (spec, r.json())
    assert api.call("GET", f"{WS}/assays").json() == []


def test_names_roles_and_lifecycle(api: Api, tmp_path: Path) -> None:
    _setup(api, tmp_path)
    _create(api)
    r = api.call("POST", f"{WS}/assays", json={
        "name": "x-drift", "pipeline": "fraud", "tensor": "x", "baseline": "normal",
        "warning": 0.1,
    })  # fmt: skip
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    viewer = api.user("vera", "default", "viewer")
    assert api.call("GET", f"{WS}/assays", key=viewer).status_code == 200
    r = api.call("POST", f"{WS}/assays/x-drift/run", key=viewer)
    assert r.status_code == 403
    r = api.call("PATCH", f"{WS}/assays/x-drift", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = api.call("GET", f"{WS}/assays/ghost")
    assert r.status_code == 404 and "lastmile assay list" in r.json()["hint"]
    r = api.call("DELETE", f"{WS}/pipelines/fraud")
    assert r.status_code == 409 and "watched by assay(s) x-drift" in r.json()["detail"]
    assert api.call("DELETE", f"{WS}/assays/x-drift").status_code == 204
    assert api.call("GET", f"{WS}/assays").json() == []
    assert api.call("DELETE", f"{WS}/pipelines/fraud").status_code == 204


def test_a_step_tensor_is_watched_where_the_gateway_captures_it(api: Api, tmp_path: Path) -> None:
    """A step's input fed by a pipeline input, and a step's output the pipeline exposes, are
    watched as those pipeline tensors (whatever the pipeline calls them), against the baseline
    by either name; a tensor between steps is replayed (tests/integration/test_step_replay.py)
    and a baseline must hold it by one of its names."""
    _setup(api, tmp_path)  # model "double" (x -> y), baseline "normal" holding inputs/x
    api.import_model("scale3", make_affine(tmp_path / "s.onnx", 4, 3.0, 0.0, input_name="features"))
    chain = {
        "name": "chain",
        "steps": [
            {"name": "a", "model": "double", "inputs": {"x": "$inputs.raw"}},
            {"name": "b", "model": "scale3", "inputs": {"features": "$a.y"}},
        ],
        "outputs": {"score": "$b.y"},
    }
    r = api.call("POST", f"{WS}/pipelines", json=chain)
    assert r.status_code == 201, r.text
    engine = store.make_engine(api.settings.db_url)
    with Session(engine) as session:  # the last step model's import baseline, its own names
        ws = store.get_workspace(session, name="default")
        rows, pooled, elements = summaries_of([np.random.default_rng(3).normal(size=(500, 4))])
        entry = {
            "rows": rows,
            "pooled": pooled.to_json(),
            "elements": [e.to_json() for e in elements],
        }
        session.add(store.Baseline(workspace_id=ws.id, name="scores", source="import",  # type: ignore[arg-type]
                                   model="scale3", model_version=1,
                                   tensors={"outputs/y": entry}))  # fmt: skip
        session.commit()
    engine.dispose()

    def create(**spec: object) -> object:
        body = {"pipeline": "chain", "window_s": 60, "warning": 0.1, "alert": 0.25, **spec}
        return api.call("POST", f"{WS}/assays", json=body)

    fed = create(name="a-in", step="double", side="inputs", tensor="x", baseline="normal")
    assert fed.status_code == 201, fed.text  # type: ignore[attr-defined]
    target = fed.json()["target"]  # type: ignore[attr-defined]
    assert (target["side"], target["tensor"], target["step"]) == ("inputs", "raw", "double")
    # no baseline named: the step model's import baseline, which knows the tensor as "y"
    exposed = create(name="b-out", step="scale3", side="outputs", tensor="y")
    assert exposed.status_code == 201, exposed.text  # type: ignore[attr-defined]
    assert exposed.json()["target"]["tensor"] == "score"  # type: ignore[attr-defined]
    assert exposed.json()["baseline"] == "scores"  # type: ignore[attr-defined]
    for spec, words in (
        (
            {"step": "scale3", "side": "inputs", "tensor": "features"},
            "has no 'step/a.y' or 'inputs/features' or 'outputs/y'",
        ),
        ({"step": "double", "side": "outputs", "tensor": "z"}, "has no output 'z'"),
        ({"step": "double", "side": "inputs", "tensor": "nope"}, "has no input 'nope'"),
        ({"step": "ghost", "side": "inputs", "tensor": "x"}, "no step running model 'ghost'"),
    ):
        refused = create(name="bad", baseline="normal", **spec)
        assert refused.status_code == 422, (spec, refused.text)  # type: ignore[attr-defined]
        assert words in refused.json()["detail"], (spec, refused.json())  # type: ignore[attr-defined]
    names = {a["name"] for a in api.call("GET", f"{WS}/assays").json()}
    assert names == {"a-in", "b-out"}
