"""Tiny Triton models and helpers shared by the benchmarks and the gateway e2e tests.

Kept out of ``tests/`` so that a benchmark runs without the test suite; the tests import the
model writer, the Triton/gateway start-up and the stop helpers from here (one copy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from manager.errors import RuntimeSetupError
from manager.triton.cpus import format_cpu_list, parse_cpu_list, pinned
from manager.triton.runtime import EmbeddedTriton, find_wheel

REPO_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

# A batch-capable Python-backend model: y = factor * x, FP32 [4].
_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
{version_policy}input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""
_ALL_VERSIONS = "version_policy: { all { } }\n"

_MODEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = (x * {factor}).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", y)])
            )
        return responses
"""


def write_scale_model(
    repo: Path,
    name: str,
    *,
    factor: float = 2.0,
    instances: int = 1,
    versions: Mapping[int, float] | None = None,
) -> None:
    """Write a Python-backend model `name` computing y = factor * x into `repo`.

    By default one version (1) with `factor`; `versions` (version -> factor) writes several
    instead, all of them served (``version_policy: all``).
    """
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    policy = "" if versions is None else _ALL_VERSIONS
    (model_dir / "config.pbtxt").write_text(
        _CONFIG.format(name=name, instances=instances, version_policy=policy)
    )
    for version, version_factor in (versions or {1: factor}).items():
        (model_dir / str(version)).mkdir(exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(
            _MODEL_PY.format(factor=repr(float(version_factor)))
        )


# A Python-backend model for large tensors: y = factor * x, FP32 [-1, width], no batching
# (a [64, 1024] request is one tensor, not 64 requests for the batcher).
_WIDE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1, {width} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1, {width} ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def write_wide_model(
    repo: Path, name: str, *, width: int = 1024, factor: float = 2.0, instances: int = 1
) -> None:
    """Write a Python-backend model `name` computing y = factor * x on FP32 [rows, `width`]."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(
        _WIDE_CONFIG.format(name=name, width=width, instances=instances)
    )
    (model_dir / "1" / "model.py").write_text(_MODEL_PY.format(factor=repr(float(factor))))


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the kernel just handed out on loopback (small race, fine here)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    for s in socks:
        s.close()
    return ports


def free_port_block(size: int) -> int:
    """A first port such that `size` consecutive ports from it are free now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size >= 65535:
            continue
        taken = False
        for port in range(base, base + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError("no block of free ports")


def triton_missing() -> bool:
    """True when nvidia-pytriton's tritonserver is not installed (the e2e tests skip then)."""
    try:
        find_wheel()
    except RuntimeSetupError:
        return True
    return False


def embedded_triton(
    work: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    cpus: frozenset[int] | None = None,
) -> EmbeddedTriton:
    """A tritonserver (not started yet) serving ``work/repo``, logging to ``work``; on `cpus`
    (its stubs too) when given."""
    return EmbeddedTriton(
        cpus=cpus,
        repository=work / "repo",
        work_dir=work,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_path=work / "tritonserver.log",
        start_timeout_s=120,
    )


def gateway_command(*args: str) -> list[str]:
    """The command line of ``python -m rollout.gateway`` on loopback with `args` after it."""
    return [sys.executable, "-m", "rollout.gateway", "--host", "127.0.0.1", *args]


def gateway_env() -> dict[str, str]:
    """The environment the gateway subprocess runs with: this one, with the repo importable."""
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def launch_gateway(
    args: Sequence[str], log_path: Path, cpus: frozenset[int] | None = None
) -> subprocess.Popen[bytes]:
    """Start the gateway subprocess (see `gateway_command`), its output going to `log_path`;
    on `cpus` (its worker processes too) when given."""
    cmd = gateway_command(*args)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd if cpus is None else pinned(cmd, cpus),
            cwd=REPO_ROOT,
            env=gateway_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_gateway_ready(proc: subprocess.Popen[bytes], http_port: int, log_path: Path) -> None:
    """Wait up to 20 s for the gateway's /v2/health/ready; RuntimeError if it exits or not."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text())
        try:
            url = f"http://127.0.0.1:{http_port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("gateway did not become ready")


def stop_gateway(proc: subprocess.Popen[bytes], timeout_s: float, *, strict: bool = False) -> int:
    """SIGTERM `proc` (if still running) and return its exit code, waiting up to `timeout_s`.

    Past that it is killed; `strict` then re-raises the timeout (a test's failure), otherwise
    the killed process's exit code is returned (a benchmark reports it).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        if strict:
            proc.wait(timeout=5)
            raise
        return proc.wait()


def http_call(method: str, url: str, body: str | None = None) -> tuple[int, bytes]:
    """One HTTP request; (status, body) for error statuses too."""
    request = urllib.request.Request(
        url, data=body.encode() if body is not None else None, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ---- benchmark plumbing (bench_gateway.py, bench_gateway_grpc.py) -------------------------


def run_fast(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `make()` on uvloop when installed, else on asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(make())
    except ImportError:
        return asyncio.run(make())


def latency_stats(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    """Throughput, p50/p99 in ms and errors of one measurement (sorts `latencies`)."""
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        "errors": errors,
    }


LEVELS = (1, 16)  # concurrent connections / clients per cell
Samples = dict[tuple[str, int], list[dict[str, float]]]


def alternate_rounds(
    once: Callable[[str, int, float], dict[str, float]], rounds: int, seconds: float
) -> Samples:
    """Warm up both targets, then `rounds` rounds at each level, direct/gateway order swapped
    every round so that noise from other work on the machine hits both sides alike."""
    for name in ("direct", "gateway"):  # warm up connections, the stub and the gateway
        once(name, 16, 1.0)
    samples: Samples = {}
    for round_no in range(rounds):
        for level in LEVELS:
            order = ["direct", "gateway"] if round_no % 2 == 0 else ["gateway", "direct"]
            for name in order:
                samples.setdefault((name, level), []).append(once(name, level, seconds))
    return samples


def summarize(
    samples: Samples,
    level_key: str,
    extra: Callable[[list[dict[str, float]]], dict[str, Any]] = lambda runs: {},
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """The rows (medians of the rounds, `extra` columns after p99) and gateway/direct ratios."""
    rows: list[dict[str, Any]] = []
    for (name, level), runs in samples.items():
        rows.append(
            {
                "target": name,
                level_key: level,
                **{k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")},
                **extra(runs),
                "errors": sum(r["errors"] for r in runs),
                "rps_rounds": [round(r["rps"]) for r in runs],
            }
        )
    by = {(r["target"], r[level_key]): r for r in rows}
    ratios = {
        str(level): {
            "throughput_ratio": by[("gateway", level)]["rps"] / by[("direct", level)]["rps"],
            "added_p50_ms": by[("gateway", level)]["p50_ms"] - by[("direct", level)]["p50_ms"],
        }
        for level in LEVELS
    }
    return sorted(rows, key=lambda r: (r[level_key], r["target"])), ratios


def lastmile_cli(env: dict[str, str], *args: str) -> str:
    """Run ``lastmile ARGS`` against the system ``env`` points at; its stdout, or exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "manager.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SystemExit(f"lastmile {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def start_system(home: Path, **settings: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``lastmile up --detach`` in ``home`` on free ports: (the env that points at it, its
    state). ``settings``: more LASTMILE_* variables (without the prefix)."""
    import json

    names = [
        "GATEWAY_HTTP_PORT", "GATEWAY_GRPC_PORT", "GATEWAY_METRICS_PORT", "GATEWAY_ADMIN_PORT",
        "API_PORT",
    ]  # fmt: skip
    env = dict(os.environ, LASTMILE_HOME=str(home))
    env |= {f"LASTMILE_{n}": str(port) for n, port in zip(names, free_ports(5), strict=True)}
    # each Triton replica's three ports, one block (stride 3) for the whole pool
    base = free_port_block(3 * int(settings.get("triton_replicas", "1")))
    env |= {
        "LASTMILE_TRITON_HTTP_PORT": str(base),
        "LASTMILE_TRITON_GRPC_PORT": str(base + 1),
        "LASTMILE_TRITON_METRICS_PORT": str(base + 2),
        "LASTMILE_TRITON_PORT_STRIDE": "3",
    }
    env |= {f"LASTMILE_{k.upper()}": v for k, v in settings.items()}
    return env, dict(json.loads(lastmile_cli(env, "up", "--detach", "--json")))


def _process_table() -> tuple[dict[int, list[str]], dict[int, list[int]]]:
    """/proc/PID/stat fields after the command name, and the children of each pid."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return stats, children


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a gateway's worker processes, Triton's stubs)."""
    return _tree(pid, _process_table()[1])


def cpu_list_arg(text: str) -> frozenset[int]:
    """An argparse type: a CPU list such as ``0-3,8``, every CPU one this process may use."""
    try:
        cpus = parse_cpu_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    usable = os.sched_getaffinity(0)
    if not cpus <= usable:
        missing = ",".join(str(c) for c in sorted(cpus - usable))
        raise argparse.ArgumentTypeError(
            f"CPU(s) {missing} are not available here (usable: {format_cpu_list(sorted(usable))})"
        )
    return cpus


def _threads(pids: Sequence[int]) -> list[int]:
    """The live threads of `pids`."""
    out: list[int] = []
    for pid in pids:
        try:
            out += [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            continue
    return out


def pin_own_threads(cpus: frozenset[int]) -> None:
    """Pin every thread of this process to `cpus` (sched_setaffinity(0) moves only the
    calling thread, and libraries such as grpc have threads of their own by then); threads
    and processes started afterwards inherit the set."""
    for tid in _threads([os.getpid()]):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def allowed_cpus(pid: int, descendants: bool = True) -> frozenset[int]:
    """The CPUs any thread of `pid` (and of its live descendants) may run on, as the kernel
    has them: what a pinning really did."""
    cpus: set[int] = set()
    for tid in _threads(process_tree(pid) if descendants else [pid]):
        with contextlib.suppress(ProcessLookupError):
            cpus |= os.sched_getaffinity(tid)
    return frozenset(cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant (Triton's Python-backend
    stubs are its children), from /proc; 0 for processes that are gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats, children = _process_table()
    total = 0.0
    for current in _tree(pid, children):
        fields = stats.get(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def wait_children(pid: int, count: int, timeout_s: float = 60.0) -> None:
    """Until `pid` has exactly `count` child processes: Triton starts one Python-backend stub
    per model instance and stops it when the model is unloaded, which Triton finishes after the
    unload call returned."""
    deadline = time.monotonic() + timeout_s
    while len(_process_table()[1].get(pid, [])) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not settle at {count} children")
        time.sleep(0.1)
