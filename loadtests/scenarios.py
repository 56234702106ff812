"""Rollouts and faults under locust load, one fresh system per scenario, one line each.

    python loadtests/scenarios.py [SCENARIO ...] [--seconds 15] [--users 8] [--user-rps 25]
                                  [--out DIR] [--json]

Scenarios (all by default): steady, hot-swap, canary-promote, canary-rollback, shadow,
replica-kill. Each starts its own system (`lastmile up --detach` in a scratch home), deploys a
one-step pipeline, and runs ``locust -f loadtests/locustfile.py --headless`` (HTTP and gRPC
users, ``--users`` in all, each sending ``--user-rps`` requests/s) for at least ``--seconds``
while the scenario acts; its answers per variant are read while it runs, so every wait is on a
state (a rollout's status, a number of answers after an event), never a fixed sleep.

Locust's CSV files (``<scenario>_stats.csv`` …), its log and the answers per variant per second
(``<scenario>_variants.json``) go to ``--out`` (default: a new temporary folder). One summary
line per scenario on stdout (requests, failures, rps, p50/p99/max, the scenario's own figures
and its verdict); ``--json`` prints them as one JSON document instead. Exit 1 when a verdict
failed; a scenario the system cannot run (replica-kill on one Triton server) is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._scenario_kit import (  # noqa: E402
    TERMINAL,
    Counts,
    Load,
    ScenarioError,
    System,
    epoch,
    poll,
    progress,
    running_system,
    share,
    window,
)

AFTER = 100  # answers a scenario waits for after its event, to see where traffic goes then


@dataclass(frozen=True)
class Options:
    out: Path
    seconds: float
    users: int
    user_rps: float


class Scenario:
    """One run: its system, its load, and the figures and problems it reports."""

    def __init__(self, name: str, opts: Options) -> None:
        self.name = name
        self.opts = opts
        self.figures: dict[str, Any] = {}
        self.problems: list[str] = []
        self.work = opts.out / name

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def models(self, *specs: tuple[str, float, int]) -> list[Path]:
        """ONNX files: ("affine", scale, 0) or ("partly-failing", scale, limit)."""
        from tests.onnx_models import make_affine, make_partly_failing

        files = []
        for i, (kind, scale, limit) in enumerate(specs, start=1):
            path = self.work / f"v{i}-{kind}.onnx"
            if kind == "affine":
                files.append(make_affine(path, 4, scale, 0.0))
            else:
                files.append(make_partly_failing(path, 4, scale, limit=limit))
        return files

    def load(self, system: System, pipeline: str, *extra: str) -> tuple[Load, float]:
        """Start locust; return it once it has answers, with the monotonic time then."""
        load = system.load(
            self.opts.out, self.name, pipeline, self.opts.users, self.opts.user_rps, *extra
        )
        load.wait_answers(2 * self.opts.users)
        progress(f"{self.name}: load flowing")
        return load, time.monotonic()

    def hold(self, load: Load, started: float, after: float | None = None) -> dict[str, Any]:
        """Keep the load until it ran ``--seconds`` and, with `after` (epoch), until AFTER
        answers came after that; then stop it and keep locust's totals."""
        if after is not None:
            load.wait_answers(AFTER, since=after)
        time.sleep(max(0.0, started + self.opts.seconds - time.monotonic()))  # the window
        answers = load.stop()
        self.figures |= answers["summary"]["total"]
        self.figures["by_type"] = {
            kind: f["requests"] for kind, f in answers["summary"]["by_type"].items()
        }
        self.figures["share"] = share(_counts(answers))
        return answers


def _counts(answers: dict[str, Any]) -> Counts:
    return {v: dict(c) for v, c in answers["totals"].items()}


def _failed(counts: Counts, but: str = "") -> int:
    return sum(c["failed"] for v, c in counts.items() if v != but)


# ---- the scenarios -----------------------------------------------------------------------


def steady(s: Scenario) -> None:
    """Steady load, HTTP and gRPC: no failures, both protocols answered."""
    with running_system(s.work) as system:
        system.pipeline("steady", s.models(("affine", 2.0, 0)))
        load, started = s.load(system, "steady")
        s.hold(load, started)
    s.expect(s.figures["failures"] == 0, f"{s.figures['failures']} failures")
    s.expect(len(s.figures["by_type"]) == 2, f"not both protocols: {s.figures['by_type']}")


def hot_swap(s: Scenario) -> None:
    """Three hot-swaps in a row (versions 2, 1, 2) under load: no failures."""
    with running_system(s.work) as system:
        system.pipeline("swapped", s.models(("affine", 1.0, 0), ("affine", 2.0, 0)))
        load, started = s.load(system, "swapped")
        took = []
        for version in (2, 1, 2):
            t0 = time.monotonic()
            system.cli("rollout", "start", "swapped", "--strategy", "hot-swap",
                       "--candidate", str(version))  # fmt: skip
            status = system.wait_rollout("swapped", TERMINAL, 120)
            took.append(round(time.monotonic() - t0, 1))
            s.expect(status["state"] == "promoted", f"swap to {version}: {status['state']}")
            progress(f"hot-swap to version {version}: {status['state']} in {took[-1]} s")
        done = time.time() + 1  # a second for requests in flight at the last switch
        answers = s.hold(load, started, after=done)
    s.figures["swaps_s"] = took
    s.figures["share_after"] = share(window(answers, done))
    s.expect(s.figures["failures"] == 0, f"{s.figures['failures']} failures")
    s.expect(
        s.figures["share_after"].get("swapped/2") == 100.0,
        f"after the swaps: {s.figures['share_after']}",
    )


def canary_promote(s: Scenario) -> None:
    """A healthy candidate's canary under load: promoted to 100 %."""
    interval = max(1.0, s.opts.seconds / 5)
    with running_system(s.work) as system:
        system.pipeline("canary", s.models(("affine", 2.0, 0), ("affine", 2.0, 0)))
        load, started = s.load(system, "canary")
        system.cli("rollout", "start", "canary", "--strategy", "canary", "--candidate", "2",
                   "--step", "20", "--step", "50", "--step", "100",
                   "--interval", str(interval), "--min-requests", "30",
                   "--max-error-rate", "0.01", "--max-p99-ratio", "4")  # fmt: skip
        status = system.wait_rollout("canary", TERMINAL, 20 * interval + 60)
        done = epoch(status["finished_at"]) if status["finished_at"] else time.time()
        progress(f"canary: {status['state']} ({status['reason']})")
        answers = s.hold(load, started, after=done + 1)
    s.figures["state"] = status["state"]
    s.figures["took_s"] = round(done - epoch(status["created_at"]), 1)
    s.figures["steps"] = [
        e["weights"].get("2") for e in status["events"] if e["action"] in ("start", "advance")
    ]
    s.figures["final_share"] = share(window(answers, done + 1))  # in-flight requests: 1 s
    s.expect(status["state"] == "promoted", f"{status['state']}: {status['reason']}")
    s.expect(s.figures["failures"] == 0, f"{s.figures['failures']} failures")
    s.expect(
        s.figures["final_share"].get("canary/2") == 100.0,
        f"after promotion: {s.figures['final_share']}",
    )


def canary_rollback(s: Scenario) -> None:
    """A candidate failing on a quarter of the inputs (first feature in [3, 4)) rolled back by
    its error-rate gate; only the canary's share failed, nothing after the rollback."""
    with running_system(s.work) as system:
        models = s.models(("affine", 2.0, 0), ("partly-failing", 2.0, 3))
        system.pipeline("risky", models)
        load, started = s.load(system, "risky", "--input-low", "0", "--input-high", "4")
        system.cli("rollout", "start", "risky", "--strategy", "canary", "--candidate", "2",
                   "--step", "20", "--step", "50", "--step", "100",
                   "--interval", str(max(60.0, 10 * s.opts.seconds)), "--min-requests", "30",
                   "--max-error-rate", "0.05", "--max-p99-ratio", "4")  # fmt: skip
        status = system.wait_rollout("risky", TERMINAL, 120)
        done = epoch(status["finished_at"]) if status["finished_at"] else time.time()
        progress(f"canary: {status['state']} ({status['reason']})")
        answers = s.hold(load, started, after=done + 1)
    counts, candidate = _counts(answers), "risky/2"
    after = window(answers, done + 1)  # a second for requests in flight at the switch
    s.figures["state"] = status["state"]
    s.figures["rollback_after_s"] = round(done - epoch(status["created_at"]), 1)
    s.figures["canary"] = counts.get(candidate, {"ok": 0, "failed": 0})
    s.figures["failed_outside_canary"] = _failed(counts, but=candidate)
    s.figures["failed_after_rollback"] = _failed(after)
    s.figures["reason"] = status["reason"]
    s.expect(status["state"] == "rolled_back", f"{status['state']}: {status['reason']}")
    s.expect(s.figures["failed_outside_canary"] == 0, "failures outside the canary's share")
    s.expect(s.figures["failed_after_rollback"] == 0, "failures after the rollback")
    s.expect(share(after).get("risky/1") == 100.0, f"after rollback: {share(after)}")


def shadow(s: Scenario) -> None:
    """A shadow of an equal candidate under load: agreement 100 %, no client failures."""
    with running_system(s.work) as system:
        system.pipeline("mirrored", s.models(("affine", 2.0, 0), ("affine", 2.0, 0)))
        load, started = s.load(system, "mirrored")
        system.cli("rollout", "start", "mirrored", "--strategy", "shadow", "--candidate", "2")
        system.wait_rollout("mirrored", frozenset({"running"}), 60)
        since = time.time()
        s.hold(load, started, after=since)
        report = system.cli_json("rollout", "report", "mirrored")
    mirrored = report.get("shadow", {}).get("mirrored/2", {})
    outputs = mirrored.get("outputs", {})
    s.figures["pairs"] = mirrored.get("pairs", 0)
    s.figures["compared"] = mirrored.get("sampled", 0)
    s.figures["dropped"] = mirrored.get("dropped")
    s.figures["agreement"] = min((o["agreement"] for o in outputs.values()), default=None)
    s.figures["max_abs_diff"] = max((o["max_abs_diff"] for o in outputs.values()), default=None)
    s.expect(s.figures["failures"] == 0, f"{s.figures['failures']} client failures")
    s.expect(s.figures["compared"] > 0, "no shadow pairs compared")
    s.expect(s.figures["agreement"] == 1.0, f"agreement {s.figures['agreement']}")


def _triton_successes(metrics_url: str) -> float | None:
    """Sum of ``nv_inference_request_success`` on one Triton (None if it does not answer)."""
    url = metrics_url if metrics_url.endswith("/metrics") else f"{metrics_url}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{")
    )


def replica_kill(s: Scenario) -> None:
    """SIGKILL the second Triton replica under load: back up, taking load again."""
    with running_system(s.work, TRITON_REPLICAS="2") as system:
        servers = system.state.get("triton", [])
        if len(servers) < 2:
            s.figures["skipped"] = "this system runs one Triton server"
            return
        system.pipeline("replicated", s.models(("affine", 2.0, 0)))
        load, started = s.load(system, "replicated")
        victim = servers[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        progress(f"replica-kill: SIGKILL Triton replica 2 (pid {victim})")

        def back() -> dict[str, Any] | None:
            servers = system.status().get("triton", [])
            server = servers[1] if len(servers) > 1 else {}
            up = server.get("pid") not in (None, victim) and server.get("state") == "up"
            serving = server.get("serving", 1) == server.get("of", 1)
            return dict(server) if up and server.get("ready", True) and serving else None

        server = poll(back, "Triton replica 2 up again", 120)
        up_at = time.time()
        progress(f"replica-kill: replica 2 up again after {up_at - killed:.1f} s")
        base = _triton_successes(server["metrics"]) or 0.0

        def takes_load() -> bool | None:
            now = _triton_successes(server["metrics"])
            return True if now is not None and now > base else None

        try:
            s.figures["takes_load_again"] = poll(takes_load, "requests on replica 2", 30, 0.5)
        except ScenarioError:
            s.figures["takes_load_again"] = False
        answers = s.hold(load, started, after=up_at)
    s.figures["back_after_s"] = round(up_at - killed, 1)
    s.figures["restarts"] = server.get("restarts")
    s.figures["failed_after_up"] = _failed(window(answers, up_at + 1))
    s.expect(s.figures["takes_load_again"], "replica 2 took no requests after its restart")
    s.expect(s.figures["failed_after_up"] == 0, "failures after the replica came back")


SCENARIOS: dict[str, Callable[[Scenario], None]] = {
    "steady": steady,
    "hot-swap": hot_swap,
    "canary-promote": canary_promote,
    "canary-rollback": canary_rollback,
    "shadow": shadow,
    "replica-kill": replica_kill,
}


# ---- output --------------------------------------------------------------------------------


def run(name: str, opts: Options) -> dict[str, Any]:
    scenario = Scenario(name, opts)
    progress(f"{name}: starting a system in {scenario.work}")
    t0 = time.monotonic()
    try:
        SCENARIOS[name](scenario)
    except ScenarioError as exc:
        scenario.problems.append(f"error: {exc}")
    except Exception as exc:  # a bug here or an answer of an unexpected shape: go on
        traceback.print_exc()
        scenario.problems.append(f"error: {type(exc).__name__}: {exc}")
    verdict = "skipped" if "skipped" in scenario.figures else "ok"
    if scenario.problems:
        verdict = "fail"
    return {
        "scenario": name,
        "verdict": verdict,
        "problems": scenario.problems,
        "wall_s": round(time.monotonic() - t0, 1),
        **scenario.figures,
    }


_SHOWN = ("requests", "failures", "rps", "p50_ms", "p99_ms", "max_ms", "by_type", "share")


def line(result: dict[str, Any]) -> str:
    """One line: the load's figures, the scenario's own, the verdict."""
    name = result["scenario"]
    if "skipped" in result:
        return f"{name}: skipped: {result['skipped']}"
    if "requests" not in result:
        return f"{name}: FAIL {'; '.join(result['problems'])}"
    kinds = ", ".join(f"{k.split()[0].lower()} {n}" for k, n in result["by_type"].items())
    load = (
        f"{result['requests']} req ({kinds}), {result['failures']} failed, "
        f"{result['rps']:.0f} rps, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms"
    )
    skip = (*_SHOWN, "scenario", "verdict", "problems", "wall_s")
    own = ", ".join(f"{k} {_short(v)}" for k, v in result.items() if k not in skip)
    verdict = "ok" if result["verdict"] == "ok" else f"FAIL ({'; '.join(result['problems'])})"
    parts = [f"{name}: {load}", f"share {_short(result['share'])}", own, verdict]
    return " | ".join(p for p in parts if p)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"any of {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=15.0, help="least seconds of load each")
    p.add_argument("--users", type=int, default=8, help="locust users (HTTP and gRPC)")
    p.add_argument("--user-rps", type=float, default=25.0, help="requests/s per user (0: max)")
    p.add_argument("--out", type=Path, help="folder for CSV files (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = p.parse_args(argv)
    if unknown := [n for n in a.scenarios if n not in SCENARIOS]:
        p.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    out = a.out or Path(tempfile.mkdtemp(prefix="lastmile-scenarios-"))
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(out.resolve(), a.seconds, a.users, a.user_rps)
    progress(f"output in {opts.out}")
    results = []
    for name in a.scenarios or list(SCENARIOS):
        result = run(name, opts)
        results.append(result)
        text = line(result)
        print(text, file=sys.stderr if a.json else sys.stdout, flush=True)
    if a.json:
        print(json.dumps({"out": str(opts.out), "scenarios": results}, indent=2))
    return 1 if any(r["verdict"] == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
