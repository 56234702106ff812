"""``GET .../pipelines/{pipeline}/metrics`` on the real API and store (SQLite, PostgreSQL):
viewers read it, strangers get a 404, every bad query is a problem that says how to fix it;
and the ``lastmile metrics`` / ``prometheus-config`` refusals that happen before any call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from manager import store
from manager.services.context import Platform
from manager.services.metrics import Collector
from tests.integration.api_harness import Api, running_api
from tests.integration.test_cli_errors import _cli
from tests.onnx_models import make_affine
from tests.unit.test_metric_rates import TEMPLATE, ZERO

WS = "/api/v1/workspaces/default"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def _pipeline(api: Api, tmp_path: Path) -> None:
    r = api.call(
        "POST",
        f"{WS}/models/scaler/versions",
        content=make_affine(tmp_path / "s.onnx", 4, output_name="z").read_bytes(),
        params={"filename": "s.onnx"},
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    r = api.call("POST", f"{WS}/pipelines", json={"name": "fraud", "steps": ["scaler"]})
    assert r.status_code == 201, r.text


@contextmanager
def collector(api: Api) -> Iterator[Collector]:
    """Records scrapes into the API's store, as the running system's scraper does."""
    engine = store.make_engine(api.settings.db_url)
    try:
        yield Collector(Platform(settings=api.settings, engine=engine))
    finally:
        engine.dispose()


def _text(success: int) -> str:
    return TEMPLATE.format(**{**ZERO, "success": success, "scaler": success})


def test_viewers_read_a_pipeline_s_figures_by_its_own_name(api: Api, tmp_path: Path) -> None:
    _pipeline(api, tmp_path)
    now = time.time()
    with collector(api) as c:
        c.record(ts=now - 10, triton={"http://127.0.0.1:8100": _text(100)})
        c.record(ts=now - 5, triton={"http://127.0.0.1:8100": _text(160)})
    viewer = api.user("vera", "default", "viewer")
    r = api.call("GET", f"{WS}/pipelines/fraud/metrics", viewer, params={"since": "2m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["pipeline"], body["source"], body["since"]) == ("fraud", "direct", "2m")
    (variant,) = body["variants"]
    assert variant["variant"] == "fraud/1"
    requests = variant["triton"]["requests_per_s"]
    assert requests["total"] == pytest.approx(60) and requests["latest"] == pytest.approx(12)
    assert body["steps"]["scaler:1"]["requests_per_s"]["total"] == pytest.approx(60)
    one = api.call("GET", f"{WS}/pipelines/fraud/metrics", viewer, params={"variant": "v1"})
    assert one.status_code == 200 and len(one.json()["variants"]) == 1


def test_strangers_and_bad_queries_get_problems_that_say_what_to_fix(
    api: Api, tmp_path: Path
) -> None:
    _pipeline(api, tmp_path)
    api.workspace("elsewhere")
    stranger = api.user("sam", "elsewhere", "admin")
    assert api.call("GET", f"{WS}/pipelines/fraud/metrics", stranger).status_code == 404
    cases = [
        ({"since": "5 minutes"}, 422, "'5 minutes' is not a duration", "15m"),
        ({"since": "0s"}, 422, "out of range", "400d"),
        ({"variant": "churn/1"}, 422, "not a version of pipeline 'fraud'", "--variant fraud/2"),
        ({"variant": "7"}, 404, "has no version 7", None),
        ({"source": "graphite"}, 422, "source", None),
    ]
    for params, status, detail, hint in cases:
        r = api.call("GET", f"{WS}/pipelines/fraud/metrics", params=params)
        assert r.status_code == status, (params, r.text)
        assert "application/problem+json" in r.headers["content-type"]
        assert detail in r.text, r.text
        if hint:
            assert hint in r.json()["hint"]
    ghost = api.call("GET", f"{WS}/pipelines/ghost/metrics")
    assert ghost.status_code == 404 and "lastmile pipeline create ghost" in ghost.json()["hint"]
    viewer = api.user("vic", "default", "viewer")
    assert api.call("POST", "/api/v1/metrics/scrape", viewer).status_code == 403
    no_scraper = api.call("POST", "/api/v1/metrics/scrape")
    assert no_scraper.status_code == 422 and "lastmile up" in no_scraper.json()["hint"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["metrics", "fraud", "--since", "5x"], "--since '5x' is not a duration"),
        (["metrics", "--variant", "2"], "--variant needs a PIPELINE"),
        (["metrics", "Fraud!"], "invalid pipeline name 'Fraud!'"),
        (["metrics", "fraud", "--model", "scaler"], "give a PIPELINE or --model, not both"),
        (["metrics", "fraud", "--source", "graphite"], "--source 'graphite' is unknown"),
        (["prometheus-config", "--out", "/nonexistent/dir/p.yml"], "cannot write"),
    ],
)
def test_cli_refuses_bad_arguments_before_calling_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from tests.conftest import make_settings

    proc = _cli(make_settings(tmp_path / "home"), *args)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert message in proc.stderr.replace("\n", " ") and "Traceback" not in proc.stderr


def test_prometheus_config_without_a_running_system_uses_the_settings(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "home")
    out = tmp_path / "prometheus.yml"
    proc = _cli(settings, "prometheus-config", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(out.read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in doc["scrape_configs"]}
    assert targets == {
        "lastmile-triton": [f"127.0.0.1:{settings.triton_metrics_port}"],
        "lastmile-gateway": [f"127.0.0.1:{settings.gateway_metrics_port}"],
    }
    assert "nothing runs for LASTMILE_HOME" in out.read_text()
