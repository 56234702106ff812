"""Latency while what serves changes, side by side with the same load when nothing changes.

    python loadtests/bench_swaps.py [--rounds 3] [--clients 16] [--driver sdk|cli] [--json]
                                    [--set NAME=VALUE ...]

One run starts a real system (`lastmile up --detach`) in a scratch home, deploys a one-step
pipeline and keeps `--clients` keep-alive HTTP clients and as many gRPC clients
(`tritonclient.grpc`) sending requests through the gateway. Each round has a *swap* window: a
hot-swap to another pipeline version (load beside, warm up, switch, drain, unload), then a
blue/green start, switch and promote; and a *steady* window (nothing changes) as long as the
swap window took. Per round and per protocol it prints p50/p99/max during the swaps, the
steady p99, and the ratio max swap / p99 steady (what a deploy is judged on: a stalled
request shows there, not in a p99); when each step ran; the Python-backend stubs each step
started (one per changed model instance; read from /proc) beside the loads Triton logged
(Triton also logs "loading" for a served version it only keeps); Triton's load and unload
events on the same clock; and the slowest answers with the step they were sent in. The summary
gives the median and spread over the rounds of each ratio, per protocol.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
PROTOCOLS = ("http", "grpc")
SLOWEST = 5  # slowest answers listed per round


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

    def inside(
        self, t0: float, t1: float, protocol: str | None = None
    ) -> list[tuple[float, float, bool, str]]:
        """The answers to requests sent in [t0, t1) (of one protocol, or all)."""
        with self.lock:
            return [
                a
                for a in self.answers
                if t0 <= a[0] < t1 and (protocol is None or a[3] == protocol)
            ]

    def window(self, t0: float, t1: float, protocol: str | None = None) -> dict[str, Any]:
        inside = self.inside(t0, t1, protocol)
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


class TritonLog:
    """Model loads and unloads Triton logged since the last look (every ``tritonserver*.log``
    of a home), with when they happened: a changed model must be loaded once per deploy, and
    each load of a Python-backend model costs a stub start-up."""

    EVENT = re.compile(
        r"^I(\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+) .*?"
        r'"(loading: (\S+):(\d+)|successfully loaded \'(\S+)\'|'
        r"successfully unloaded '(\S+)' version (\d+))\"",
        re.MULTILINE,
    )

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self.offsets: dict[Path, int] = {}
        self.since()

    def since(self) -> list[tuple[float, str, str]]:
        """(monotonic time, loading | loaded | unloaded, model[:version]) logged since the
        last call, in order."""
        events: list[tuple[float, str, str]] = []
        to_monotonic = time.monotonic() - time.time()
        year = time.localtime().tm_year
        for path in sorted(self.logs_dir.glob("tritonserver*.log")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                text = f.read()
            cut = text.rfind(b"\n") + 1  # a line still being written is read next time
            self.offsets[path] = self.offsets.get(path, 0) + cut
            for m in self.EVENT.finditer(text[:cut].decode(errors="replace")):
                month, day, clock = m.group(1), m.group(2), m.group(3)
                wall = time.mktime(
                    time.strptime(f"{year}-{month}-{day} {clock[:8]}", "%Y-%m-%d %H:%M:%S")
                ) + float(clock[8:])
                if m.group(5):
                    kind, model = "loading", f"{m.group(5)}:{m.group(6)}"
                elif m.group(7):
                    kind, model = "loaded", m.group(7)
                else:
                    kind, model = "unloaded", f"{m.group(8)}:{m.group(9)}"
                events.append((wall + to_monotonic, kind, model))
        return sorted(events)


class StubWatch:
    """Python-backend stub processes as they appear (a sampling thread over /proc): one new
    stub is one model instance loaded. Triton's log alone overcounts: it also says "loading"
    for a served version that a changed version policy only keeps."""

    STUB = "triton_python_backend_stub"
    # Triton forks (tritonserver), runs the stub wrapper (sh), which execs the stub: a process
    # seen in those states is looked at again
    MAY_BECOME_A_STUB = frozenset({"tritonserver", "sh", "dash", "bash", ""})

    def __init__(self, repository: Path, interval_s: float = 0.05) -> None:
        self.repository = str(repository.resolve())
        self.interval_s = interval_s
        self.first_seen: dict[int, tuple[float, str]] = {}  # pid -> (monotonic, model/version)
        self.checked: set[int] = set()  # pids that are not and will not become a stub
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            now = time.monotonic()
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in self.checked:
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                program = Path(argv[0].decode(errors="replace")).name
                if program not in self.MAY_BECOME_A_STUB:
                    self.checked.add(int(entry.name))
                if len(argv) < 2 or not program.startswith(self.STUB):
                    continue
                model_py = argv[1].decode(errors="replace")  # <repository>/<model>/<v>/model.py
                if model_py.startswith(self.repository + "/"):  # not another system's stubs
                    parts = Path(model_py).parts
                    self.first_seen[int(entry.name)] = (now, "/".join(parts[-3:-1]))

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def started(self, t0: float, t1: float) -> dict[str, int]:
        """``model/version`` -> stubs that appeared in [t0, t1)."""
        return dict(Counter(m for when, m in list(self.first_seen.values()) if t0 <= when < t1))


class Driver:
    """How a step reaches the management API: ``sdk`` calls it from this process, as a CI job
    or another host would; ``cli`` runs ``lastmile`` for each step on these same cores: a new
    Python process, whose start-up alone shows in the clients' latency (measured: three
    ``lastmile status`` calls, which change nothing, raised their max from 79-137 ms to
    171-241 ms)."""

    def __init__(self, kind: str, env: dict[str, str], state: dict[str, Any], home: Path) -> None:
        self.kind = kind
        self.env = env
        self.sdk: Any = None
        if kind == "sdk":
            from manager.sdk import Lastmile

            key = (home / "admin.key").read_text().strip()
            self.sdk = Lastmile(state["api"]["url"], api_key=key)

    def rollout_start(self, strategy: str, candidate: int) -> None:
        if self.sdk is not None:
            self.sdk.start_rollout("swaps", strategy=strategy, candidates=[candidate])
        else:
            _cli(self.env, "rollout", "start", "swaps", "--strategy", strategy,
                 "--candidate", str(candidate))  # fmt: skip

    def rollout_action(self, action: str) -> None:
        if self.sdk is not None:
            self.sdk.rollout_action("swaps", action)
        else:
            _cli(self.env, "rollout", action, "swaps")

    def close(self) -> None:
        if self.sdk is not None:
            self.sdk.close()


class Steps:
    """The steps of one round (name, start and end, monotonic) and what Triton logged."""

    def __init__(self, triton_log: TritonLog, stubs: StubWatch) -> None:
        self.triton_log = triton_log
        self.stubs = stubs
        self.done: list[dict[str, Any]] = []
        self.events: list[tuple[float, str, str]] = []
        triton_log.since()

    def run(self, name: str, call: Callable[..., None], *args: Any) -> None:
        start = time.monotonic()
        call(*args)
        self.done.append({"step": name, "start": start, "end": time.monotonic()})
        self.events += self.triton_log.since()

    def finish(self) -> None:
        """Collect what Triton logged after the last step returned (unloads end later)."""
        self.events += self.triton_log.since()

    def at(self, moment: float) -> str:
        """The step running at ``moment``."""
        for step in self.done:
            if step["start"] <= moment < step["end"]:
                return str(step["step"])
        return "after the steps" if self.done and moment >= self.done[-1]["end"] else "before"

    def loads(self, step: dict[str, Any]) -> dict[str, int]:
        """``model:version`` -> loads Triton began during ``step``."""
        return dict(
            Counter(
                model
                for when, kind, model in self.events
                if kind == "loading" and step["start"] <= when < step["end"]
            )
        )


def _ratio(over: float | None, under: float | None) -> float | None:
    return round(over / under, 2) if over is not None and under else None


def _spread(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(known), 2), "min": min(known), "max": max(known)}


def _measure_round(
    clients: Clients, steps: Steps, t0: float, t1: float, t2: float
) -> dict[str, Any]:
    """Swap window [t0, t1), steady window [t1, t2): per protocol and together."""
    out: dict[str, Any] = {}
    for protocol in (*PROTOCOLS, None):
        swap = clients.window(t0, t1, protocol)
        steady = clients.window(t1, t2, protocol)
        out[protocol or "all"] = {
            "swap": swap,
            "steady": steady,
            "p99_ratio": _ratio(swap["p99_ms"], steady["p99_ms"]),
            "max_swap_over_p99_steady": _ratio(swap["max_ms"], steady["p99_ms"]),
        }
    slowest = sorted(clients.inside(t0, t1), key=lambda a: a[1], reverse=True)[:SLOWEST]
    out["slowest"] = [
        {
            "protocol": protocol,
            "ms": round(1000 * seconds, 1),
            "sent_at_s": round(sent - t0, 3),
            "step": steps.at(sent),
            "ok": ok,
        }
        for sent, seconds, ok, protocol in slowest
    ]
    out["steps"] = [
        {
            "step": s["step"],
            "start_s": round(s["start"] - t0, 3),
            "end_s": round(s["end"] - t0, 3),
            "loads": steps.loads(s),
            # the sampler sees a stub up to one interval late
            "stub_starts": steps.stubs.started(s["start"], s["end"] + steps.stubs.interval_s),
        }
        for s in steps.done
    ]
    out["triton"] = [
        {"at_s": round(when - t0, 3), "event": kind, "model": model}
        for when, kind, model in steps.events
    ]
    return out


def _print_round(number: int, r: dict[str, Any]) -> None:
    lines = [f"round {number}:"]
    for s in r["steps"]:
        stubs = ", ".join(f"{m}×{n}" for m, n in sorted(s["stub_starts"].items())) or "none"
        loads = ", ".join(f"{m}×{n}" for m, n in sorted(s["loads"].items())) or "none"
        lines.append(
            f"  +{s['start_s']:6.2f} .. +{s['end_s']:6.2f} s  {s['step']:<20} stubs started: "
            f"{stubs} | Triton logged loading: {loads}"
        )
    for protocol in (*PROTOCOLS, "all"):
        p = r[protocol]
        sw, st = p["swap"], p["steady"]
        lines.append(
            f"  {protocol:<4} swap n={sw['requests']} failed={sw['failed']} p50={sw['p50_ms']} "
            f"p99={sw['p99_ms']} max={sw['max_ms']} ms | steady n={st['requests']} "
            f"failed={st['failed']} p99={st['p99_ms']} max={st['max_ms']} ms | "
            f"p99 swap/steady {p['p99_ratio']} | max swap / p99 steady "
            f"{p['max_swap_over_p99_steady']}"
        )
    lines.append(
        "  triton: " + ", ".join(f"+{e['at_s']:.2f} {e['event']} {e['model']}" for e in r["triton"])
    )
    for slow in r["slowest"]:
        lines.append(
            f"  slow: {slow['protocol']} {slow['ms']} ms, sent at +{slow['sent_at_s']} s "
            f"({slow['step']}){'' if slow['ok'] else ' FAILED'}"
        )
    print("\n".join(lines), file=sys.stderr)


def _summary(rounds: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "clients_per_protocol": clients,
        "rounds": rounds,
        "failed": sum(r["all"]["swap"]["failed"] + r["all"]["steady"]["failed"] for r in rounds),
        "requests": sum(
            r["all"]["swap"]["requests"] + r["all"]["steady"]["requests"] for r in rounds
        ),
    }
    for protocol in (*PROTOCOLS, "all"):
        summary[protocol] = {
            "p99_ratio": _spread([r[protocol]["p99_ratio"] for r in rounds]),
            "max_swap_over_p99_steady": _spread(
                [r[protocol]["max_swap_over_p99_steady"] for r in rounds]
            ),
            "max_swap_ms": _spread([r[protocol]["swap"]["max_ms"] for r in rounds]),
            "p99_steady_ms": _spread([r[protocol]["steady"]["p99_ms"] for r in rounds]),
        }
    stubs: Counter[str] = Counter()
    for r in rounds:
        for step in r["steps"]:
            stubs[step["step"].rstrip(" 0123456789")] += sum(step["stub_starts"].values())
    summary["stub_starts_per_round"] = {k: v / max(len(rounds), 1) for k, v in stubs.items()}
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"driver {summary['driver']}, {summary['clients_per_protocol']} HTTP + "
        f"{summary['clients_per_protocol']} gRPC clients; failed requests: {summary['failed']} "
        f"of {summary['requests']}"
    )
    for protocol in (*PROTOCOLS, "all"):
        p = summary[protocol]
        m, q = p["max_swap_over_p99_steady"], p["p99_ratio"]
        print(
            f"{protocol:<4} max swap / p99 steady: median {m['median']} "
            f"[{m['min']}, {m['max']}] (max swap ms median {p['max_swap_ms']['median']}, "
            f"steady p99 ms median {p['p99_steady_ms']['median']}); "
            f"p99 swap/steady: median {q['median']} [{q['min']}, {q['max']}]"
        )
    print(f"stub start-ups per round, by step: {summary['stub_starts_per_round']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--driver",
        choices=("sdk", "cli"),
        default="sdk",
        help="how each step reaches the API: the SDK from this process (default) or a "
        "`lastmile` process per step on the same cores",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a LASTMILE_NAME setting for the system under test (repeatable)",
    )
    a = p.parse_args(argv)

    from tests.onnx_models import make_affine

    settings = dict(item.split("=", 1) for item in a.set)
    work = Path(tempfile.mkdtemp(prefix="lastmile-swaps-"))
    env, state = start_system(work / "home", **settings)
    triton_log = TritonLog(work / "home" / "logs")
    stubs = StubWatch(work / "home" / "repository")
    stubs.start()
    driver = Driver(a.driver, env, state, work / "home")
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
            steps = Steps(triton_log, stubs)
            t0 = time.monotonic()
            other = 2 if live == 1 else 1
            steps.run(f"hot-swap to {other}", driver.rollout_start, "hot-swap", other)
            live, other = other, live
            steps.run(f"blue-green start {other}", driver.rollout_start, "blue-green", other)
            steps.run("blue-green switch", driver.rollout_action, "switch")
            steps.run("blue-green promote", driver.rollout_action, "promote")
            live = other
            t1 = time.monotonic()
            time.sleep(t1 - t0)  # a steady window as long as the swap window
            t2 = time.monotonic()
            steps.finish()
            rounds.append({"round": round_ + 1, **_measure_round(clients, steps, t0, t1, t2)})
            _print_round(round_ + 1, rounds[-1])
        clients.close()
    finally:
        stubs.close()
        driver.close()
        _cli(env, "down")
    summary = {"driver": a.driver, **_summary(rounds, a.clients)}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
