"""Latency while what serves changes, side by side with the same load when nothing changes.

    python loadtests/bench_swaps.py [--rounds 3] [--clients 16] [--json]

One run starts a real system (`lastmile up --detach`) in a scratch home, deploys a one-step
pipeline and keeps `--clients` keep-alive HTTP clients and as many gRPC clients
(`tritonclient.grpc`) sending requests through the gateway. Each round interleaves a *steady*
window (nothing changes, as long as the swap window before took) with a *swap* window: a
hot-swap to another pipeline version (load beside, warm up, switch, drain, unload), then a
blue/green start, switch and promote. It prints per window the requests, failures, p50/p99/max
latency, and the ratio p99 swap / p99 steady per round, with the median and spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._models import lastmile_cli as _cli  # noqa: E402
from loadtests._models import start_system  # noqa: E402

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


class Clients:
    """HTTP and gRPC clients; every answer kept as (sent, seconds, ok, protocol).

    Closed loop by default (each client sends its next request when the last one answered).
    With ``rate`` (requests/s over all clients) the load is open: each client sends on a fixed
    schedule and latency counts from the scheduled time, so a stall is not hidden by the
    clients slowing down with it (no coordinated omission)."""

    def __init__(
        self, http_url: str, grpc_address: str, pipeline: str, n: int, rate: float | None = None
    ) -> None:
        self.http_url = http_url
        self.grpc_address = grpc_address
        self.pipeline = pipeline
        self.answers: list[tuple[float, float, bool, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.period = 2 * n / rate if rate else 0.0  # seconds between one client's requests
        self.threads = [
            threading.Thread(target=self._http, args=(i,), daemon=True) for i in range(n)
        ]
        self.threads += [
            threading.Thread(target=self._grpc, args=(n + i,), daemon=True) for i in range(n)
        ]

    def _schedule(self, index: int) -> Iterator[float]:
        """When to send: now, as fast as answers come (closed), or on this client's slots."""
        if not self.period:
            while not self.stop.is_set():
                yield time.monotonic()
            return
        slot = time.monotonic() + self.period * index / len(self.threads)
        while not self.stop.is_set():
            delay = slot - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            yield slot
            slot += self.period

    def _record(self, sent: float, ok: bool, protocol: str) -> None:
        with self.lock:
            self.answers.append((sent, time.monotonic() - sent, ok, protocol))

    def _http(self, index: int) -> None:
        with httpx.Client(timeout=30) as http:
            for sent in self._schedule(index):
                try:
                    ok = http.post(self.http_url, json=BODY).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self._record(sent, ok, "http")

    def _grpc(self, index: int) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.grpc_address)
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.asarray([[1, 2, 3, 4]], np.float32))
        for sent in self._schedule(index):
            try:
                client.infer(self.pipeline, [tensor], client_timeout=30)
                ok = True
            except InferenceServerException:
                ok = False
            self._record(sent, ok, "grpc")
        client.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        with self.lock:
            inside = [a for a in self.answers if t0 <= a[0] < t1]
        seconds = sorted(a[1] for a in inside)
        if not seconds:
            return {"requests": 0, "failed": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "requests": len(inside),
            "failed": sum(1 for a in inside if not a[2]),
            "p50_ms": round(1000 * seconds[len(seconds) // 2], 2),
            "p99_ms": round(1000 * seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))], 2),
            "max_ms": round(1000 * seconds[-1], 2),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from tests.onnx_models import make_affine

    work = Path(tempfile.mkdtemp(prefix="lastmile-swaps-"))
    env, state = start_system(work / "home")
    rounds: list[dict[str, Any]] = []
    try:
        for version, scale in ((1, 1.0), (2, 2.0)):
            model = make_affine(work / f"m{version}.onnx", 4, scale, 0.0)
            _cli(env, "model", "import", str(model), "--name", "swapped")
            _cli(env, "pipeline", "create", "swaps", "--step", f"swapped:{version}")
        _cli(env, "deploy", "swaps", "--version", "1")
        clients = Clients(
            f"{state['gateway']['http']}/v2/models/swaps/infer",
            state["gateway"]["grpc"],
            "swaps",
            a.clients,
        )
        clients.start()
        time.sleep(2.0)  # warm connections before the first window is measured
        live = 1
        for round_ in range(a.rounds):
            t0 = time.monotonic()
            other = 2 if live == 1 else 1
            _cli(
                env,
                "rollout",
                "start",
                "swaps",
                "--strategy",
                "hot-swap",
                "--candidate",
                str(other),
            )
            live = other
            other = 2 if live == 1 else 1
            _cli(
                env,
                "rollout",
                "start",
                "swaps",
                "--strategy",
                "blue-green",
                "--candidate",
                str(other),
            )
            _cli(env, "rollout", "switch", "swaps")
            _cli(env, "rollout", "promote", "swaps")
            live = other
            t1 = time.monotonic()
            time.sleep(t1 - t0)  # a steady window as long as the swap window
            t2 = time.monotonic()
            swap, steady = clients.window(t0, t1), clients.window(t1, t2)
            ratio = (
                swap["p99_ms"] / steady["p99_ms"] if swap["p99_ms"] and steady["p99_ms"] else None
            )
            rounds.append({"round": round_ + 1, "swap": swap, "steady": steady, "p99_ratio": ratio})
            print(
                f"round {round_ + 1}: swap {swap} | steady {steady} | p99 swap/steady "
                f"{ratio if ratio is None else round(ratio, 2)}",
                file=sys.stderr,
            )
        clients.close()
    finally:
        _cli(env, "down")
    ratios = [r["p99_ratio"] for r in rounds if r["p99_ratio"] is not None]
    summary = {
        "clients_per_protocol": a.clients,
        "rounds": rounds,
        "failed": sum(r["swap"]["failed"] + r["steady"]["failed"] for r in rounds),
        "p99_ratio_median": statistics.median(ratios) if ratios else None,
        "p99_ratio_spread": [min(ratios), max(ratios)] if ratios else None,
    }
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"failed requests: {summary['failed']}; p99 during swaps / steady: median "
            f"{summary['p99_ratio_median']}, spread {summary['p99_ratio_spread']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
