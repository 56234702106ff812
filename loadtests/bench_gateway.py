"""Gateway overhead, measured side by side: direct Triton vs through `rollout.gateway`.

    python loadtests/bench_gateway.py [--seconds 5] [--rounds 3] [--json]

One run starts a real tritonserver (nvidia-pytriton wheel, one Python-backend instance, batch-1
JSON requests), the gateway as a subprocess, and drives the same infer body at 1 and 16
keep-alive connections against both. Rounds alternate direct/gateway so that noise from other
work on the machine hits both sides alike; the median of the rounds is reported. Load comes
from wrk when installed (C, light) and otherwise from the asyncio driver below. DESIGN §3
target: gateway throughput >= ~80 % of direct. Loopback only; every process is cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

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
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"errors\\":%%d,\\"non2xx\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_wrk(url: str, conns: int, seconds: float, script: Path) -> dict[str, float]:
    duration = f"-d{max(1, round(seconds))}s"
    cmd = ["wrk", "-t1", f"-c{conns}", duration, "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    match = re.search(r"^BENCH (\{.*\})$", out.stdout, re.M)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"] + raw["non2xx"],
    }


async def _drive(port: int, path: str, conns: int, seconds: float) -> dict[str, float]:
    """Minimal keep-alive HTTP/1.1 load: one coroutine per connection, one request in flight."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n{BODY}"
    ).encode()
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - start)
                if head[9:12] != b"200":
                    errors += 1
        finally:
            writer.close()

    began = loop.time()
    await asyncio.gather(*(connection() for _ in range(conns)))
    return latency_stats(latencies, loop.time() - began, errors)


def run_driver(url: str, conns: int, seconds: float) -> dict[str, float]:
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3]
    return run_fast(lambda: _drive(port, path, conns, seconds))


def start_gateway(work: Path, triton_url: str) -> tuple[subprocess.Popen[bytes], int]:
    routes = work / "routes.json"
    target = {"url": triton_url, "model": MODEL}
    route = {
        "workspace": "default",
        "pipeline": ROUTE,
        "strategy": "weighted",
        "variants": [{"name": f"{ROUTE}/1", "version": 1, "weight": 100, "targets": [target]}],
    }
    routes.write_text(json.dumps({"generation": 1, "routes": {f"default/{ROUTE}": route}}))
    http_port, metrics_port, admin_port = free_ports(3)
    args = [
        "--http-port", str(http_port), "--grpc-port", "0", "--metrics-port", str(metrics_port),
        "--admin-port", str(admin_port), "--routes-file", str(routes), "--log-level", "WARNING",
    ]  # fmt: skip
    proc = launch_gateway(args, work / "gateway.log")
    wait_gateway_ready(proc, http_port, work / "gateway.log")
    return proc, http_port


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    write_scale_model(work / "repo", MODEL)
    tool = "wrk" if shutil.which("wrk") and not args.driver else "asyncio-driver"
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT % BODY)
    triton = embedded_triton(work, *free_ports(3))
    with triton:
        with triton.client() as client:
            client.load_model(MODEL)
        triton_url = triton.endpoints.http_url
        gateway, gw_port = start_gateway(work, triton_url)
        try:
            urls = {
                "direct": f"{triton_url}/v2/models/{MODEL}/infer",
                "gateway": f"http://127.0.0.1:{gw_port}/v2/models/{ROUTE}/infer",
            }

            def once(name: str, conns: int, seconds: float) -> dict[str, float]:
                if tool == "wrk":
                    return run_wrk(urls[name], conns, seconds, script)
                return run_driver(urls[name], conns, seconds)

            samples = alternate_rounds(once, args.rounds, args.seconds)
        finally:
            gateway_rc = stop_gateway(gateway, 20)
    rows, ratios = summarize(samples, "connections")
    return {
        "tool": tool,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "rows": rows,
        "ratios": ratios,
        "gateway_exit_code": gateway_rc,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"gateway benchmark: {result['tool']}, {result['seconds']} s x {result['rounds']} "
        f"round(s) per cell (median), {result['cpus']} CPUs, JSON batch-1 infer",
        f"{'target':<8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        "  rounds req/s",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['target']:<8} {r['connections']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['errors']:>6}  {r['rps_rounds']}"
        )
    for conns, ratio in result["ratios"].items():
        lines.append(
            f"{conns:>2} conn(s): gateway/direct throughput {ratio['throughput_ratio']:.0%}, "
            f"added p50 {ratio['added_p50_ms']:+.2f} ms"
        )
    lines.append(f"gateway exit code after SIGTERM: {result['gateway_exit_code']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    parser.add_argument("--driver", action="store_true", help="use the asyncio driver, not wrk")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lastmile-bench-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=2) if args.json else render(result))  # the bench's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
