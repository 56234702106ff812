"""Safe rollouts end to end through the CLI: a real tritonserver, the real gateway, real clients.

One system serves the whole module (start-up is the expensive part). Models are affine maps
(y = x * scale), so every answer says which version computed it, and a partly failing model
errors on rows whose first feature is out of its range, as a bad candidate would.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import make_affine, make_partly_failing

pytestmark = pytest.mark.e2e

GOOD = [[0.5, 1.0, 2.0, 3.0]]
BAD = [[100.0, 1.0, 2.0, 3.0]]  # the partly failing model refuses this row


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    home: Path = tmp_path_factory.mktemp("rollouts") / "home"
    settings = make_settings(home, scrape_interval_s=5.0, rollout_tick_s=0.25)
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    models = tmp_path_factory.mktemp("models")
    try:
        for version, scale in ((1, 1.0), (2, 2.0)):
            path = make_affine(models / f"s{version}.onnx", 4, scale, 0.0)
            running.cli("model", "import", str(path), "--name", "scaler")
        running.cli(
            "model", "import", str(make_partly_failing(models / "f.onnx")), "--name", "flaky"
        )
        running.cli(
            "model", "import", str(make_affine(models / "p.onnx", 4, 1.0, 0.25)), "--name", "nudged"
        )
        # computes what scaler:1 does, but Triton's batcher holds each request up to 1 s
        running.cli(
            "model", "import", str(make_affine(models / "l.onnx", 4, 1.0, 0.0)), "--name", "lazy"
        )
        running.cli(
            "model", "configure", "lazy", "--max-batch-size", "256",
            "--preferred-batch", "256", "--queue-delay-us", "1000000",
        )  # fmt: skip
        yield running
    finally:
        supervisor.stop(settings)


def _pipeline(system: RunningSystem, name: str, *steps: str) -> int:
    """Create a pipeline version per step (each a one-step pipeline); the versions made."""
    for step in steps:
        system.cli("pipeline", "create", name, "--step", step)
    return len(steps)


def _body(rows: list[list[float]], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


@dataclass
class Load:
    """Clients sending requests until stopped; every answer is kept by variant and outcome."""

    system: RunningSystem
    pipeline: str
    rows: Callable[[int], list[list[float]]] = lambda i: GOOD
    clients: int = 4
    grpc_clients: int = 0
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        url = f"http://{self.system.gateway}/v2/models/{self.pipeline}/infer"

        def run(seed: int) -> None:
            deadline = time.monotonic() + 180  # bounded even if the test body fails
            i = seed
            with httpx.Client(timeout=30) as http:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    i += self.clients
                    sent = time.monotonic()
                    try:
                        r = http.post(url, json=_body(self.rows(i)))
                        key = (r.headers.get("lastmile-variant", ""), r.status_code)
                        text = r.text if r.status_code != 200 else ""
                    except httpx.HTTPError as exc:
                        key, text = ("", 0), repr(exc)
                    with self._lock:
                        self.outcomes[key] += 1
                        self.latencies.append((sent, time.monotonic() - sent))
                        if text:
                            self.errors.append(text[:200])

        def run_grpc(seed: int) -> None:
            from tritonclient.utils import InferenceServerException

            client = grpcclient.InferenceServerClient(self.system.state["gateway"]["grpc"])
            deadline = time.monotonic() + 180
            i = seed
            while not self._stop.is_set() and time.monotonic() < deadline:
                i += self.grpc_clients
                tensor = grpcclient.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.asarray(self.rows(i), np.float32))
                sent = time.monotonic()
                try:
                    response = client.infer(self.pipeline, [tensor], client_timeout=30)
                    variant = response.get_response().parameters["lastmile_variant"].string_param
                    key, text = (variant, 200), ""
                except InferenceServerException as exc:
                    key, text = ("grpc", 500), str(exc)
                with self._lock:
                    self.outcomes[key] += 1
                    self.latencies.append((sent, time.monotonic() - sent))
                    if text:
                        self.errors.append(text[:200])
            client.close()

        self._threads = [threading.Thread(target=run, args=(n,)) for n in range(self.clients)]
        self._threads += [
            threading.Thread(target=run_grpc, args=(n,)) for n in range(self.grpc_clients)
        ]
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, count: int) -> None:
        """Until at least ``count`` more answers arrived (bounded)."""
        with self._lock:
            target = sum(self.outcomes.values()) + count
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self._lock:
                if sum(self.outcomes.values()) >= target:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the load did not reach {count} more answers")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _rollout(system: RunningSystem, pipeline: str) -> dict[str, Any]:
    return dict(json.loads(system.cli("rollout", "status", pipeline, "--json").stdout))


def _wait_state(
    system: RunningSystem, pipeline: str, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = _rollout(system, pipeline)
        if info["state"] in states or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def _report(system: RunningSystem, pipeline: str) -> dict[str, Any]:
    return dict(json.loads(system.cli("rollout", "report", pipeline, "--json").stdout))


def _infer(system: RunningSystem, pipeline: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"http://{system.gateway}/v2/models/{pipeline}/infer",
        json=_body(GOOD),
        headers=headers,
        timeout=30,
    )


def test_every_response_names_its_variant_over_http_and_grpc(system: RunningSystem) -> None:
    _pipeline(system, "named", "scaler:2")
    system.cli("deploy", "named", "--version", "1")
    r = httpx.post(
        f"http://{system.gateway}/v2/models/named/infer",
        json={**_body(GOOD), "id": "req-7"},
        headers={"x-request-id": "abc"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["lastmile-variant"] == "named/1"
    assert (body["model_name"], body["model_version"], body["id"]) == ("named", "1", "req-7")
    assert body["parameters"]["lastmile_variant"] == "named/1"

    client = httpclient.InferenceServerClient(system.gateway)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.asarray(GOOD, np.float32))
    result = client.infer("named", [inp])
    np.testing.assert_allclose(result.as_numpy("y"), 2 * np.asarray(GOOD))
    assert result.get_response()["parameters"]["lastmile_variant"] == "named/1"
    client.close()

    gclient = grpcclient.InferenceServerClient(system.state["gateway"]["grpc"])
    ginp = grpcclient.InferInput("x", [1, 4], "FP32")
    ginp.set_data_from_numpy(np.asarray(GOOD, np.float32))
    response = gclient.infer("named", [ginp]).get_response()
    assert (response.model_name, response.model_version) == ("named", "1")
    assert response.parameters["lastmile_variant"].string_param == "named/1"
    gclient.close()


def test_canary_of_a_failing_candidate_rolls_back_on_its_own(system: RunningSystem) -> None:
    _pipeline(system, "risky", "scaler:1", "flaky")
    system.cli("deploy", "risky", "--version", "1")
    with Load(system, "risky", rows=lambda i: BAD if i % 5 == 0 else GOOD) as load:
        load.wait_for(20)
        system.cli(
            "rollout", "start", "risky", "--strategy", "canary", "--candidate", "2",
            "--step", "50", "--step", "100", "--interval", "2", "--min-requests", "20",
            "--max-error-rate", "0.05",
        )  # fmt: skip
        info = _wait_state(system, "risky", {"rolled_back", "promoted"}, timeout=10)
        load.wait_for(50)  # after the rollback every answer comes from the stable version
    assert info["state"] == "rolled_back", info
    started, verdict = info["events"][1], info["events"][-1]
    assert started["action"] == "start"
    # within 2 gate intervals (2 s each) of the canary's start
    took = datetime.fromisoformat(verdict["ts"]) - datetime.fromisoformat(started["ts"])
    assert took.total_seconds() <= 4.0, took
    assert verdict["action"] == "rollback" and "error_rate" in verdict["reason"]
    gate = next(g for g in verdict["figures"]["gates"] if g["name"] == "error_rate")
    assert gate["passed"] is False and gate["value"] > 0.05
    # errors came only from the candidate's share, and only the canary's requests failed
    failed = {variant for (variant, code), n in load.outcomes.items() if code != 200 and n}
    assert failed == {"risky/2"}, load.outcomes
    assert info["weights"] == {"1": 100.0, "2": 0.0}
    status = json.loads(system.cli("deployment", "status", "risky", "--json").stdout)
    assert status["version"] == 1
    history = json.loads(system.cli("history", "risky", "--json").stdout)
    assert [h["action"] for h in history if h["kind"] == "rollout"][:2] == ["rollback", "start"]


def test_canary_of_a_healthy_candidate_is_promoted_through_every_step(
    system: RunningSystem,
) -> None:
    _pipeline(system, "steady", "scaler:1", "scaler:2")
    system.cli("deploy", "steady", "--version", "1")
    with Load(system, "steady") as load:
        system.cli(
            "rollout", "start", "steady", "--strategy", "canary", "--candidate", "2",
            "--step", "25", "--step", "50", "--step", "100", "--interval", "0.5",
            "--min-requests", "5", "--max-p99-ratio", "1000",  # latency is not judged here
        )  # fmt: skip
        info = _wait_state(system, "steady", {"promoted", "rolled_back"})
        load.wait_for(20)
    assert info["state"] == "promoted", info["events"][-1]
    steps = [e["weights"].get("2") for e in info["events"] if e["action"] in ("start", "advance")]
    assert steps == [25.0, 50.0, 100.0]
    assert sum(n for (_, code), n in load.outcomes.items() if code != 200) == 0, load.errors[:3]
    assert _infer(system, "steady").headers["lastmile-variant"] == "steady/2"
    # the stable version was unloaded once drained
    triton = f"http://127.0.0.1:{system.settings.triton_http_port}/v2/models"
    assert httpx.get(f"{triton}/default.steady.v2/ready", timeout=10).status_code == 200
    assert httpx.get(f"{triton}/default.steady.v1/ready", timeout=10).status_code != 200


def _triton_ready(system: RunningSystem, model: str) -> bool:
    url = f"http://127.0.0.1:{system.settings.triton_http_port}/v2/models/{model}/ready"
    return httpx.get(url, timeout=10).status_code == 200


def test_sticky_ab_split_holds_its_shares_and_keys(system: RunningSystem) -> None:
    _pipeline(system, "abc", "scaler:1", "scaler:2", "nudged")
    _pipeline(system, "bystander", "scaler:1")
    system.cli("deploy", "abc", "--version", "1")
    system.cli(
        "rollout", "start", "abc", "--strategy", "ab", "--candidate", "2", "--candidate", "3",
        "--weight", "1=70", "--weight", "2=30", "--weight", "3=0",
    )  # fmt: skip
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=30) as http:
        url = f"http://{system.gateway}/v2/models/abc/infer"
        for _ in range(1000):
            seen[http.post(url, json=_body(GOOD)).headers["lastmile-variant"]] += 1
        assert abs(seen["abc/1"] / 1000 - 0.70) <= 0.05, seen
        assert abs(seen["abc/2"] / 1000 - 0.30) <= 0.05, seen
        assert seen["abc/3"] == 0
        # a redeploy of another pipeline never changes this one's split
        system.cli("deploy", "bystander", "--version", "1")
        first: dict[str, str] = {}
        for round_ in range(5):
            for user in range(200):
                variant = http.post(
                    url, json=_body(GOOD), headers={"lastmile-key": f"user-{user}"}
                ).headers["lastmile-variant"]
                assert first.setdefault(f"user-{user}", variant) == variant, (round_, user)
        assert set(first.values()) == {"abc/1", "abc/2"}
    report = json.loads(system.cli("rollout", "report", "abc", "--json").stdout)
    counts = {v["variant"]: v["requests"] for v in report["variants"]}
    assert counts["abc/3"] == 0 and counts["abc/1"] > counts["abc/2"] > 0
    system.cli("rollout", "promote", "abc", "--to", "2")
    assert _infer(system, "abc").headers["lastmile-variant"] == "abc/2"


def test_shadow_reports_output_differences_and_never_hurts_the_client(
    system: RunningSystem, tmp_path: Path
) -> None:
    twin = make_affine(tmp_path / "twin.onnx", 4, 1.0, 0.0)  # computes what scaler:1 does
    system.cli("model", "import", str(twin), "--name", "twin")
    _pipeline(system, "mirror", "scaler:1", "nudged", "flaky", "twin", "lazy")
    system.cli("deploy", "mirror", "--version", "1")
    # a candidate equal to the primary agrees everywhere
    system.cli("rollout", "start", "mirror", "--strategy", "shadow", "--candidate", "4")
    with Load(system, "mirror") as load:
        load.wait_for(100)
    report = json.loads(system.cli("rollout", "report", "mirror", "--json").stdout)
    same = report["shadow"]["mirror/4"]["outputs"]["y"]
    assert same["compared"] > 0 and same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    system.cli("rollout", "abort", "mirror")
    # a perturbed one: the right difference
    system.cli("rollout", "start", "mirror", "--strategy", "shadow", "--candidate", "2")
    with Load(system, "mirror") as load:
        load.wait_for(100)
    report = json.loads(system.cli("rollout", "report", "mirror", "--json").stdout)
    diff = report["shadow"]["mirror/2"]["outputs"]["y"]
    assert diff["compared"] > 0 and diff["agreement"] == 0.0
    assert diff["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)
    assert set(load.outcomes) == {("mirror/1", 200)}
    system.cli("rollout", "abort", "mirror")
    # a shadow candidate that fails on a fifth of the traffic: no client sees it
    system.cli("rollout", "start", "mirror", "--strategy", "shadow", "--candidate", "3")
    with Load(system, "mirror", rows=lambda i: BAD if i % 5 == 0 else GOOD) as load:
        load.wait_for(100)
    assert set(load.outcomes) == {("mirror/1", 200)}, load.errors[:3]
    report = json.loads(system.cli("rollout", "report", "mirror", "--json").stdout)
    shadowed = next(v for v in report["variants"] if v["variant"] == "mirror/3")
    assert shadowed["shadow"].get("error", 0) > 0
    system.cli("rollout", "abort", "mirror")
    # a shadow candidate that answers after up to a second: the clients do not wait for it
    system.cli("rollout", "start", "mirror", "--strategy", "shadow", "--candidate", "5")
    with Load(system, "mirror") as load:
        load.wait_for(100)
    assert set(load.outcomes) == {("mirror/1", 200)}, load.errors[:3]
    seconds = sorted(s for _, s in load.latencies)
    assert seconds[int(0.99 * len(seconds))] < 0.5  # had they waited, their p99 would be ~1 s
    deadline = time.monotonic() + 30  # the copies answer up to a second after the primaries
    while "mirror/5" not in (report := _report(system, "mirror"))["shadow"]:
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    latency = report["shadow"]["mirror/5"]["latency"]
    assert latency["candidate_p99_ms"] > 500 > 10 * latency["primary_p99_ms"], latency
    system.cli("rollout", "abort", "mirror")


def test_blue_green_and_hot_swap_under_load_fail_no_request(system: RunningSystem) -> None:
    _pipeline(system, "colors", "scaler:1", "scaler:2", "nudged")
    system.cli("deploy", "colors", "--version", "1")
    with Load(system, "colors", clients=8, grpc_clients=8) as load:
        system.cli("rollout", "start", "colors", "--strategy", "blue-green", "--candidate", "2")
        load.wait_for(20)
        # green is a complete second copy: its step has a model of its own beside blue's
        assert _triton_ready(system, "default.colors.v2.scaler")
        assert _triton_ready(system, "default.scaler")
        system.cli("rollout", "switch", "colors")
        load.wait_for(20)
        assert _infer(system, "colors").headers["lastmile-variant"] == "colors/2"
        system.cli("rollout", "switch", "colors")
        load.wait_for(20)
        assert _infer(system, "colors").headers["lastmile-variant"] == "colors/1"
        system.cli("rollout", "switch", "colors")
        system.cli("rollout", "promote", "colors")
        load.wait_for(20)
        assert _triton_ready(system, "default.colors.v2.scaler")  # green stays whole
        for version in (3, 1, 2):  # three hot-swaps in a row
            system.cli(
                "rollout", "start", "colors", "--strategy", "hot-swap", "--candidate", str(version)
            )
            load.wait_for(20)
        system.cli("rollback", "colors")  # to the version live before: 1
        load.wait_for(20)
    failed = {k: n for k, n in load.outcomes.items() if k[1] != 200}
    assert failed == {}, (failed, load.errors[:3])
    assert not _triton_ready(system, "default.colors.v2.scaler")  # retired with green
    assert _infer(system, "colors").headers["lastmile-variant"] == "colors/1"
    variants = {variant for variant, _ in load.outcomes}
    assert {"colors/1", "colors/2", "colors/3"} <= variants


def test_ab_between_models_that_name_their_tensors_differently(
    system: RunningSystem, tmp_path: Path
) -> None:
    """The pipeline maps its own input and output names: clients send one request to both."""
    renamed = make_affine(
        tmp_path / "r.onnx", 4, 5.0, 0.0, input_name="features", output_name="score"
    )
    system.cli("model", "import", str(renamed), "--name", "renamed")
    _pipeline(system, "names", "scaler:1")
    (tmp_path / "v2.yaml").write_text(
        "name: names\n"
        "steps:\n"
        "  - name: s\n"
        "    model: renamed\n"
        "    inputs: {features: $inputs.x}\n"
        "outputs: {y: $s.score}\n"
    )
    system.cli("pipeline", "apply", str(tmp_path / "v2.yaml"))
    system.cli("deploy", "names", "--version", "1")
    system.cli(
        "rollout", "start", "names", "--strategy", "ab", "--candidate", "2",
        "--weight", "1=50", "--weight", "2=50",
    )  # fmt: skip
    scale = {"names/1": 1.0, "names/2": 5.0}
    seen: Counter[str] = Counter()
    for user in range(40):
        r = _infer(system, "names", **{"lastmile-key": f"u{user}"})
        assert r.status_code == 200, r.text
        variant = r.headers["lastmile-variant"]
        seen[variant] += 1
        [out] = r.json()["outputs"]
        assert out["name"] == "y"
        np.testing.assert_allclose(out["data"], scale[variant] * np.asarray(GOOD).ravel())
    assert set(seen) == {"names/1", "names/2"}
    system.cli("rollout", "abort", "names")
