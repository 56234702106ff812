"""Which gRPC proxy design is cheapest per call: the measurement behind rollout.grpc_relay.

    python loadtests/bench_grpc_designs.py [--rounds 3] [--seconds 3] [--clients 16]
        [--designs aio,aio-uvloop,sync-16,sync-4,gateway] [--port-range 20000-29999] [--json]

One tritonserver (a Python-backend model y = 2x, FP32 [1, 4]) and, in front of it, one process
per design, all measured in interleaved rounds with the same grpc.aio driver (raw bytes, N
concurrent calls) against direct Triton:
- aio: the smallest grpc.aio proxy there is — a generic handler, identity (de)serializers, one
  channel to Triton, the call awaited (what the gateway's grpc.aio frontend does, minus routing);
- aio-uvloop: the same on uvloop;
- sync-N: grpc's thread-pool server (N workers), a blocking call to Triton per request;
- gateway: `python -m rollout.gateway` (the HTTP/2 relay of rollout.grpc_relay, fast path).
Printed per design: req/s per round, the ratio to direct (median [min-max]) and CPU µs per call
of the proxy process and of Triton, read from /proc.

Measured on the 2-core dev box, 16 clients, 3 rounds x 3 s (`python
loadtests/bench_grpc_designs.py`; proxy CPU µs per call, throughput ÷ direct [min-max]):
aio 520 µs, 0.38 [0.37-0.40]; aio-uvloop 504 µs, 0.38 [0.36-0.45]; sync-16 670 µs, 0.31
[0.30-0.35]; sync-4 453 µs, 0.43 [0.37-0.48]; the gateway 104 µs, 0.89 [0.87-0.93]. A relay
built on the `h2` library (tried, not kept) spent ~470 µs, most of it in h2's state machine and
header validation. Triton itself spends ~256 µs per call direct, ~345 µs behind grpc.aio
(smaller batches), ~257 µs behind the relay.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests._bench_grpc import INFER_METHOD, check_grpc, run_grpc  # noqa: E402
from loadtests._bench_ports import DEFAULT_RANGE, PortPicker  # noqa: E402
from loadtests._models import (  # noqa: E402
    cpu_seconds,
    embedded_triton,
    gateway_env,
    launch_gateway,
    stop_gateway,
    wait_gateway_ready,
    write_scale_model,
)

MODEL = "default.bench.v1"
DESIGNS = ("aio", "aio-uvloop", "sync-16", "sync-4", "gateway")

# The designs other than the gateway, as one small program: DESIGN PORT UPSTREAM.
_PROXY = """
import asyncio, sys
import grpc
design, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
INFER = {infer!r}
SERVICE, METHOD = INFER[1:].split("/")

def serve(server, handler):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {{
        METHOD: grpc.unary_unary_rpc_method_handler(handler)}}),))
    server.add_insecure_port(f"127.0.0.1:{{port}}")

if design.startswith("aio"):
    async def main():
        call = grpc.aio.insecure_channel(upstream).unary_unary(INFER)
        async def infer(request, context):
            return await call(request, timeout=10)
        server = grpc.aio.server()
        serve(server, infer)
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()
    if design == "aio-uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
else:
    from concurrent import futures
    call = grpc.insecure_channel(upstream).unary_unary(INFER)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(design.split("-")[1])))
    serve(server, lambda request, context: call(request, timeout=10))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
"""


def start_design(
    design: str, port: int, upstream: str, work: Path, ports: PortPicker, http_url: str
) -> subprocess.Popen[bytes]:
    if design == "gateway":
        table = {
            "generation": 1,
            "routes": {
                "default/bench": {
                    "workspace": "default", "pipeline": "bench", "strategy": "weighted",
                    "variants": [{"name": "bench/1", "version": 1, "weight": 100, "targets": [
                        {"url": http_url, "grpc": upstream, "model": MODEL}]}],
                }
            },
        }  # fmt: skip
        routes = work / "routes.json"
        routes.write_text(json.dumps(table))
        http_port, metrics_port, admin_port = ports.take(3)
        args = [
            "--http-port", str(http_port), "--grpc-port", str(port),
            "--metrics-port", str(metrics_port), "--admin-port", str(admin_port),
            "--routes-file", str(routes), "--log-level", "WARNING",
        ]  # fmt: skip
        log = work / "gateway.log"
        proc = launch_gateway(args, log)
        wait_gateway_ready(proc, http_port, log)
        return proc
    script = work / "proxy.py"
    script.write_text(_PROXY.format(infer=INFER_METHOD))
    proc = subprocess.Popen(
        [sys.executable, str(script), design, str(port), upstream],
        stdout=subprocess.PIPE,
        env=gateway_env(),
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"design {design} did not start")
    return proc


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ports = PortPicker.from_text(args.port_range)
    write_scale_model(work / "repo", MODEL)
    triton = embedded_triton(work, *ports.take(3))
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    samples: dict[str, list[dict[str, float]]] = {}
    with triton:
        with triton.client() as client:
            client.load_model(MODEL)
        upstream = triton.endpoints.grpc_url
        try:
            for design in args.designs:
                (port,) = ports.take(1)
                proc = start_design(design, port, upstream, work, ports, triton.endpoints.http_url)
                procs[design] = (proc, f"127.0.0.1:{port}")
            targets: dict[str, tuple[int | None, str, str]] = {"direct": (None, upstream, MODEL)}
            for design, (proc, address) in procs.items():
                targets[design] = (proc.pid, address, "bench" if design == "gateway" else MODEL)
            for _, address, model in targets.values():
                check_grpc(address, model)
            triton_pid = triton.pid
            assert triton_pid is not None
            for round_ in range(args.rounds):
                names = list(targets)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in names:
                    pid, address, model = targets[name]
                    proxy0 = cpu_seconds(pid) if pid else 0.0
                    triton0 = cpu_seconds(triton_pid)
                    out = run_grpc(address, model, args.clients, args.seconds, "raw")
                    calls = max(1, int(out["requests"]))
                    proxy_us = (cpu_seconds(pid) - proxy0) / calls * 1e6 if pid else 0.0
                    triton_us = (cpu_seconds(triton_pid) - triton0) / calls * 1e6
                    row = {"rps": out["rps"], "errors": out["errors"]}
                    row |= {"proxy_us": proxy_us, "triton_us": triton_us}
                    samples.setdefault(name, []).append(row)
                print(f"  round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for design, (proc, _) in procs.items():
                if design == "gateway":
                    stop_gateway(proc, 30)
                else:
                    proc.kill()
                    proc.wait()
    direct = [s["rps"] for s in samples["direct"]]
    report: dict[str, Any] = {"clients": args.clients, "rounds": args.rounds, "designs": {}}
    for name, rows in samples.items():
        ratios = [row["rps"] / d for row, d in zip(rows, direct, strict=True) if d]
        report["designs"][name] = {
            "rps": [round(row["rps"]) for row in rows],
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "proxy_us": statistics.median(row["proxy_us"] for row in rows),
            "triton_us": statistics.median(row["triton_us"] for row in rows),
            "errors": sum(int(row["errors"]) for row in rows),
        }
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"gRPC proxy designs, {report['clients']} clients, {report['rounds']} interleaved rounds; "
        f"{os.cpu_count()} CPUs",
        f"{'design':12} {'÷ direct':>22} {'proxy µs':>9} {'triton µs':>10} {'err':>4}  req/s",
    ]
    for name, row in report["designs"].items():
        ratio = (
            "-"
            if name == "direct"
            else f"{row['ratio_median']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"
        )
        lines.append(
            f"{name:12} {ratio:>22} {row['proxy_us']:>9.0f} {row['triton_us']:>10.0f} "
            f"{row['errors']:>4}  {row['rps']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--port-range", default=DEFAULT_RANGE)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--designs",
        type=lambda text: [d for d in text.split(",") if d],
        default=list(DESIGNS),
        help=f"comma-separated from {','.join(DESIGNS)}",
    )
    args = parser.parse_args(argv)
    unknown = [d for d in args.designs if d not in DESIGNS]
    if unknown:
        parser.error(f"unknown design(s) {unknown}; choose from {', '.join(DESIGNS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lastmile-grpc-designs-") as tmp:
        report = measure(args, Path(tmp))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
