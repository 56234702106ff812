"""What a shadow costs the clients: the primary's latency and success with and without one.

    python loadtests/bench_shadow.py [--rounds 3] [--clients 8] [--seconds 8] [--json]

One run starts a real system (`lastmile up --detach`), deploys a one-step pipeline and keeps
`--clients` HTTP and as many gRPC clients sending requests through the gateway. Each round
measures three interleaved windows of `--seconds`: no shadow; a shadow candidate that computes
the same answer (all traffic mirrored); a shadow candidate that fails every request. It prints
per window the requests, failures, p50/p99, and per round the p99 ratio of each shadow window
to the no-shadow one, with the median and spread. On a 2-core machine the mirrored copies
compete with the primary for the same CPU: the ratio shows that cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._models import lastmile_cli as _cli  # noqa: E402
from loadtests._models import start_system  # noqa: E402
from loadtests.bench_swaps import Clients  # noqa: E402

PHASES = ("none", "equal", "failing")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from tests.onnx_models import make_affine, make_partly_failing

    work = Path(tempfile.mkdtemp(prefix="lastmile-shadow-"))
    env, state = start_system(work / "home")
    rounds: list[dict[str, Any]] = []
    try:
        models = {
            "primary": make_affine(work / "p.onnx", 4, 2.0, 0.0),
            "twin": make_affine(work / "t.onnx", 4, 2.0, 0.0, output_name="y"),
            # the clients' first feature is 1: outside [-1, 1), so every request fails
            "broken": make_partly_failing(work / "b.onnx", 4, 2.0, limit=1),
        }
        for name, path in models.items():
            _cli(env, "model", "import", str(path), "--name", name)
            _cli(env, "pipeline", "create", "shadowed", "--step", name)
        _cli(env, "deploy", "shadowed", "--version", "1")
        clients = Clients(
            f"{state['gateway']['http']}/v2/models/shadowed/infer",
            state["gateway"]["grpc"],
            "shadowed",
            a.clients,
        )
        clients.start()
        time.sleep(2.0)  # warm connections before the first window is measured
        for round_ in range(a.rounds):
            windows: dict[str, dict[str, Any]] = {}
            for phase, candidate in zip(PHASES, (None, "2", "3"), strict=True):
                if candidate:
                    _cli(env, "rollout", "start", "shadowed", "--strategy", "shadow",
                         "--candidate", candidate)  # fmt: skip
                t0 = time.monotonic()
                time.sleep(a.seconds)  # the measured window
                windows[phase] = clients.window(t0, time.monotonic())
                if candidate:
                    _cli(env, "rollout", "abort", "shadowed")
            base = windows["none"]["p99_ms"]
            ratios = {
                phase: round(windows[phase]["p99_ms"] / base, 3) if base else None
                for phase in PHASES[1:]
            }
            rounds.append({"round": round_ + 1, "windows": windows, "p99_ratio": ratios})
            print(f"round {round_ + 1}: {windows} | p99 vs no shadow {ratios}", file=sys.stderr)
        clients.close()
    finally:
        _cli(env, "down")
    summary: dict[str, Any] = {"clients_per_protocol": a.clients, "rounds": rounds}
    for phase in PHASES[1:]:
        values = [r["p99_ratio"][phase] for r in rounds if r["p99_ratio"][phase] is not None]
        summary[f"p99_ratio_{phase}"] = {
            "median": statistics.median(values) if values else None,
            "spread": [min(values), max(values)] if values else None,
        }
    summary["failed"] = {
        phase: sum(r["windows"][phase]["failed"] for r in rounds) for phase in PHASES
    }
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"primary p99 with a shadow / without: equal candidate "
            f"{summary['p99_ratio_equal']}, failing candidate {summary['p99_ratio_failing']}; "
            f"client failures {summary['failed']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
