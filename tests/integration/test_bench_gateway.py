"""loadtests/bench_gateway.py runs end to end, briefly: a real tritonserver, the gateway and
(when installed) nginx, one short round of the HTTP JSON cell at one client, each side pinned
to the CPUs asked for. No figure is judged here (a benchmark's figures are not a test's); what
is checked is that every target answered without errors, that the pinning is what the kernel
reports for every process and thread of each side, and that bad CPU lists are refused."""

from __future__ import annotations

import json
import os
import subprocess

from tests.integration.bench_cli import run_bench


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("bench_gateway.py", *args, timeout=300)


def test_a_short_pinned_run_answers_everywhere_and_reports_where_each_side_ran() -> None:
    usable = sorted(os.sched_getaffinity(0))
    first, last = str(usable[0]), str(usable[-1])  # the same CPU on a one-CPU machine
    run = bench(
        "--protocols", "http-json", "--clients", "1", "--rounds", "1", "--seconds", "0.5",
        "--http-driver", "asyncio", "--proxy-cpus", first, "--triton-cpus", last,
        "--client-cpus", last, "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    placement = result["placement"]
    assert placement["gateway"] == first and placement["triton"] == last, placement
    assert placement["clients"] == last, placement
    if "nginx" in placement:  # nginx is optional (make bench-deps)
        assert placement["nginx"] == first, placement
    assert f"CPUs gateway {first}" in result["header"], result["header"]
    targets = {row["target"]: row for row in result["rows"] if row["cell"] == "http-json@1"}
    assert {"direct", "gateway"} <= set(targets), targets
    for row in targets.values():
        assert row["rps"] > 0 and row["errors"] == 0, row


def test_cpu_lists_that_cannot_be_used_are_refused() -> None:
    run = bench("--proxy-cpus", "0-3x")
    assert run.returncode == 2
    assert "--proxy-cpus: '0-3x' is not a CPU number or a range like 0-3" in run.stderr
    beyond = max(os.sched_getaffinity(0)) + 1
    run = bench("--triton-cpus", str(beyond))
    assert run.returncode == 2
    assert f"--triton-cpus: CPU(s) {beyond} are not available here (usable: " in run.stderr
