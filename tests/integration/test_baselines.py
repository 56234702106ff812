"""Baselines of drift assays (issue #11): made at a model's import from its sample (inputs and
the outputs onnxruntime gives), from a time range of captured traffic, from a file of rows;
read, deleted and picked by default for a pipeline's tensor. On SQLite and PostgreSQL, through
the service, the API, the SDK and the CLI; every refusal names the problem and writes nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine
from typer.testing import CliRunner

from manager import store
from manager.assays.sketch import Summary
from manager.cli import app as cli_app
from manager.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from manager.observe.durations import parse_when
from manager.sdk import Lastmile
from manager.services import baselines, models, pipelines
from manager.services.capture import summaries_of
from manager.services.context import Platform
from manager.settings import Settings
from tests.conftest import make_settings
from tests.integration.api_harness import Api, running_api, served_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"
RNG = np.random.default_rng(11)


def _figures(entry: dict[str, Any]) -> tuple[Summary, list[Summary]]:
    return Summary.from_json(entry["pooled"]), [Summary.from_json(e) for e in entry["elements"]]


def _assert_matches(entry: dict[str, Any], rows: np.ndarray) -> None:
    """The stored summaries say what numpy says of ``rows`` (rows x elements)."""
    pooled, elements = _figures(entry)
    assert entry["rows"] == rows.shape[0]
    assert len(elements) == rows.shape[1]
    for summary, column in [(pooled, rows.ravel()), *zip(elements, rows.T, strict=True)]:
        present = column[~np.isnan(column)]
        assert summary.count == present.size
        assert summary.missing == column.size - present.size
        assert summary.min == pytest.approx(float(present.min()))
        assert summary.max == pytest.approx(float(present.max()))
        assert summary.mean == pytest.approx(float(present.mean()), rel=1e-9)


# -- summaries ---------------------------------------------------------------------------------


def test_summaries_from_arrays_equal_what_numpy_computes() -> None:
    matrix = RNG.normal(size=(300, 3))
    matrix[::7, 1] = np.nan
    scalar = RNG.integers(0, 5, size=40).astype(np.float32)
    wide = RNG.normal(size=(10, 65))
    got = baselines.summaries_from_arrays(
        {"x": matrix, "k": scalar, "wide": wide, "text": np.array(["a", "b"])}, "inputs"
    )
    assert sorted(got) == ["inputs/k", "inputs/wide", "inputs/x"]  # strings are not summarised
    _assert_matches(got["inputs/x"], matrix)
    _assert_matches(got["inputs/k"], scalar.reshape(-1, 1).astype(np.float64))  # 1-D: a value a row
    pooled, elements = _figures(got["inputs/wide"])  # > 64 values a row: pooled only
    assert elements == [] and pooled.count == wide.size
    assert json.loads(json.dumps(got)) == got  # plain JSON, as the store keeps it
    with pytest.raises(InvalidInput, match="side must be 'inputs' or 'outputs'"):
        baselines.summaries_from_arrays({"x": matrix}, "input")


# -- at import ---------------------------------------------------------------------------------


@pytest.fixture
def platform(settings: Settings, engine: Engine) -> Platform:
    return Platform(settings=settings, engine=engine)


def _baseline(platform: Platform, name: str) -> store.Baseline:
    with platform.session() as session:
        ws = store.get_workspace(session, name="default")
        return store.get_baseline(session, workspace=ws, name=name)


def _import(
    platform: Platform, tmp_path: Path, name: str, sample: Any, **affine: Any
) -> dict[str, Any]:
    path = make_affine(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.onnx", **affine)
    return models.import_model(
        platform,
        workspace="default",
        name=name,
        path=path,
        conversion=models.ConversionOptions(sample=sample),
        force=True,
    )


def test_an_import_with_a_sample_stores_its_inputs_and_outputs(
    platform: Platform, tmp_path: Path
) -> None:
    x = RNG.normal(size=(50, 4)).astype(np.float32)
    info = _import(platform, tmp_path, "scaler", x, scale=2.0, bias=0.0)
    assert info["details"]["baseline"] == "scaler-v1"
    baseline = _baseline(platform, "scaler-v1")
    assert (baseline.source, baseline.model, baseline.model_version) == ("import", "scaler", 1)
    assert sorted(baseline.tensors) == ["inputs/x", "outputs/y"]
    _assert_matches(baseline.tensors["inputs/x"], x.astype(np.float64))
    _assert_matches(baseline.tensors["outputs/y"], 2 * x.astype(np.float64))  # y = 2x
    assert baseline.details["sample_rows"] == 50 and "outputs_error" not in baseline.details
    # a dict sample names the input; the next version gets its own baseline
    second = _import(platform, tmp_path, "scaler", {"x": x[:10]}, scale=2.0, bias=0.0)
    assert second["version"] == 2 and second["details"]["baseline"] == "scaler-v2"
    assert _baseline(platform, "scaler-v2").tensors["inputs/x"]["rows"] == 10
    # no sample, no baseline
    third = _import(platform, tmp_path, "scaler", None, scale=2.0, bias=0.0)
    assert "baseline" not in third["details"]
    with platform.session() as session:
        ws = store.get_workspace(session, name="default")
        names = [b.name for b in store.list_baselines(session, workspace=ws, model="scaler")]
        latest = store.latest_import_baseline(session, workspace=ws, model="scaler")
    assert names == ["scaler-v1", "scaler-v2"] and latest is not None
    assert latest.name == "scaler-v2"
    # a name already taken (here by a file baseline) gets a suffix
    rows = tmp_path / "rows.npy"
    np.save(rows, np.ones((3, 4)))
    baselines.from_file(platform, workspace="default", name="scaler-v4", path=rows, tensor="x")
    fourth = _import(platform, tmp_path, "scaler", np.ones((3, 4), np.float32))
    assert fourth["details"]["baseline"] == "scaler-v4-2"
    assert _baseline(platform, "scaler-v4").source == "file"


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"features": np.ones((3, 4), np.float32)}, "the model's inputs are ['x']"),
        (np.ones((3, 3), np.float32), "has shape [3, 3], the model takes [-1, 4]"),
        (np.ones((3,), np.float32), "has shape [3], the model takes [-1, 4]"),
    ],
)
def test_a_sample_that_does_not_fit_an_onnx_model_refuses_the_import(
    platform: Platform, tmp_path: Path, sample: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match="--sample does not fit the model") as caught:
        _import(platform, tmp_path, "scaler", sample)
    assert message in caught.value.message and caught.value.hint
    with platform.session() as session:
        ws = store.get_workspace(session, name="default")
        assert store.find_model(session, workspace=ws, name="scaler") is None
        assert list(store.list_baselines(session, workspace=ws)) == []
    assert not platform.settings.models_dir.exists() or not any(
        platform.settings.models_dir.iterdir()
    )


def test_outputs_that_cannot_be_computed_are_left_out_not_the_import(
    platform: Platform, tmp_path: Path
) -> None:
    # a model with a fixed batch of 2 cannot run on a sample of 5 rows at once
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    info = _import(platform, tmp_path, "fixed", x, batch_dim=2)
    assert info["version"] == 1 and info["details"]["baseline"] == "fixed-v1"
    baseline = _baseline(platform, "fixed-v1")
    assert sorted(baseline.tensors) == ["inputs/x"]
    _assert_matches(baseline.tensors["inputs/x"], x.astype(np.float64))
    assert baseline.details["outputs_error"]


# -- from captured traffic ---------------------------------------------------------------------

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def _capture(
    session: Session, version: int, start: datetime, side: str, tensor: str, rows: np.ndarray
) -> None:
    count, pooled, elements = summaries_of([rows])
    store.add_capture_summary(
        session,
        store.CaptureSummary(
            workspace="default",
            pipeline="fraud",
            version=version,
            side=side,
            tensor=tensor,
            window_start=start,
            width_s=60,
            rows=count,
            pooled=pooled.to_json(),
            elements=[e.to_json() for e in elements],
        ),
    )


def test_a_baseline_from_a_time_range_of_captured_traffic(
    platform: Platform, tmp_path: Path
) -> None:
    _import(platform, tmp_path, "scaler", None)
    pipelines.create_pipeline(platform, workspace="default", name="fraud", steps=["scaler"])
    windows = [RNG.normal(loc=i, size=(20, 4)) for i in range(4)]
    with platform.session() as session:
        for i, rows in enumerate(windows):
            _capture(session, 1, T0 + timedelta(minutes=i), "inputs", "x", rows)
            _capture(session, 1, T0 + timedelta(minutes=i), "outputs", "y", 2 * rows)
        _capture(session, 2, T0, "inputs", "x", np.full((5, 4), 100.0))
        session.commit()
    info = baselines.from_capture(
        platform,
        workspace="default",
        name="june",
        pipeline="fraud",
        since=T0 + timedelta(minutes=1),
        until=T0 + timedelta(minutes=3),
        version=1,
        principal="ana",
    )
    assert info["source"] == "capture" and info["created_by"] == "ana"
    assert info["details"]["windows"] == 2 and info["details"]["pipeline"] == "fraud"
    baseline = _baseline(platform, "june")
    _assert_matches(baseline.tensors["inputs/x"], np.concatenate(windows[1:3]))
    _assert_matches(baseline.tensors["outputs/y"], 2 * np.concatenate(windows[1:3]))
    # every version, naive datetimes taken as UTC
    both = baselines.from_capture(
        platform,
        workspace="default",
        name="all-versions",
        pipeline="fraud",
        since=T0.replace(tzinfo=None),
        until=T0.replace(tzinfo=None) + timedelta(minutes=1),
    )
    assert [t["rows"] for t in both["tensors"] if t["side"] == "inputs"] == [25]
    assert both["tensors"][0]["max"] == 100.0

    def make(**kw: Any) -> Any:
        args: dict[str, Any] = {"workspace": "default", "name": "other", "pipeline": "fraud"}
        args |= {"since": T0, "until": T0 + timedelta(hours=1)} | kw
        return baselines.from_capture(platform, **args)

    with pytest.raises(InvalidInput, match="no captured traffic of pipeline 'fraud'") as empty:
        make(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert "lastmile capture set fraud" in (empty.value.hint or "")
    with pytest.raises(InvalidInput, match="no captured traffic of version 3"):
        make(version=3)
    with pytest.raises(InvalidInput, match="the range is empty"):
        make(since=T0, until=T0)
    with pytest.raises(NotFound, match="pipeline 'nope'"):
        make(pipeline="nope")
    with pytest.raises(Conflict, match="'june' already exists") as taken:
        make(name="june")
    assert "lastmile baseline delete" in (taken.value.hint or "")
    with pytest.raises(InvalidInput, match="invalid baseline name"):
        make(name="June!")
    assert [b["name"] for b in baselines.list_baselines(platform, workspace="default")] == [
        "june",
        "all-versions",
    ]


# -- the default for an assay ------------------------------------------------------------------


def test_default_for_picks_the_import_baseline_of_the_pipelines_step_model(
    platform: Platform, tmp_path: Path
) -> None:
    x = RNG.normal(size=(30, 4)).astype(np.float32)
    _import(platform, tmp_path, "scaler", x)  # x -> y, baseline scaler-v1
    _import(platform, tmp_path, "scaler", x[:5])  # version 2, baseline scaler-v2
    _import(platform, tmp_path, "scorer", 2 * x + 1, input_name="y", output_name="z")
    _import(platform, tmp_path, "plain", None)  # no sample: no baseline
    pipelines.create_pipeline(
        platform, workspace="default", name="fraud", steps=["scaler:1", "scorer"]
    )
    pipelines.create_pipeline(platform, workspace="default", name="bare", steps=["plain"])

    def default(pipeline: str, side: str, tensor: str) -> str | None:
        with platform.session() as session:
            ws = store.get_workspace(session, name="default")
            pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
            found = baselines.default_for(session, ws, pipe, side, tensor)
            return found.name if found else None

    assert default("fraud", "inputs", "x") == "scaler-v1"  # the step's version, not the newest
    assert default("fraud", "outputs", "z") == "scorer-v1"  # the step that makes the output
    assert default("fraud", "inputs", "y") is None  # not a pipeline input
    assert default("bare", "inputs", "x") is None
    # the deployed version wins over the latest
    pipelines.create_pipeline(platform, workspace="default", name="fraud", steps=["scaler:2"])
    assert default("fraud", "inputs", "x") == "scaler-v2"
    with platform.session() as session:
        ws = store.get_workspace(session, name="default")
        pipe = store.get_pipeline(session, workspace=ws, name="fraud")
        first = store.get_pipeline_version(session, pipeline=pipe, version=1)
        store.save_deployment(
            session,
            pipeline=pipe,
            pipeline_version=first,
            ensemble="default.fraud.v1",
            triton_models=[],
            state="live",
        )
        session.commit()
    assert default("fraud", "inputs", "x") == "scaler-v1"
    assert default("fraud", "outputs", "y") is None  # v1's output is z


# -- the API, the SDK and the CLI --------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url, max_upload_bytes=64 * 1024)


def _upload(
    api: Api, name: str, filename: str, content: bytes, key: str | None = None, **form: str
) -> Any:
    files = {"file": (filename, content, "application/octet-stream")}
    return api.call("POST", f"{WS}/baselines/{name}/file", key=key, files=files, data=form)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_baselines_from_files_of_each_format(api: Api, tmp_path: Path) -> None:
    rows = RNG.normal(size=(40, 3))
    r = _upload(api, "npy", "rows.npy", _npy(rows), tensor="x")
    assert r.status_code == 201, r.text
    assert r.json()["details"] == {"file": "rows.npy", "format": "npy"}
    npz = tmp_path / "both.npz"
    np.savez(npz, x=rows, score=rows[:, 0])
    r = _upload(api, "npz", "both.npz", npz.read_bytes(), side="outputs")
    assert r.status_code == 201, r.text
    assert [(t["side"], t["tensor"]) for t in r.json()["tensors"]] == [
        ("outputs", "score"),
        ("outputs", "x"),
    ]
    r = _upload(api, "npz-one", "both.npz", npz.read_bytes(), tensor="score")
    assert [t["tensor"] for t in r.json()["tensors"]] == ["score"]
    csv = "age,income,score\n" + "\n".join(",".join(repr(v) for v in row) for row in rows)
    r = _upload(api, "csv", "rows.csv", csv.encode(), tensor="x")
    assert r.status_code == 201, r.text
    assert r.json()["details"]["columns"] == ["age", "income", "score"]
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({f"c{i}": rows[:, i] for i in range(3)}), tmp_path / "rows.parquet")
    r = _upload(
        api, "parquet", "rows.parquet", (tmp_path / "rows.parquet").read_bytes(), tensor="x"
    )
    assert r.status_code == 201, r.text
    pq.write_table(pa.table({"a": [1.0, 2.0], "city": ["x", "y"]}), tmp_path / "t.parquet")
    r = _upload(api, "bad", "t.parquet", (tmp_path / "t.parquet").read_bytes(), tensor="x")
    assert r.status_code == 422 and "column 'city' is string, not numeric" in r.json()["detail"]
    engine = store.make_engine(api.settings.db_url)
    try:
        with Session(engine) as session:
            ws = store.get_workspace(session, name="default")
            for name, key in [("npy", "inputs/x"), ("csv", "inputs/x"), ("parquet", "inputs/x"),
                              ("npz", "outputs/x")]:  # fmt: skip
                found = store.get_baseline(session, workspace=ws, name=name)
                _assert_matches(found.tensors[key], rows)
            score = store.get_baseline(session, workspace=ws, name="npz").tensors["outputs/score"]
            _assert_matches(score, rows[:, :1])
    finally:
        engine.dispose()
    listed = api.call("GET", f"{WS}/baselines").json()
    assert [b["name"] for b in listed] == ["npy", "npz", "npz-one", "csv", "parquet"]
    shown = api.call("GET", f"{WS}/baselines/csv").json()
    (x,) = shown["tensors"]
    assert (x["rows"], x["elements"], x["count"], x["missing"]) == (40, 3, 120, 0)
    assert x["min"] == pytest.approx(rows.min()) and x["mean"] == pytest.approx(rows.mean())


BAD_FILES = [
    ("rows.txt", b"1,2\n", {"tensor": "x"}, 422, "InvalidInput", "unknown format .txt"),
    ("rows.npy", _npy(np.ones((2, 2))), {}, 422, "InvalidInput", "a .npy file holds one"),
    ("rows.csv", b"1,2\n", {}, 422, "InvalidInput", "pass --tensor NAME"),
    ("rows.csv", b"a,city\n1,paris\n", {"tensor": "x"}, 422, "InvalidInput",
     "column 2 ('city'): 'paris' is not a number"),
    ("rows.csv", b"1,2\n", {"tensor": "x", "side": "middle"}, 422, "InvalidInput",
     "side must be 'inputs' or 'outputs'"),
    ("rows.csv", b"1,2\n", {"tensor": "bad name!"}, 422, "InvalidInput", "invalid tensor name"),
    ("rows.npy", b"\x93NUMPY garbage", {"tensor": "x"}, 422, "InvalidInput", "rows.npy"),
    ("rows.npz", b"PK\x03\x04 not a zip", {}, 422, "InvalidInput", "rows.npz"),
    ("rows.npz", _npz(a=np.ones(2)), {"tensor": "b"}, 422, "InvalidInput", "no array 'b'"),
    ("rows.npy", _npy(np.array(["a", "b"])), {"tensor": "x"}, 422, "InvalidInput",
     "holds no numeric data"),
    ("big.npy", _npy(np.zeros(20000)), {"tensor": "x"}, 413, "PayloadTooLarge",
     "exceeds the limit of 65536 bytes"),
]  # fmt: skip


def test_bad_baseline_files_are_refused_and_leave_nothing(api: Api) -> None:
    for filename, content, form, status, kind, message in BAD_FILES:
        r = _upload(api, "bad", filename, content, **form)
        assert r.status_code == status, (filename, r.text)
        body = r.json()
        assert body["type"] == kind, body
        assert message in f"{body['detail']} {body.get('hint')}", body
        assert str(api.settings.home) not in f"{body['detail']} {body.get('hint')}"  # no paths
    assert api.call("GET", f"{WS}/baselines").json() == []
    assert [p for p in api.settings.run_dir.iterdir() if p.name.startswith(".upload")] == []


def test_the_service_refuses_a_file_over_the_limit_before_reading_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "h", max_upload_bytes=1000)
    platform = Platform(settings=settings, engine=create_engine("sqlite://"))  # never reached
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros(500))
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
        baselines.from_file(platform, workspace="default", name="big", path=path, tensor="x")


def test_roles_capture_baselines_and_delete_while_used(api: Api) -> None:
    viewer = api.user("vera", "default", "viewer")
    engine = store.make_engine(api.settings.db_url)
    try:
        with Session(engine) as session:
            ws = store.get_workspace(session, name="default")
            pipe, _ = store.add_pipeline_version(
                session,
                workspace=ws,
                name="fraud",
                spec={"name": "fraud", "steps": [], "outputs": {}},
            )
            _capture(session, 1, T0, "inputs", "x", np.arange(8.0).reshape(4, 2))
            session.commit()
            pipeline_id = pipe.id
        body = {"name": "june", "pipeline": "fraud", "since": T0.isoformat(),
                "until": (T0 + timedelta(hours=1)).isoformat()}  # fmt: skip
        assert api.call("POST", f"{WS}/baselines", key=viewer, json=body).status_code == 403
        r = api.call("POST", f"{WS}/baselines", json=body)
        assert r.status_code == 201, r.text
        (x,) = r.json()["tensors"]
        assert (x["rows"], x["elements"], x["min"], x["max"], x["mean"]) == (4, 2, 0.0, 7.0, 3.5)
        again = api.call("POST", f"{WS}/baselines", json=body)
        assert again.status_code == 409 and "already exists" in again.json()["detail"]
        empty = api.call("POST", f"{WS}/baselines", json=body | {"name": "july", "version": 2})
        assert empty.status_code == 422 and "no captured traffic" in empty.json()["detail"]
        assert api.call("GET", f"{WS}/baselines/june", key=viewer).status_code == 200
        assert api.call("GET", f"{WS}/baselines/nope").status_code == 404
        assert (
            _upload(api, "v", "r.npy", _npy(np.ones(3)), key=viewer, tensor="x").status_code == 403
        )
        assert api.call("DELETE", f"{WS}/baselines/june", key=viewer).status_code == 403
        with Session(engine) as session:
            ws = store.get_workspace(session, name="default")
            june = store.get_baseline(session, workspace=ws, name="june")
            store.add_assay(
                session,
                store.Assay(workspace_id=ws.id, pipeline_id=pipeline_id, name="drift-x",  # type: ignore[arg-type]
                            kind="drift", tensor="x", baseline_id=june.id, window_s=60,
                            interval_s=60),
            )  # fmt: skip
            session.commit()
        used = api.call("DELETE", f"{WS}/baselines/june")
        assert used.status_code == 409 and "used by assay(s) drift-x" in used.json()["detail"]
        assert "delete those assays first" in used.json()["hint"]
        with Session(engine) as session:
            ws = store.get_workspace(session, name="default")
            assay = store.find_assay(session, workspace=ws, name="drift-x")
            assert assay is not None
            store.delete_assay(session, assay)
            session.commit()
        assert api.call("DELETE", f"{WS}/baselines/june").status_code == 204
        assert api.call("GET", f"{WS}/baselines/june").status_code == 404
        assert api.call("DELETE", f"{WS}/baselines/june").status_code == 404
    finally:
        engine.dispose()


def test_the_sdk_imports_an_onnx_model_with_a_sample_and_manages_baselines(
    api: Api, tmp_path: Path
) -> None:
    lm = Lastmile(str(api.client.base_url), api_key=api.owner_key)
    lm._http.close()
    lm._http = api.client  # the same httpx client, talking to the app in-process
    api.client.headers["authorization"] = f"Bearer {api.owner_key}"
    x = RNG.normal(size=(20, 4)).astype(np.float32)
    info = lm.import_model(
        make_affine(tmp_path / "s.onnx", bias=0.0), name="scaler", sample_input=x
    )
    assert info["details"]["baseline"] == "scaler-v1"
    (listed,) = lm.baselines(model="scaler")
    figures = {t["side"]: t for t in listed["tensors"]}
    assert figures["outputs"]["max"] == pytest.approx(2 * float(x.max()), rel=1e-6)
    assert figures["inputs"]["mean"] == pytest.approx(float(x.mean()), rel=1e-6)
    with pytest.raises(InvalidInput, match="--sample does not fit the model"):
        lm.import_model(make_affine(tmp_path / "t.onnx", 3), name="narrow", sample_input=x)
    assert lm.baselines(model="narrow") == []
    np.save(tmp_path / "rows.npy", x)
    made = lm.upload_baseline("rows", tmp_path / "rows.npy", tensor="x")
    assert made["source"] == "file" and lm.baseline("rows")["tensors"][0]["rows"] == 20
    with pytest.raises(Conflict, match="'rows' already exists"):
        lm.upload_baseline("rows", tmp_path / "rows.npy", tensor="x")
    lm.create_pipeline("fraud", steps=["scaler"])
    with pytest.raises(InvalidInput, match="no captured traffic of pipeline 'fraud'"):
        lm.create_baseline_from_capture(
            "cap", pipeline="fraud", since=T0, until=T0 + timedelta(hours=1)
        )
    lm.delete_baseline("rows")
    with pytest.raises(NotFound):
        lm.baseline("rows")


# -- the CLI -----------------------------------------------------------------------------------


def test_parse_when_takes_durations_and_iso_datetimes() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_when("2h", what="--since", now=now) == now - timedelta(hours=2)
    assert parse_when("2025-06-01T10:00", what="--since") == datetime(
        2025, 6, 1, 10, tzinfo=timezone.utc
    )
    aware = parse_when("2025-06-01T10:00+02:00", what="--until")
    assert aware == datetime(2025, 6, 1, 8, tzinfo=timezone.utc)
    with pytest.raises(InvalidInput, match="--until 'soon' is neither a duration nor a date"):
        parse_when("soon", what="--until")


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Settings]:
    with served_api(make_settings(tmp_path / "home", database_url=database_url)) as settings:
        yield settings


def test_the_cli_uploads_lists_shows_and_deletes_baselines(
    served: Settings, tmp_path: Path
) -> None:
    env = {
        "LASTMILE_HOME": str(served.home),
        "LASTMILE_API_URL": f"http://127.0.0.1:{served.api_port}",
        "LASTMILE_API_KEY": served.owner_key_path.read_text().strip(),
        "COLUMNS": "200",
    }
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(cli_app, ["baseline", *args], env=env)

    (tmp_path / "rows.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    made = cli("upload", "rows", str(tmp_path / "rows.csv"), "--tensor", "x", "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["details"]["columns"] == ["a", "b"] and info["tensors"][0]["max"] == 6.0
    listed = cli("list", "--json")
    assert [b["name"] for b in json.loads(listed.output)] == ["rows"]
    shown = cli("show", "rows")
    assert shown.exit_code == 0 and "inputs" in shown.output and "rows.csv" in shown.output
    missing = cli("upload", "other", str(tmp_path / "rows.csv"))
    assert isinstance(missing.exception, InvalidInput) and "--tensor" in str(missing.exception)
    bad_since = cli("create", "cap", "--pipeline", "fraud", "--since", "yesterday")
    assert isinstance(bad_since.exception, InvalidInput)
    assert "--since 'yesterday'" in str(bad_since.exception)
    no_pipeline = cli("create", "cap", "--pipeline", "fraud", "--since", "2h", "--json")
    assert isinstance(no_pipeline.exception, NotFound)
    deleted = cli("delete", "rows", "--json")
    assert deleted.exit_code == 0 and json.loads(deleted.output) == {"deleted": "rows"}
    assert json.loads(cli("list", "--json").output) == []
