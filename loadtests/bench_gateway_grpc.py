"""gRPC gateway overhead, measured side by side: direct Triton vs through `rollout.gateway`.

    python loadtests/bench_gateway_grpc.py [--seconds 5] [--rounds 3] [--driver raw|tritonclient]
                                           [--json]

One run starts a real tritonserver (nvidia-pytriton wheel, one Python-backend instance, batch-1
FP32 [1, 4] requests), the gateway as a subprocess with its gRPC listener, and drives
ModelInfer at 1 and 16 concurrent clients against both. Rounds alternate direct/gateway so that
noise from other work on the machine hits both sides alike; the median of the rounds is reported.

Drivers (both one grpc.aio channel, N coroutines with one request in flight each):
- raw (default): the request bytes `tritonclient` would send, serialized once and sent through a
  bytes-level stub; the client costs as little CPU as possible, which matters when client,
  gateway and Triton share two cores;
- tritonclient: the official `tritonclient.grpc.aio` client, building and parsing every message.
Loopback only; every process is cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.grpc.aio as aioclient  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402

from loadtests._models import (  # noqa: E402
    alternate_rounds,
    embedded_triton,
    free_ports,
    latency_stats,
    launch_gateway,
    run_fast,
    stop_gateway,
    summarize,
    wait_gateway_ready,
    write_scale_model,
)

MODEL = "default.bench.v1"
ROUTE = "bench"
X = np.array([[1, 2, 3, 4]], dtype=np.float32)
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str) -> bytes:
    """The ModelInferRequest tritonclient.grpc sends for infer(model, [x]) with output y."""
    inp = grpcclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.extend([inp._get_tensor()])
    request.raw_input_contents.extend([inp._get_content()])
    request.outputs.extend([grpcclient.InferRequestedOutput("y")._get_tensor()])
    return request.SerializeToString()


async def _drive(address: str, model: str, clients: int, seconds: float, driver: str) -> Any:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    call: Callable[[], Awaitable[Any]]
    if driver == "raw":
        channel = grpc.aio.insecure_channel(address)
        stub = channel.unary_unary(INFER_METHOD)
        body = request_bytes(model)

        def call() -> Awaitable[Any]:
            return stub(body, timeout=10)

        close: Callable[[], Awaitable[Any]] = channel.close
        reply = pb.ModelInferResponse.FromString(await call())
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2, 4, 6, 8]
        if model == ROUTE:  # through the gateway: the answer names its variant
            assert reply.parameters["lastmile_variant"].string_param == f"{ROUTE}/1"
    else:
        client = aioclient.InferenceServerClient(address)
        inp = aioclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        outputs = [aioclient.InferRequestedOutput("y")]

        async def call() -> Any:
            return (await client.infer(model, [inp], outputs=outputs)).as_numpy("y")

        close = client.close
        assert (await call()).tolist() == [[2, 4, 6, 8]]
    deadline = loop.time() + seconds

    async def one_client() -> None:
        nonlocal errors
        while loop.time() < deadline:
            start = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = loop.time()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = loop.time() - began
    await close()
    return latency_stats(latencies, elapsed, errors)


def run_driver(address: str, model: str, clients: int, seconds: float, driver: str) -> Any:
    return run_fast(lambda: _drive(address, model, clients, seconds, driver))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_gateway(work: Path, http_url: str, grpc_url: str) -> tuple[subprocess.Popen[bytes], int]:
    routes = work / "routes.json"
    target = {"url": http_url, "grpc": grpc_url, "model": MODEL}
    route = {
        "workspace": "default",
        "pipeline": ROUTE,
        "strategy": "weighted",
        "variants": [{"name": f"{ROUTE}/1", "version": 1, "weight": 100, "targets": [target]}],
    }
    routes.write_text(json.dumps({"generation": 1, "routes": {f"default/{ROUTE}": route}}))
    http_port, grpc_port, metrics_port, admin_port = free_ports(4)
    args = [
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port), "--admin-port", str(admin_port),
        "--routes-file", str(routes), "--log-level", "WARNING",
    ]  # fmt: skip
    proc = launch_gateway(args, work / "gateway.log")
    wait_gateway_ready(proc, http_port, work / "gateway.log")
    return proc, grpc_port


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    write_scale_model(work / "repo", MODEL)
    triton = embedded_triton(work, *free_ports(3))
    with triton:
        with triton.client() as client:
            client.load_model(MODEL)
        endpoints = triton.endpoints
        gateway, gw_port = start_gateway(work, endpoints.http_url, endpoints.grpc_url)
        try:
            targets = {
                "direct": (endpoints.grpc_url, MODEL),
                "gateway": (f"127.0.0.1:{gw_port}", ROUTE),
            }

            def once(name: str, clients: int, seconds: float) -> Any:
                address, model = targets[name]
                before = cpu_seconds(gateway.pid)
                result = run_driver(address, model, clients, seconds, args.driver)
                after = cpu_seconds(gateway.pid)
                done = result["rps"] * seconds
                if name == "gateway" and before is not None and after is not None and done:
                    result["gateway_cpu_us"] = (after - before) / done * 1e6
                return result

            samples = alternate_rounds(once, args.rounds, args.seconds)
        finally:
            gateway_rc = stop_gateway(gateway, 30)

    def gateway_cpu(runs: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "gateway_cpu_us": (
                statistics.median(r["gateway_cpu_us"] for r in runs)
                if all("gateway_cpu_us" in r for r in runs)
                else None
            )
        }

    rows, ratios = summarize(samples, "clients", gateway_cpu)
    return {
        "driver": args.driver,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "rows": rows,
        "ratios": ratios,
        "gateway_exit_code": gateway_rc,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"gRPC gateway benchmark: {result['driver']} driver, {result['seconds']} s x "
        f"{result['rounds']} round(s) per cell (median), {result['cpus']} CPUs, batch-1 ModelInfer",
        f"{'target':<8} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f" {'gw CPU us/req':>13}  rounds req/s",
    ]
    for r in result["rows"]:
        cpu = r["gateway_cpu_us"]
        lines.append(
            f"{r['target']:<8} {r['clients']:>7} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['errors']:>6} {'-' if cpu is None else f'{cpu:.0f}':>13}  "
            f"{r['rps_rounds']}"
        )
    for clients, ratio in result["ratios"].items():
        lines.append(
            f"{clients:>2} client(s): gateway/direct throughput {ratio['throughput_ratio']:.0%}, "
            f"added p50 {ratio['added_p50_ms']:+.2f} ms"
        )
    lines.append(f"gateway exit code after SIGTERM: {result['gateway_exit_code']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    parser.add_argument("--driver", choices=("raw", "tritonclient"), default="raw")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lastmile-bench-grpc-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=2) if args.json else render(result))  # the bench's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
