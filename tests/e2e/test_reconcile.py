"""Store, repository, Triton and gateway drift apart (a deleted or truncated model file, a stray
folder, a staging leftover, a lost route, a model Triton dropped, a damaged stored file) and
``lastmile reconcile`` brings them back together on the real system; a redeploy repairs too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from manager import supervisor
from manager.errors import Forbidden
from manager.sdk import Lastmile
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import expected_affine, make_affine

pytestmark = pytest.mark.e2e

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@dataclass
class System(RunningSystem):
    """The e2e system with extra environment (no reconcile timer: the test decides when)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "LASTMILE_RECONCILE_INTERVAL_S": "0", **self.extra_env}

    def reconcile(self, *args: str, ok: bool = True) -> dict[str, Any]:
        proc = self.cli("reconcile", "--json", *args, check=False)
        assert proc.returncode == (0 if ok else 1), proc.stdout + proc.stderr
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def infer(self, pipeline: str) -> np.ndarray:
        with Lastmile.from_settings(self.settings) as lm:
            return lm.infer(pipeline, {"x": X.tolist()})["y"]

    @property
    def repo(self) -> Path:
        return self.settings.repository_dir

    def admin(self, method: str, body: Any = None) -> dict[str, Any]:
        """The gateway's admin endpoint, with the secret the system gave it."""
        token = (self.settings.run_dir / "gateway-admin.key").read_text().strip()
        response = httpx.request(
            method,
            f"http://127.0.0.1:{self.settings.gateway_admin_port}/routes",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def _start(settings: Any, **env: str) -> System:
    system = System(settings=settings, state={}, extra_env=env)
    system.state = json.loads(system.cli("up", "--detach", "--json").stdout)
    return system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = make_settings(tmp_path_factory.mktemp("reconcile") / "home")
    running = _start(settings)
    try:
        yield running
    finally:
        supervisor.stop(settings)


@pytest.fixture(scope="module")
def models(system: System, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two pipelines on the system: ``rc`` (model rc-scale) and ``rc-other`` (rc-bad)."""
    folder = tmp_path_factory.mktemp("models")
    files = {
        "rc-scale": make_affine(folder / "scale.onnx", 4, 2.0, 0.0),
        "rc-bad": make_affine(folder / "bad.onnx", 4, 3.0, 0.0),
    }
    for name, path in files.items():
        system.cli("model", "import", str(path), "--name", name)
    system.cli("pipeline", "create", "rc", "--step", "rc-scale")
    system.cli("pipeline", "create", "rc-other", "--step", "rc-bad")
    system.cli("deploy", "rc", "--version", "latest")
    system.cli("deploy", "rc-other", "--version", "latest")
    return files


def _stored(system: System, source: Path) -> Path:
    """The content-addressed stored file of an imported ONNX file."""
    return system.settings.models_dir / f"{hashlib.sha256(source.read_bytes()).hexdigest()}.onnx"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _kinds(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["kind"], a["target"]) for a in report["actions"]}


def test_reconcile_repairs_files_leftovers_and_routes(
    system: System, models: dict[str, Path]
) -> None:
    assert system.reconcile() == {"dry_run": False, "actions": [], "errors": [], "in_sync": True}
    model_file = system.repo / "default.rc-scale" / "1" / "model.onnx"

    # a deleted file: the dry run lists the rewrite and changes nothing
    model_file.unlink()
    before = _snapshot(system.repo)
    planned = system.reconcile("--dry-run")
    assert _snapshot(system.repo) == before
    assert planned["dry_run"] is True and planned["in_sync"] is False
    assert {("rewrite", "default.rc-scale/1"), ("load", "default.rc-scale"),
            ("load", "default.rc.v1")} <= _kinds(planned)  # fmt: skip
    assert not model_file.exists()
    done = system.reconcile()
    assert _kinds(done) == _kinds(planned) and done["errors"] == []
    assert model_file.read_bytes() == _stored(system, models["rc-scale"]).read_bytes()
    np.testing.assert_allclose(system.infer("rc"), expected_affine(X, 2.0, 0.0))

    # a truncated file, a stray folder of the manager's naming scheme, a staging leftover
    model_file.write_bytes(model_file.read_bytes()[:20])
    stray = system.repo / "default.stray.v3"
    (stray / "1").mkdir(parents=True)
    (stray / "config.pbtxt").write_text('name: "default.stray.v3"\n')
    leftover = system.repo / ".staging" / "0123456789abcdef"
    (leftover / "default.rc-scale" / "1").mkdir(parents=True)
    foreign = system.repo / "not-managed"  # outside the naming scheme: never touched
    foreign.mkdir()
    done = system.reconcile()
    assert {("rewrite", "default.rc-scale/1"), ("remove", "default.stray.v3"),
            ("remove", ".staging/0123456789abcdef")} <= _kinds(done)  # fmt: skip
    assert "differs from the stored file" in next(
        a["reason"] for a in done["actions"] if a["kind"] == "rewrite"
    )
    assert model_file.read_bytes() == _stored(system, models["rc-scale"]).read_bytes()
    assert not stray.exists() and not leftover.exists() and foreign.is_dir()

    # a route the gateway lost is pushed again
    table = system.admin("GET")
    routes = dict(table["routes"])
    del routes["default/rc"]
    system.admin("PUT", {"generation": table["generation"] + 1, "routes": routes})
    done = system.reconcile()
    assert [(a["kind"], a["target"]) for a in done["actions"]] == [("push_routes", "gateway")]
    assert "missing: default/rc" in done["actions"][0]["reason"]
    assert "default/rc" in system.admin("GET")["routes"]
    np.testing.assert_allclose(system.infer("rc"), expected_affine(X, 2.0, 0.0))

    # converged: a second run has nothing to do
    assert system.reconcile()["in_sync"] is True
    assert system.reconcile("--dry-run")["in_sync"] is True


def test_redeploy_repairs_a_truncated_file(system: System, models: dict[str, Path]) -> None:
    model_file = system.repo / "default.rc-scale" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:20])
    system.cli("deploy", "rc", "--version", "latest")
    assert model_file.read_bytes() == _stored(system, models["rc-scale"]).read_bytes()
    np.testing.assert_allclose(system.infer("rc"), expected_affine(X, 2.0, 0.0))
    assert system.reconcile()["in_sync"] is True


def test_a_damaged_stored_file_is_reported_while_other_pipelines_are_repaired(
    system: System, models: dict[str, Path]
) -> None:
    stored = _stored(system, models["rc-bad"])
    good_bytes = stored.read_bytes()
    stored.write_bytes(good_bytes[: len(good_bytes) // 2])  # bit rot in the store
    (system.repo / "default.rc-bad" / "1" / "model.onnx").unlink()
    (system.repo / "default.rc-scale" / "1" / "model.onnx").unlink()
    try:
        report = system.reconcile(ok=False)
        errors = {e["target"]: e["error"] for e in report["errors"]}
        assert "cannot be repaired" in errors["default.rc-bad/1"]
        assert "is damaged" in errors["default.rc-bad/1"]
        assert "default/rc-other" in errors["default.rc-bad/1"]
        assert ("rewrite", "default.rc-scale/1") in _kinds(report)
        assert not any(a["target"].startswith("default.rc-bad") for a in report["actions"])
        assert (system.repo / "default.rc-scale" / "1" / "model.onnx").is_file()
        np.testing.assert_allclose(system.infer("rc"), expected_affine(X, 2.0, 0.0))
        # Triton still serves what it loaded before; the deployment says what is wrong
        np.testing.assert_allclose(system.infer("rc-other"), expected_affine(X, 3.0, 0.0))
        with Lastmile.from_settings(system.settings) as lm:
            assert "cannot be repaired" in (lm.deployment("rc-other")["error"] or "")
            assert lm.deployment("rc")["error"] is None
    finally:
        stored.write_bytes(good_bytes)  # the file restored from a backup
    report = system.reconcile()
    assert ("rewrite", "default.rc-bad/1") in _kinds(report) and report["errors"] == []
    with Lastmile.from_settings(system.settings) as lm:
        assert lm.deployment("rc-other")["error"] is None
    assert system.reconcile()["in_sync"] is True


def test_only_the_owner_may_reconcile(system: System) -> None:
    with Lastmile.from_settings(system.settings) as owner:
        made = owner.create_principal("rc-editor", workspace="default", role="admin")
    with (
        Lastmile(system.state["api"]["url"], api_key=made["key"]) as admin,
        pytest.raises(Forbidden, match="only the server owner"),
    ):
        admin.reconcile(dry_run=True)


def test_a_model_triton_dropped_is_loaded_again(
    external_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    # The embedded server's control secret never leaves the manager's process, so this test
    # runs its own Triton (whose header it knows) and points the system at it.
    ep = external_triton.endpoints
    header = "=".join(next(iter(external_triton.control_headers.items())))
    settings = make_settings(tmp_path / "home", triton_url=ep.http_url)
    system = _start(
        settings,
        LASTMILE_TRITON_URL=ep.http_url,
        LASTMILE_TRITON_METRICS_URL=ep.metrics_url,
        LASTMILE_TRITON_CONTROL_HEADER=header,
    )
    try:
        system.cli("model", "import", str(make_affine(tmp_path / "a.onnx", 4, 5.0, 0.0)),
                   "--name", "dropped")  # fmt: skip
        system.cli("pipeline", "create", "drop", "--step", "dropped")
        system.cli("deploy", "drop", "--version", "latest")
        with external_triton.client() as triton:
            triton.unload_model("default.dropped")
            assert not triton.is_model_ready("default.dropped")
        report = system.reconcile()
        assert ("load", "default.dropped") in _kinds(report)
        assert ("load", "default.drop.v1") in _kinds(report)
        with external_triton.client() as triton:
            assert triton.is_model_ready("default.dropped")
        np.testing.assert_allclose(system.infer("drop"), expected_affine(X, 5.0, 0.0))
        assert system.reconcile()["in_sync"] is True
    finally:
        supervisor.stop(settings)
