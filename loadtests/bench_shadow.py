"""What a shadow costs the clients: the primary's latency and success with and without one.

    python loadtests/bench_shadow.py [--rounds 3] [--clients 8] [--seconds 8] [--load 0.3]
                                     [--closed] [--json] [--phases none,equal,...]
                                     [--candidate-servers 1 [--triton-cpus '0-3;4-7']
                                      [--gateway-cpus 8-9] [--client-cpus 10-15]]

One run starts a real system (`lastmile up --detach`), deploys a one-step pipeline and sends
requests through the gateway from `--clients` HTTP and as many gRPC clients. Each round measures
interleaved windows of `--seconds` (`--phases`): no shadow; a shadow candidate that computes the
same answer (all traffic mirrored, `equal`); one that fails every request (`failing`); one that
answers after up to a second (`slow`: Triton's batcher holds each request for a batch of 256
that never fills, then answers them at once); one that is slow because it computes (`heavy`:
~0.5 GFLOP a row). It prints per window the requests, failures, p50/p99, the gateway's
event-loop lag (p99, share of probes over 5 ms) and CPU per request, and per round the p99
ratio of each shadow window to the no-shadow one, with the median and spread.

The load is open by default, as production traffic is: first the clients measure how many
requests/s the pipeline answers with nothing mirrored, then send `--load` times that at a fixed
schedule (latency counted from the scheduled time). A 100 % shadow doubles the inference work,
so the primary keeps its latency only where the machine has room for the copies; `--closed`
keeps every client busy instead and shows what the copies cost when there is none (on two
shared cores, about 1.2-1.7x the p99).

With `--candidate-servers K` the system runs a pool of K+1 tritonservers and every rollout
gives its candidates K servers of their own: the copies run there, the primary on the other.
The no-shadow window is then an A/B rollout at 100/0 with the same placement, so both
windows measure the primary on the same server. `--triton-cpus` pins each server
(LASTMILE_TRITON_CPUS), `--gateway-cpus` the gateway and `--client-cpus` this process (the
clients), so that nothing but the gateway is shared between the primary and its copies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._models import (  # noqa: E402
    cpu_seconds,
    pin_own_threads,
    process_tree,
    start_system,
    wait_children,
)
from loadtests._models import lastmile_cli as _cli  # noqa: E402
from loadtests.bench_swaps import Clients  # noqa: E402
from manager.triton.cpus import parse_cpu_list  # noqa: E402

# each window and the pipeline version shadowed in it (none: no shadow)
CANDIDATES = {"none": None, "equal": "2", "failing": "3", "slow": "4", "heavy": "5"}
PHASES = tuple(CANDIDATES)


LAG = "lastmile_gateway_event_loop_lag_seconds"


def _samples(metrics_url: str, family: str) -> list[Any]:
    """The samples of one metric family on the gateway's /metrics, read now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return [s for f in text_string_to_metric_families(text) if f.name == family for s in f.samples]


def loop_lag(metrics_url: str) -> dict[float, float]:
    """The gateway's event-loop lag histogram: cumulative count per upper bound (s)."""
    return {
        float(sample.labels["le"]): sample.value
        for sample in _samples(metrics_url, LAG)
        if sample.name == f"{LAG}_bucket"
    }


def copies_answered(metrics_url: str, variant: str, count: int, timeout_s: float = 60.0) -> None:
    """Until the gateway has seen ``count`` more of ``variant``'s shadow copies end (answered,
    failed or timed out): the candidate is warm before a window opens."""

    def ended() -> float:
        return sum(
            sample.value
            for sample in _samples(metrics_url, "lastmile_gateway_shadow_requests")
            if sample.labels.get("variant") == variant
            and sample.labels.get("outcome") in ("ok", "error", "timeout")
        )

    target = ended() + count
    deadline = time.monotonic() + timeout_s
    while ended() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{variant}: not {count} shadow copies ended in {timeout_s} s")
        time.sleep(0.1)


def lag_figures(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Over a window: the 99th percentile of the loop's lag (the bucket's upper bound, ms)
    and the share of probes later than 5 ms."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return {}
    p99 = next(le for le, cumulative in counts.items() if cumulative >= 0.99 * total)
    return {
        "loop_lag_p99_ms": round(1000 * p99, 2) if p99 != float("inf") else float("inf"),
        "loop_lag_over_5ms": round(1 - counts.get(0.005, 0.0) / total, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--load", type=float, default=0.3, help="share of the measured capacity")
    p.add_argument("--closed", action="store_true", help="closed loop: clients never idle")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--candidate-servers",
        type=int,
        default=0,
        help="a pool of K+1 servers; the candidates get K of their own",
    )
    p.add_argument("--triton-cpus", help="CPUs of each server, ';'-separated (0-3;4-7)")
    p.add_argument("--gateway-cpus", help="CPUs of the gateway (taskset list)")
    p.add_argument("--gateway-workers", type=int, default=1, help="gateway processes")
    p.add_argument("--client-cpus", help="CPUs of this process, the clients (taskset list)")
    p.add_argument("--shadow-queue", type=int, help="the shadow's copies in flight (256)")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"windows to measure, from {','.join(PHASES)} (none is always first)",
    )
    a = p.parse_args(argv)
    phases = ("none", *[w for w in a.phases.split(",") if w and w != "none"])
    unknown = [w for w in phases if w not in CANDIDATES]
    if unknown:
        p.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    own = a.candidate_servers
    queue = ["--shadow-queue", str(a.shadow_queue)] if a.shadow_queue else []
    placed = ["--candidate-servers", str(own)] if own else []
    system: dict[str, str] = {}
    if own:
        system["triton_replicas"] = str(own + 1)
    if a.triton_cpus:
        system["triton_cpus"] = a.triton_cpus
    if a.gateway_workers != 1:
        system["gateway_workers"] = str(a.gateway_workers)

    from tests.onnx_models import make_affine, make_heavy_affine, make_partly_failing

    work = Path(tempfile.mkdtemp(prefix="lastmile-shadow-"))
    env, state = start_system(work / "home", **system)
    if a.client_cpus:  # after the system started: its processes keep every CPU
        pin_own_threads(parse_cpu_list(a.client_cpus))
    rounds: list[dict[str, Any]] = []
    try:
        models = {
            "primary": make_affine(work / "p.onnx", 4, 2.0, 0.0),
            "twin": make_affine(work / "t.onnx", 4, 2.0, 0.0, output_name="y"),
            # the clients' first feature is 1: outside [-1, 1), so every request fails
            "broken": make_partly_failing(work / "b.onnx", 4, 2.0, limit=1),
            "lazy": make_affine(work / "l.onnx", 4, 2.0, 0.0),
            # the same answer after ~0.5 GFLOP a row: slow because it computes
            "heavy": make_heavy_affine(work / "h.onnx", 4, 2.0, 0.0, depth=256),
        }
        for name, path in models.items():
            _cli(env, "model", "import", str(path), "--name", name)
            _cli(env, "pipeline", "create", "shadowed", "--step", name)
        _cli(env, "model", "configure", "lazy", "--max-batch-size", "256",
             "--preferred-batch", "256", "--queue-delay-us", "1000000")  # fmt: skip
        _cli(env, "deploy", "shadowed", "--version", "1")
        where = (
            f"{state['gateway']['http']}/v2/models/shadowed/infer",
            state["gateway"]["grpc"],
            "shadowed",
            a.clients,
        )
        rate: float | None = None
        if not a.closed:
            probe = Clients(*where)
            probe.start()
            time.sleep(2.0)  # connections warm, then a window that counts
            t0 = time.monotonic()
            time.sleep(a.seconds)
            capacity = probe.window(t0, time.monotonic())["requests"] / (time.monotonic() - t0)
            probe.close()
            rate = a.load * capacity
            print(f"capacity {capacity:.0f} req/s; open load at {rate:.0f} req/s", file=sys.stderr)
        pids = {"gateway": state["gateway"]["pid"], "triton": state["triton"][0]["pid"]}
        if own:  # the primary runs on server 0, the copies on the last K
            pids["candidate_triton"] = state["triton"][-1]["pid"]
        if a.gateway_cpus:  # every thread of every gateway process
            for pid in process_tree(pids["gateway"]):
                subprocess.run(["taskset", "-a", "-p", "-c", a.gateway_cpus, str(pid)],
                               check=True, capture_output=True)  # fmt: skip
        clients = Clients(*where, rate=rate)
        clients.start()
        time.sleep(2.0)  # warm connections before the first window is measured
        for round_ in range(a.rounds):
            windows: dict[str, dict[str, Any]] = {}
            for phase in phases:
                candidate = CANDIDATES[phase]
                if candidate:
                    _cli(env, "rollout", "start", "shadowed", "--strategy", "shadow",
                         "--candidate", candidate, *placed, *queue)  # fmt: skip
                elif own:  # the same placement, nothing mirrored: the primary on its server
                    _cli(env, "rollout", "start", "shadowed", "--strategy", "ab", "--candidate",
                         "2", "--weight", "1=100", "--weight", "2=0", *placed)  # fmt: skip
                # one stub per loaded model: the primary's, and the candidate's while loaded
                wait_children(pids["triton"], 2 if candidate or own else 1)
                if candidate:  # a cold candidate's first answers are not what it costs
                    copies_answered(state["gateway"]["metrics"], f"shadowed/{candidate}", 20)
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                lag0 = loop_lag(state["gateway"]["metrics"])
                t0 = time.monotonic()
                time.sleep(a.seconds)  # the measured window
                windows[phase] = window = clients.window(t0, time.monotonic())
                window.update(lag_figures(lag0, loop_lag(state["gateway"]["metrics"])))
                for name, pid in pids.items():  # CPU per client request, copies included
                    # a stub that exited in the window (the last candidate's) takes its
                    # CPU seconds with it: no negative figure
                    spent = max(0.0, cpu_seconds(pid) - cpu0[name])
                    window[f"{name}_cpu_us"] = round(1e6 * spent / max(1, window["requests"]))
                if candidate or own:
                    _cli(env, "rollout", "abort", "shadowed")
            base = windows["none"]["p99_ms"]
            ratios = {
                phase: round(windows[phase]["p99_ms"] / base, 3) if base else None
                for phase in phases[1:]
            }
            rounds.append({"round": round_ + 1, "windows": windows, "p99_ratio": ratios})
            print(f"round {round_ + 1}: {windows} | p99 vs no shadow {ratios}", file=sys.stderr)
        clients.close()
    finally:
        _cli(env, "down")
    summary: dict[str, Any] = {
        "candidate_servers": own,
        "triton_cpus": a.triton_cpus,
        "gateway_cpus": a.gateway_cpus,
        "gateway_workers": a.gateway_workers,
        "client_cpus": a.client_cpus,
        "clients_per_protocol": a.clients,
        "load": "closed" if rate is None else {"share": a.load, "requests_per_s": round(rate)},
        "rounds": rounds,
    }
    for phase in phases[1:]:
        values = [r["p99_ratio"][phase] for r in rounds if r["p99_ratio"][phase] is not None]
        summary[f"p99_ratio_{phase}"] = {
            "median": statistics.median(values) if values else None,
            "spread": [min(values), max(values)] if values else None,
        }
    summary["failed"] = {
        phase: sum(r["windows"][phase]["failed"] for r in rounds) for phase in phases
    }
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        shown = ", ".join(f"{phase} {summary[f'p99_ratio_{phase}']}" for phase in phases[1:])
        print(
            f"primary p99 with a shadow / without ({summary['load']} load, candidate servers "
            f"{own}): {shown}; client failures {summary['failed']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
