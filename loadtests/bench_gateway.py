"""Gateway overhead, side by side in one run: direct Triton vs `rollout.gateway` vs nginx.

    python loadtests/bench_gateway.py [--rounds 5] [--seconds 3] [--port-range 20000-29999]
        [--protocols http-json,http-binary,grpc,rollout] [--clients 1,16]
        [--http-driver auto|wrk|asyncio] [--grpc-driver raw|tritonclient]
        [--nginx-workers 1|auto|N] [--gateway-workers N] [--no-nginx] [--json]
        [--proxy-cpus 0-3] [--triton-cpus 4-11] [--client-cpus 12-15]

One run starts a real tritonserver (nvidia-pytriton wheel, Python-backend models, one instance
each), the gateway as a subprocess (HTTP + gRPC) and Debian's nginx as a plain reverse proxy
(HTTP keep-alive upstream, gRPC `grpc_pass`), all on loopback ports taken from --port-range.
Cells: {direct, gateway, nginx} x {1, 16 clients} x {HTTP JSON [1,4], HTTP binary FP32
[64,1024], gRPC [1,4]}, plus the gateway at 16 clients (HTTP JSON) with a plain pass-through
route, a 90/10 canary (two models), a 100 % shadow (the copy to a second model) and data
capture of 1 % and 100 % of the calls (raw bytes to the spool; nothing summarises them during
the run, so the spool's disk bound is the only limit). Each round
runs every cell once, the targets of a cell back to back in an order that rotates from round to
round; the report gives per target the median req/s, p50/p99, errors and the CPU µs per
request of the proxy (gateway process; nginx master + workers) and of Triton (with its stubs),
from /proc; per cell the per-round ratios (median [min-max]); and the issue's targets, met or
not. HTTP load comes from wrk when installed (`make bench-deps`), else the asyncio driver;
gRPC from a grpc.aio driver. If nginx cannot start, the run says why and still compares the
others.

On a machine with cores to spare, give each side CPUs of its own: `--proxy-cpus` pins the
gateway and nginx (each with its worker processes and threads; the two never run at the same
time, so both proxies get the same cores), `--triton-cpus` the server and its stubs,
`--client-cpus` this process and the load generators it starts (wrk, the gRPC driver).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._bench_grpc import DRIVERS, check_grpc, run_grpc  # noqa: E402
from loadtests._bench_http import (  # noqa: E402
    binary_body,
    check_answer,
    json_body,
    run_driver,
    run_wrk,
    variant_shares,
    write_wrk_script,
)
from loadtests._bench_nginx import Nginx, nginx_binary  # noqa: E402
from loadtests._bench_ports import DEFAULT_RANGE, PortPicker  # noqa: E402
from loadtests._bench_report import Cell, render, summarize, targets  # noqa: E402
from loadtests._models import (  # noqa: E402
    allowed_cpus,
    cpu_list_arg,
    cpu_seconds,
    embedded_triton,
    launch_gateway,
    pin_own_threads,
    stop_gateway,
    wait_gateway_ready,
    write_scale_model,
    write_wide_model,
)
from manager.triton.cpus import format_cpu_list  # noqa: E402
from rollout.routing import RoutingTable  # noqa: E402

MODEL, CANDIDATE, WIDE = "default.bench.v1", "default.bench.v2", "default.wide.v1"
PROTOCOLS = ("http-json", "http-binary", "grpc", "rollout")
PROXY_TARGETS = ("direct", "gateway", "nginx")
ROLLOUT_TARGETS = ("passthrough", "canary", "shadow", "capture1", "capture100")
ROLLOUT_ROUTES = {
    "passthrough": "bench",
    "canary": "canary",
    "shadow": "shadow",
    "capture1": "capture1",  # 1 % of calls to the data-capture spool
    "capture100": "capture100",  # every call
}


def routing_table(http_url: str, grpc_address: str) -> dict[str, Any]:
    """Routes: bench (JSON and gRPC), wide (binary), canary (90/10), shadow (100 % mirrored)."""

    def variant(pipeline: str, version: int, weight: float, model: str) -> dict[str, Any]:
        target = {"url": http_url, "grpc": grpc_address, "model": model}
        return {"name": f"{pipeline}/{version}", "version": version, "weight": weight,
                "targets": [target]}  # fmt: skip

    def route(pipeline: str, *variants: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"workspace": "default", "pipeline": pipeline, "strategy": "weighted",
                "variants": list(variants), **extra}  # fmt: skip

    routes = [
        route("bench", variant("bench", 1, 100, MODEL)),
        route("wide", variant("wide", 1, 100, WIDE)),
        route("canary", variant("canary", 1, 90, MODEL), variant("canary", 2, 10, CANDIDATE)),
        route(
            "shadow",
            variant("shadow", 1, 100, MODEL),
            variant("shadow", 2, 0, CANDIDATE),
            strategy="shadow",
            shadow={"mirrors": [{"variant": "shadow/2", "sample": 1.0}]},
        ),
        route("capture1", variant("capture1", 1, 100, MODEL), capture=0.01),
        route("capture100", variant("capture100", 1, 100, MODEL), capture=1.0),
    ]
    table = {"generation": 1, "routes": {f"default/{r['pipeline']}": r for r in routes}}
    RoutingTable.from_json(table)  # the gateway would refuse it otherwise: fail here, clearly
    return table


class Gateway:
    """The gateway subprocess on ports of the range."""

    def __init__(
        self,
        work: Path,
        ports: PortPicker,
        table: dict[str, Any],
        workers: int = 1,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.http_port, self.grpc_port, self.metrics_port, admin_port = ports.take(4)
        routes = work / "routes.json"
        routes.write_text(json.dumps(table))
        args = [
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--admin-port", str(admin_port),
            "--routes-file", str(routes), "--log-level", "WARNING",
            "--capture-dir", str(work / "capture"), "--workers", str(workers),
        ]  # fmt: skip
        self.log = work / "gateway.log"
        self.proc = launch_gateway(args, self.log, cpus)
        wait_gateway_ready(self.proc, self.http_port, self.log)

    def shadow_outcomes(self) -> dict[str, int]:
        """lastmile_gateway_shadow_requests_total by outcome, from /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("lastmile_gateway_shadow_requests_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = out.get(outcome, 0) + int(float(line.rsplit(" ", 1)[1]))
        return out


Load = Callable[[int, float], dict[str, float]]


class Bench:
    """Starts everything, checks every target answers right, then measures the cells."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.notes: list[str] = []
        self.placed: dict[str, str] = {}  # side -> the CPUs it may run on (observe_placement)
        self.bodies = {"json": json_body(), "binary": binary_body()}
        use_wrk = args.http_driver != "asyncio" and shutil.which("wrk") is not None
        if args.http_driver == "wrk" and not use_wrk:
            raise SystemExit("--http-driver wrk: wrk is not installed (make bench-deps)")
        self.http_tool = "wrk" if use_wrk else "asyncio driver"
        self.scripts = {k: write_wrk_script(work, b) for k, b in self.bodies.items()}
        self.nginx: Nginx | None = None
        self.nginx_info = "not run (--no-nginx)"

    def http_load(self, url: str, body: str) -> Load:
        if self.http_tool == "wrk":
            return lambda conns, secs: run_wrk(url, conns, secs, self.scripts[body])
        return lambda conns, secs: run_driver(url, self.bodies[body], conns, secs)

    def grpc_load(self, address: str, model: str) -> Load:
        return lambda n, secs: run_grpc(address, model, n, secs, self.args.grpc_driver)

    def start_nginx(self, ports: PortPicker, triton_http: int, triton_grpc: int) -> None:
        version = "nginx (missing)"
        binary = nginx_binary()
        if binary:
            probe = subprocess.run([binary, "-v"], capture_output=True, text=True)
            version = probe.stderr.strip().removeprefix("nginx version: ")
        http_port, grpc_port = ports.take(2)
        nginx = Nginx(self.work / "nginx", (http_port, grpc_port), (triton_http, triton_grpc))
        try:
            nginx.start(self.args.nginx_workers, cpus=self.args.proxy_cpus)
        except (RuntimeError, OSError) as exc:
            self.nginx_info = f"not run: {exc}"
            self.notes.append(f"nginx could not start, compared direct vs gateway only: {exc}")
            return
        self.nginx = nginx
        workers = nginx.worker_count()
        self.nginx_info = f"{version}, worker_processes {self.args.nginx_workers} ({workers})"

    def loads(self, triton: Any, gw: Gateway) -> dict[tuple[str, str], Load]:
        """(cell kind, target) -> a load function, each checked to answer right once."""
        ep = triton.endpoints
        bases = {"direct": ep.http_url, "gateway": f"http://127.0.0.1:{gw.http_port}"}
        grpc = {"direct": ep.grpc_url, "gateway": f"127.0.0.1:{gw.grpc_port}"}
        if self.nginx is not None:
            bases["nginx"] = f"http://127.0.0.1:{self.nginx.http_port}"
            grpc["nginx"] = f"127.0.0.1:{self.nginx.grpc_port}"
        out: dict[tuple[str, str], Load] = {}
        wanted = set(self.args.protocols)
        for target, base in bases.items():
            via = target == "gateway"
            for body, model, route in (("json", MODEL, "bench"), ("binary", WIDE, "wide")):
                if f"http-{body}" not in wanted:
                    continue
                url = f"{base}/v2/models/{route if via else model}/infer"
                answer = check_answer(url, self.bodies[body])
                if answer["model_name"] != (route if via else model):
                    raise RuntimeError(f"{url}: answered for model {answer['model_name']!r}")
                out[(f"http-{body}", target)] = self.http_load(url, body)
            if "grpc" in wanted:
                model = "bench" if via else MODEL
                variant = check_grpc(grpc[target], model)
                if via and variant != "bench/1":
                    raise RuntimeError(f"gRPC via the gateway: lastmile_variant {variant!r}")
                out[("grpc", target)] = self.grpc_load(grpc[target], model)
        for target, route in ROLLOUT_ROUTES.items() if "rollout" in wanted else ():
            url = f"{bases['gateway']}/v2/models/{route}/infer"
            shares = variant_shares(url, self.bodies["json"], 200 if target == "canary" else 20)
            self.notes.append(f"{target} route: answers per variant of {sum(shares.values())} "
                              f"sequential requests {shares}")  # fmt: skip
            out[("rollout", target)] = self.http_load(url, "json")
        return out

    def measure(self) -> dict[str, Any]:
        a = self.args
        repo = self.work / "repo"
        write_scale_model(repo, MODEL)
        write_scale_model(repo, CANDIDATE)
        write_wide_model(repo, WIDE)
        ports = PortPicker.from_text(a.port_range)
        load_before = os.getloadavg()[0]
        triton = embedded_triton(self.work, *ports.take(3), cpus=a.triton_cpus)
        with triton:
            with triton.client() as client:
                for model in (MODEL, CANDIDATE, WIDE):
                    client.load_model(model)
            ep = triton.endpoints
            table = routing_table(ep.http_url, ep.grpc_url)
            gw = Gateway(self.work, ports, table, a.gateway_workers, a.proxy_cpus)
            try:
                if not a.no_nginx:
                    http_port, grpc_port, _ = triton.ports
                    self.start_nginx(ports, http_port, grpc_port)
                loads = self.loads(triton, gw)
                if a.client_cpus is not None:  # wrk and the gRPC driver inherit the set
                    pin_own_threads(a.client_cpus)
                pids = {"gateway": gw.proc.pid}
                if self.nginx is not None:
                    pids["nginx"] = self.nginx.pid
                for target in ROLLOUT_TARGETS:
                    pids[target] = gw.proc.pid
                self.observe_placement(pids, triton.pid)
                cells = self.cells()
                samples = self.rounds(cells, loads, pids, triton.pid)
                if "rollout" in a.protocols:
                    self.notes.append(f"shadow copies by outcome: {gw.shadow_outcomes()}")
            finally:
                gateway_rc = stop_gateway(gw.proc, 30)
                nginx_rc = self.nginx.stop() if self.nginx is not None else None
        load_after = os.getloadavg()[0]
        self.notes.append(
            f"1-min load average {load_before:.1f} before the run, {load_after:.1f} at its end "
            f"({os.cpu_count()} CPUs; load before it means other work shared the machine)"
        )
        result: dict[str, Any] = summarize(cells, samples)
        result["targets"] = targets(result["ratios"])
        gateway_ok = "" if gateway_rc == 0 else f" (gateway log: {gw.log.read_text()[-500:]})"
        self.notes.append(f"exit codes after SIGTERM/SIGQUIT: gateway {gateway_rc}, "
                          f"nginx {nginx_rc}{gateway_ok}")  # fmt: skip
        result |= {
            "header": (
                f"HTTP load {self.http_tool}, gRPC {a.grpc_driver} grpc.aio driver; {a.rounds} "
                f"rounds x {a.seconds:g} s per target, interleaved; {os.cpu_count()} CPUs; "
                f"gateway: {a.gateway_workers} process(es); nginx: {self.nginx_info}; "
                f"ports {a.port_range}{self.placement()}"
            ),
            "http_tool": self.http_tool,
            "grpc_driver": a.grpc_driver,
            "rounds": a.rounds,
            "seconds": a.seconds,
            "cpus": os.cpu_count(),
            "nginx": self.nginx_info,
            "gateway_workers": a.gateway_workers,
            "placement": self.placed,
            "notes": self.notes,
        }
        return result

    def observe_placement(self, pids: dict[str, int], triton_pid: int | None) -> None:
        """The CPUs each side may run on, read back from the kernel (every thread of every
        process), so that the report shows what the pinning did, not what was asked."""
        sides = {"gateway": pids["gateway"], "nginx": pids.get("nginx"), "triton": triton_pid}
        self.placed = {
            side: format_cpu_list(sorted(allowed_cpus(pid)))
            for side, pid in sides.items()
            if pid is not None
        }
        # this process alone: the others are its children
        self.placed["clients"] = format_cpu_list(sorted(allowed_cpus(os.getpid(), False)))

    def placement(self) -> str:
        """'; CPUs gateway 0-3, nginx 0-3, triton 4-11, clients 12-15' when any side was
        pinned, else ''."""
        a = self.args
        if a.proxy_cpus is None and a.triton_cpus is None and a.client_cpus is None:
            return ""
        return "; CPUs " + ", ".join(f"{side} {cpus}" for side, cpus in self.placed.items())

    def cells(self) -> list[Cell]:
        cells: list[Cell] = []
        for kind in self.args.protocols:
            if kind == "rollout":
                cells.append(Cell(kind, max(self.args.clients), ROLLOUT_TARGETS))
            else:
                targets = PROXY_TARGETS if self.nginx is not None else PROXY_TARGETS[:2]
                cells += [Cell(kind, n, targets) for n in self.args.clients]
        return cells

    def rounds(
        self,
        cells: list[Cell],
        loads: dict[tuple[str, str], Load],
        pids: dict[str, int],
        triton_pid: int | None,
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        a = self.args

        def once(cell: Cell, target: str, seconds: float) -> dict[str, Any]:
            proxy = pids.get(target)
            before = (cpu_seconds(proxy) if proxy else 0.0, cpu_seconds(triton_pid or 0))
            stats: dict[str, Any] = dict(loads[(cell.kind, target)](cell.clients, seconds))
            after = (cpu_seconds(proxy) if proxy else 0.0, cpu_seconds(triton_pid or 0))
            done = max(1.0, stats["requests"])
            stats["proxy_cpu_us"] = (after[0] - before[0]) / done * 1e6 if proxy else None
            stats["triton_cpu_us"] = (after[1] - before[1]) / done * 1e6 if triton_pid else None
            return stats

        warm = {(c.kind, t): c for c in cells for t in c.targets}
        for (_, target), cell in warm.items():  # connections, stubs, caches, the gateway's JIT
            once(Cell(cell.kind, max(a.clients), cell.targets), target, 1.0)
        samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        began = time.monotonic()
        for round_no in range(a.rounds):
            for cell in cells:
                shift = round_no % len(cell.targets)
                for target in cell.targets[shift:] + cell.targets[:shift]:
                    samples.setdefault((cell.key, target), []).append(once(cell, target, a.seconds))
            if not a.json:
                print(f"  round {round_no + 1}/{a.rounds} done at {time.monotonic() - began:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
        return samples


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def _clients(text: str) -> list[int]:
    try:
        values = sorted({int(s) for s in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated client counts, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("client counts must be >= 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per target per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    p.add_argument("--port-range", default=DEFAULT_RANGE, help="LOW-HIGH, loopback ports to use")
    p.add_argument("--protocols", type=_csv(PROTOCOLS), default=list(PROTOCOLS),
                   help=f"cells to run, comma-separated from {','.join(PROTOCOLS)}")  # fmt: skip
    p.add_argument("--clients", type=_clients, default=[1, 16], help="e.g. 1,16")
    p.add_argument("--http-driver", choices=("auto", "wrk", "asyncio"), default="auto")
    p.add_argument("--grpc-driver", choices=DRIVERS, default="raw")
    p.add_argument("--nginx-workers", default="1", help="worker_processes: 1, auto or N")
    p.add_argument("--gateway-workers", type=int, default=1,
                   help="gateway processes (its --workers)")  # fmt: skip
    p.add_argument("--no-nginx", action="store_true", help="compare direct and gateway only")
    p.add_argument(
        "--proxy-cpus",
        type=cpu_list_arg,
        help="CPUs of the gateway and of nginx, e.g. 0-3 (default: not pinned)",
    )
    p.add_argument("--triton-cpus", type=cpu_list_arg, help="CPUs of Triton and its stubs")
    p.add_argument("--client-cpus", type=cpu_list_arg,
                   help="CPUs of this process and its load generators")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = p.parse_args(argv)
    try:
        PortPicker.from_text(a.port_range)
    except ValueError as exc:
        p.error(str(exc))
    if a.rounds < 1 or a.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lastmile-bench-gw-"))
    try:
        result = Bench(args, work).measure()
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))  # the bench's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
