"""A deployment's life on the real embedded Triton, through the SDK as a team member would:
deploy a pinned version, status per step, redeploy, rollback, history with who and what,
a concurrent deploy refused, a served model version undeletable, undeploy."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from manager.errors import Conflict, NotFound
from manager.sdk import Lastmile
from manager.triton.client import TritonClient
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import expected_affine, make_affine

pytestmark = pytest.mark.e2e


def _answer(lm: Lastmile, pipeline: str) -> np.ndarray:
    x = np.ones((2, 4), np.float32)
    return lm.infer(pipeline, {"x": x.tolist()})["y"]


def test_deploy_rollback_history_and_undeploy(system: RunningSystem, tmp_path: Path) -> None:
    with Lastmile.from_settings(system.settings) as owner:
        owner.create_workspace("life")
        made = owner.create_principal("dev", workspace="life", role="editor")
    url = system.state["api"]["url"]
    gateway = system.state["gateway"]["http"]
    with Lastmile(url, api_key=made["key"], workspace="life", gateway_url=gateway) as lm:
        for scale in (2.0, 3.0):
            lm.import_model(make_affine(tmp_path / f"s{scale}.onnx", 4, scale, 0.0), name="aff")
        lm.create_pipeline("life", steps=["aff:1"])
        lm.create_pipeline("life", steps=["aff:2"])

        live = lm.deploy("life", version=1)
        assert live["state"] == "live" and live["version"] == 1
        np.testing.assert_allclose(_answer(lm, "life"), expected_affine(np.ones((2, 4)), 2.0, 0))
        status = lm.deployment("life")
        assert [s["state"] for s in status["steps"]] == ["READY", "READY"]
        assert status["steps"][0]["triton_model"] == "life.aff"

        # a second deploy of the same pipeline while one runs is refused at once
        results: list[object] = []

        def deploy_v2() -> None:
            try:
                results.append(lm.deploy("life", version=2))
            except Conflict as exc:
                results.append(exc)

        threads = [threading.Thread(target=deploy_v2) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        conflicts = [r for r in results if isinstance(r, Conflict)]
        assert len(results) == 2 and len(conflicts) == 1, results
        assert "already in progress" in conflicts[0].message
        np.testing.assert_allclose(_answer(lm, "life"), expected_affine(np.ones((2, 4)), 3.0, 0))

        with pytest.raises(Conflict, match="served by deployment"):
            lm.delete_model_version("aff", 2)

        back = lm.rollback("life")
        assert back["version"] == 1
        np.testing.assert_allclose(_answer(lm, "life"), expected_affine(np.ones((2, 4)), 2.0, 0))
        history = lm.deployment_history("life")
        assert [(e["action"], e["version"], e["outcome"]) for e in history] == [
            ("rollback", 1, "live"),
            ("deploy", 2, "live"),
            ("deploy", 1, "live"),
        ]
        assert {e["principal"] for e in history} == {"dev"}

        gone = lm.undeploy("life")
        assert gone["state"] == "undeployed"
        with pytest.raises(NotFound):
            lm.infer("life", {"x": [[1.0, 1.0, 1.0, 1.0]]})
        triton = system.state["triton"][0]["http"]
        with TritonClient(triton, timeout_s=10) as client:
            assert not client.is_model_ready("life.life.v1")
            assert not client.is_model_ready("life.aff")
        assert lm.deployment_history("life")[0]["action"] == "undeploy"
        lm.delete_model_version("aff", 2)  # nothing serves it any more
        again = lm.deploy("life", version=1)
        assert again["state"] == "live"
        np.testing.assert_allclose(_answer(lm, "life"), expected_affine(np.ones((2, 4)), 2.0, 0))
        lm.undeploy("life")


def test_login_stores_the_key_and_roles_decide_exit_codes(
    system: RunningSystem, tmp_path: Path
) -> None:
    import json
    import os
    import stat
    import subprocess
    import sys

    with Lastmile.from_settings(system.settings) as owner:
        owner.create_workspace("cli-ws")
        key = owner.create_principal("carl", workspace="cli-ws", role="editor")["key"]
    creds = tmp_path / "credentials.json"
    env = dict(system.env, LASTMILE_CREDENTIALS_FILE=str(creds))

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "manager.cli", *args],
            env=env, input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    logged = cli("login", stdin=key + "\n")
    assert logged.returncode == 0, logged.stderr
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert key not in logged.stdout + logged.stderr  # the key is not echoed back
    me = json.loads(cli("whoami", "--json").stdout)
    assert me["principal"] == "carl" and me["workspaces"] == {"cli-ws": "editor"}
    assert json.loads(cli("model", "list", "-w", "cli-ws", "--json").stdout) == []
    env["LASTMILE_WORKSPACE"] = "cli-ws"
    assert cli("pipeline", "list", "--json").returncode == 0
    hidden = cli("model", "list", "-w", "default")
    assert hidden.returncode == 3 and "does not exist" in hidden.stderr
    refused = cli("audit")
    assert refused.returncode == 5 and "admin" in refused.stderr
    assert cli("login", "--key", "not-a-key").returncode == 6
    assert cli("logout").returncode == 0
    assert json.loads(cli("whoami", "--json").stdout)["principal"] == "owner"  # admin.key again
