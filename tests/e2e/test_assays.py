"""Observability end to end: data capture through the real gateway and tritonserver, summarised
into the store; a drift assay on the import baseline that alerts a real webhook receiver and
rolls back a canary; all through the CLI.

One system serves the whole module, with windows of a second or two so that minutes of
traffic fit in seconds. The model is an affine map (y = 2x), so what the outputs' summaries
must say follows from what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    home: Path = tmp_path_factory.mktemp("assays") / "home"
    settings = make_settings(
        home,
        scrape_interval_s=5.0,
        rollout_tick_s=0.25,
        capture_window_s=1,
        capture_interval_s=0.5,
        assay_interval_s=0.5,
        assay_delay_s=3.0,
    )
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    models = tmp_path_factory.mktemp("models")
    try:
        path = make_affine(models / "double.onnx", 4, 2.0, 0.0)
        sample = models / "sample.npy"  # what the model was trained on: N(0, 1)
        np.save(sample, np.random.default_rng(1).normal(0, 1, size=(2000, 4)).astype(np.float32))
        running.cli("model", "import", str(path), "--name", "double", "--sample", str(sample))
        running.cli("model", "import", str(path), "--name", "twice")  # a candidate, no sample
        yield running
    finally:
        supervisor.stop(settings)


def _capture(system: RunningSystem, pipeline: str) -> dict[str, Any]:
    return dict(json.loads(system.cli("capture", "show", pipeline, "--json").stdout))


def test_captured_calls_are_summarised_per_tensor_http_and_grpc(system: RunningSystem) -> None:
    system.cli("pipeline", "create", "seen", "--step", "double")
    system.cli("deploy", "seen", "--version", "1")
    assert json.loads(system.cli("capture", "set", "seen", "--rate", "0.5", "--json").stdout)[
        "rate"
    ] == pytest.approx(0.5)
    rng = np.random.default_rng(7)
    sent = rng.normal(3.0, 1.0, size=(40, 4)).astype(np.float32)
    with httpx.Client(base_url=f"http://{system.gateway}", timeout=30) as client:
        for row in sent[:30]:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": row.tolist()}]}  # fmt: skip
            assert client.post("/v2/models/seen/infer", json=body).status_code == 200
    grpc = grpcclient.InferenceServerClient(system.state["gateway"]["grpc"])
    for row in sent[30:]:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(row.reshape(1, 4))
        grpc.infer("seen", [inp])
    grpc.close()
    # HTTP and gRPC sample separately: every second call of each, 15 + 5
    captured = np.concatenate([sent[:30][1::2], sent[30:][1::2]])

    def summarised() -> bool:
        system.cli("capture", "summarise")
        tensors = _capture(system, "seen")["tensors"]
        return sum(t["rows"] for t in tensors if t["side"] == "inputs") >= len(captured)

    wait_until("captured calls summarised", summarised, 30)
    view = _capture(system, "seen")
    by_side = {t["side"]: t for t in view["tensors"]}
    assert set(by_side) == {"inputs", "outputs"}
    x, y = by_side["inputs"], by_side["outputs"]
    assert (x["tensor"], y["tensor"], x["version"]) == ("x", "y", 1)
    assert x["rows"] == y["rows"] == len(captured)
    assert (x["count"], x["missing"], x["elements"]) == (captured.size, 0, 4)
    assert x["min"] == pytest.approx(float(captured.min()))
    assert x["max"] == pytest.approx(float(captured.max()))
    assert x["mean"] == pytest.approx(float(captured.mean()), rel=1e-6)
    assert y["mean"] == pytest.approx(2 * float(captured.mean()), rel=1e-6)
    assert y["max"] == pytest.approx(2 * float(captured.max()))
    text = httpx.get(system.state["gateway"]["metrics"], timeout=10).text
    assert 'lastmile_gateway_capture_total{outcome="captured",route="default/seen"} 20.0' in text


def test_a_capture_rate_outside_0_1_is_refused_with_the_reason(system: RunningSystem) -> None:
    proc = system.cli("capture", "set", "seen", "--rate", "1.5", check=False)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert "rate" in proc.stderr and "1" in proc.stderr
    proc = system.cli("capture", "show", "seen", "--since", "yesterday", check=False)
    assert proc.returncode == 6 and "30s, 15m, 2h or 7d" in proc.stderr


class Receiver:
    """A real local webhook receiver: records each POST with its signature check."""

    def __init__(self, secret: str) -> None:
        import http.server

        self.secret = secret
        self.posts: list[tuple[dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from manager.services.alert_delivery import SIGNATURE_HEADER, verify

                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(outer.secret, self.headers.get(SIGNATURE_HEADER, ""), body,
                            now=time.time())  # fmt: skip
                with outer.lock:
                    outer.posts.append((json.loads(body), ok))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/drift"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(
    system: RunningSystem, pipeline: str, rows: np.ndarray, seconds: float, threads: int = 4
) -> None:
    """Every row as one HTTP inference call, from a few client threads, paced to take at
    least `seconds` (so that whole assay windows fall inside each phase of the traffic)."""
    start = time.monotonic()

    def worker(chunk: np.ndarray) -> None:
        pace = seconds / max(1, len(chunk))
        with httpx.Client(base_url=f"http://{system.gateway}", timeout=30) as client:
            for i, row in enumerate(chunk):
                ahead = start + i * pace - time.monotonic()
                if ahead > 0:  # the load's schedule, not a wait for an event
                    time.sleep(ahead)
                body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                    "data": row.tolist()}]}  # fmt: skip
                r = client.post(f"/v2/models/{pipeline}/infer", json=body)
                assert r.status_code == 200, r.text

    pool = [threading.Thread(target=worker, args=(c,)) for c in np.array_split(rows, threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_drift_on_a_candidate_alerts_the_webhook_and_rolls_the_canary_back(
    system: RunningSystem,
) -> None:
    """2,000 calls from the baseline's distribution, then 2,000 shifted by two standard
    deviations, while a canary sends half of them to version 2: the assay on version 2's input
    scores the unshifted windows below its warning and the shifted ones above its alert, the
    receiver gets the signed alert, and the canary is rolled back with the result in its log."""
    system.cli("pipeline", "create", "drifty", "--step", "double")
    system.cli("pipeline", "create", "drifty", "--step", "twice")
    system.cli("deploy", "drifty", "--version", "1")
    system.cli("capture", "set", "drifty", "--rate", "1")
    receiver = Receiver("s3cret")
    try:
        made = json.loads(system.cli(
            "assay", "create", "x-drift", "--pipeline", "drifty", "--tensor", "x",
            "--version", "2", "--window", "2s", "--interval", "1s", "--bins", "5",
            "--warning", "0.1", "--alert", "0.25", "--on-alert", "rollback",
            "--webhook", receiver.url, "--webhook-secret", "s3cret", "--json",
        ).stdout)  # fmt: skip
        assert made["baseline"] == "double-v1"  # the import baseline, found on its own
        system.cli(
            "rollout", "start", "drifty", "--strategy", "canary", "--candidate", "2",
            "--step", "50", "--step", "100", "--interval", "3600",
            "--min-requests", "1000000",
        )  # fmt: skip
        status = json.loads(system.cli("rollout", "status", "drifty", "--json").stdout)
        assert status["state"] == "running" and status["weights"]["2"] == 50.0, status
        rng = np.random.default_rng(3)
        t0 = time.time()
        _send(system, "drifty", rng.normal(0, 1, size=(2000, 4)).astype(np.float32), 6.0)
        t1 = time.time()
        _send(system, "drifty", rng.normal(2, 1, size=(2000, 4)).astype(np.float32), 6.0)
        t2 = time.time()

        def rolled_back() -> bool:
            status = json.loads(system.cli("rollout", "status", "drifty", "--json").stdout)
            return bool(status["state"] == "rolled_back")

        wait_until("the canary rolled back by the assay", rolled_back, 60)
        wait_until(
            "the alert delivered",
            lambda: any(post["status"] == "alert" for post, _ in receiver.posts),
            30,
        )
    finally:
        receiver.close()
    status = json.loads(system.cli("rollout", "status", "drifty", "--json").stdout)
    assert "assay 'x-drift'" in status["reason"] and "alert" in status["reason"]
    assert all(signed for _, signed in receiver.posts)  # every post verified its signature
    payload = next(post for post, _ in receiver.posts if post["status"] == "alert")
    assert payload["pipeline"] == "drifty" and payload["assay"]["name"] == "x-drift"
    assert payload["version"] == 2 and payload["score"] >= 0.25
    alerts = json.loads(system.cli("assay", "alerts", "--assay", "x-drift", "--json").stdout)
    assert any(a["action"].startswith("rolled back rollout") for a in alerts)
    # every window judged: those wholly inside the unshifted traffic below the warning, those
    # wholly inside the shifted traffic above the alert. The first window that alerts rolls the
    # canary back, and that may be one that straddles the shift (half of it shifted is enough):
    # version 2 then gets nothing more and the windows after it hold too little to judge
    results = json.loads(
        system.cli("assay", "results", "x-drift", "--since", "10m", "--json").stdout
    )["results"]

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    before = [r for r in results if ts(r["window_start"]) >= t0 and ts(r["window_end"]) <= t1]
    after = [r for r in results if ts(r["window_start"]) >= t1 and ts(r["window_end"]) <= t2]
    # PSI of a sample from the baseline's own distribution is ~(bins - 1) / values: judge
    # the windows that hold enough values for that to sit far below the warning (0.1)
    judged_before = [r for r in before if r["count"] >= 200]
    assert judged_before and all(r["score"] < 0.1 for r in judged_before), (t0, t1, results)
    judged_after = [r for r in after if r["count"] >= 200]
    assert all(r["status"] == "alert" for r in judged_after), after
    alerted = [r for r in results if r["status"] == "alert"]
    assert alerted and all(ts(r["window_end"]) > t1 for r in alerted), (t1, results)


def test_drift_between_two_steps_is_replayed_from_the_captured_inputs(
    system: RunningSystem,
) -> None:
    """double → twice: twice's input is double's output, which never leaves Triton. An assay
    on it (no baseline named: double's import baseline, which holds its outputs) is fed by
    the summariser replaying the captured inputs through double, and scores a shift."""
    system.cli("pipeline", "create", "chained", "--step", "double", "--step", "twice")
    system.cli("deploy", "chained", "--version", "1")
    system.cli("capture", "set", "chained", "--rate", "1")
    made = json.loads(system.cli(
        "assay", "create", "mid-drift", "--pipeline", "chained", "--step", "twice",
        "--tensor", "x", "--window", "2s", "--bins", "5", "--warning", "0.1", "--alert", "0.25",
        "--json",
    ).stdout)  # fmt: skip
    assert (made["target"]["side"], made["target"]["tensor"]) == ("step", "double.y")
    assert made["baseline"] == "double-v1"
    sent = np.random.default_rng(5).normal(2, 1, size=(300, 4)).astype(np.float32)
    _send(system, "chained", sent, 2.0)

    def replayed() -> bool:
        system.cli("capture", "summarise")
        tensors = _capture(system, "chained")["tensors"]
        return sum(t["rows"] for t in tensors if t["side"] == "step") >= len(sent)

    wait_until("the tensor between the steps replayed", replayed, 30)
    (between,) = [t for t in _capture(system, "chained")["tensors"] if t["side"] == "step"]
    assert (between["tensor"], between["rows"], between["count"]) == ("double.y", 300, sent.size)
    assert between["mean"] == pytest.approx(2 * float(sent.astype(np.float64).mean()), rel=1e-6)
    assert between["max"] == pytest.approx(2 * float(sent.max()))

    def alerted() -> bool:
        results = json.loads(
            system.cli("assay", "results", "mid-drift", "--since", "10m", "--json").stdout
        )["results"]
        return any(r["status"] == "alert" and r["count"] >= 200 for r in results)

    wait_until("the shift between the steps judged", alerted, 30)
