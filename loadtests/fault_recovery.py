"""Faults under load, with the figures: how long until serving again, what clients saw.

    python loadtests/fault_recovery.py [--rounds 3] [--clients 8] [--json]

One run starts a real system (`lastmile up --detach`: embedded tritonserver, gateway, API)
in a scratch home, deploys a one-step pipeline, and keeps `--clients` keep-alive clients
posting to it through the gateway. Each round then, in turn:

- SIGKILLs tritonserver (the watchdog restarts it, reloads what was live, re-pushes routes);
- SIGKILLs the gateway (restarted with its persisted table);
- posts a ~2 MiB gzip body that inflates to 2 GiB (the gateway refuses it; Triton must live).

For each fault it prints the seconds from the kill until the first good answer after it
(recovery), and the answers clients got in that window by status (503s are the clean answer
while no server is there; anything else is a failure). Medians and spread over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._models import lastmile_cli as _cli  # noqa: E402
from loadtests._models import start_system  # noqa: E402

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


class Clients:
    """Keep-alive clients; every answer is recorded with the time it came back."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.answers: list[tuple[float, float, int | str]] = []  # (sent, answered, status)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    code: int | str = http.post(self.url, json=BODY).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self.lock:
                    self.answers.append((sent, time.monotonic(), code))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def since(self, t0: float) -> list[tuple[float, float, int | str]]:
        """Answers that came back after ``t0``, in order."""
        with self.lock:
            return sorted((a for a in self.answers if a[1] >= t0), key=lambda a: a[1])


def _status(env: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(_cli(env, "status", "--json")))


def _recovery(clients: Clients, t0: float, timeout_s: float = 120.0) -> tuple[float, Counter[Any]]:
    """Seconds from the kill at ``t0`` to the first good answer to a request sent after it
    (requests already inside the server may still come back good), and the answers that came
    back in between."""
    deadline = t0 + timeout_s
    after = t0 + 0.05  # SIGKILL has landed
    while time.monotonic() < deadline:
        answers = clients.since(t0)
        good = next((a for a in answers if a[2] == 200 and a[0] >= after), None)
        if good is not None:
            return good[1] - t0, Counter(a[2] for a in answers if a[1] < good[1])
        time.sleep(0.02)
    raise SystemExit(f"no recovery within {timeout_s:.0f} s")


def _gzip_bomb(inflated: int) -> bytes:
    """One gzip member of ``inflated`` zero bytes (about 1,000:1)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range(inflated >> 20)]
    parts.append(packer.flush())
    return b"".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from tests.onnx_models import make_affine

    work = Path(tempfile.mkdtemp(prefix="lastmile-faults-"))
    env, state = start_system(work / "home", supervise_interval_s="0.5")
    results: dict[str, list[dict[str, Any]]] = {"triton": [], "gateway": [], "gzip_bomb": []}
    try:
        model = make_affine(work / "m.onnx", 4, 2.0, 0.0)
        _cli(env, "model", "import", str(model), "--name", "faults")
        _cli(env, "pipeline", "create", "faults", "--step", "faults:1")
        _cli(env, "deploy", "faults", "--version", "1")
        gateway = state["gateway"]["http"]
        clients = Clients(f"{gateway}/v2/models/faults/infer", a.clients)
        clients.start()
        bomb = _gzip_bomb(2 * 1024**3)  # about 2 MiB on the wire
        for round_ in range(a.rounds):
            for which in ("triton", "gateway"):
                status = _status(env)
                pid = status["triton"][0]["pid"] if which == "triton" else status["gateway"]["pid"]
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                seconds, window = _recovery(clients, t0)
                results[which].append(
                    {"round": round_, "recovery_s": round(seconds, 3), "answers": dict(window)}
                )
                print(
                    f"round {round_ + 1}: {which} SIGKILL → serving again in {seconds:.2f} s; "
                    f"answers meanwhile {dict(window)}",
                    file=sys.stderr,
                )
            t0 = time.monotonic()
            r = httpx.post(
                f"{gateway}/v2/models/faults/infer",
                content=bomb,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                timeout=120,
            )
            triton_live = httpx.get(f"{state['triton'][0]['http']}/v2/health/live", timeout=5)
            window = Counter(a[2] for a in clients.since(t0))
            results["gzip_bomb"].append(
                {
                    "round": round_,
                    "status": r.status_code,
                    "triton_live": triton_live.status_code == 200,
                    "answers": dict(window),
                }
            )
            print(
                f"round {round_ + 1}: gzip bomb ({len(bomb) >> 10} KiB → 2 GiB) answered "
                f"{r.status_code}; Triton live: {triton_live.status_code == 200}; "
                f"other clients meanwhile {dict(window)}",
                file=sys.stderr,
            )
        clients.close()
        total = Counter(a[2] for a in clients.answers)
    finally:
        _cli(env, "down")
    summary = {
        which: {
            "recovery_s_median": statistics.median(r["recovery_s"] for r in rows),
            "recovery_s_min": min(r["recovery_s"] for r in rows),
            "recovery_s_max": max(r["recovery_s"] for r in rows),
            "non_503_failures": sum(
                n for r in rows for code, n in r["answers"].items() if code not in (200, 503)
            ),
        }
        for which, rows in results.items()
        if which != "gzip_bomb"
    }
    report = {"rounds": results, "summary": summary, "all_answers": dict(total)}
    if a.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for which, s in summary.items():
            print(
                f"{which:8s} recovery median {s['recovery_s_median']:.2f} s "
                f"(min {s['recovery_s_min']:.2f}, max {s['recovery_s_max']:.2f}); "
                f"failed answers other than 503: {s['non_503_failures']}"
            )
        print(f"all answers: {dict(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
