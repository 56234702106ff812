"""loadtests/bench_shadow_burst.py runs end to end, briefly: the real gateway (with the loop
probe) between the benchmark's clients and its Triton stand-ins, HTTP and gRPC, and reports
what it measured. No figure is judged here (a benchmark's figures are not a test's); what is
checked is that every request was answered, that the slow windows really mirrored (the
candidate answered copies) and the others did not, and that bad options are refused."""

from __future__ import annotations

import json
import subprocess

from tests.integration.bench_cli import run_bench


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("bench_shadow_burst.py", *args, timeout=180)


def test_a_short_run_mirrors_in_the_slow_windows_only_and_reports_the_loop() -> None:
    run = bench(
        "--rounds", "1", "--seconds", "0.5", "--rate", "100", "--clients", "2",
        "--burst", "8", "--hold", "0.2", "--loop-probe", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    windows = result["windows"]
    assert sorted((w["protocol"], w["phase"]) for w in windows) == [
        ("grpc", "none"), ("grpc", "slow"), ("http", "none"), ("http", "slow"),
    ]  # fmt: skip
    for w in windows:
        assert w["failures"] == 0 and abs(w["requests"] - 50) <= 1, w  # 100/s for 0.5 s
        assert w["turns"] > 0 and w["longest_turn_ms"] > 0, w
        if w["phase"] == "slow":
            assert w["copies_answered"] >= 8, w  # at least one held burst came back
    assert set(result["p99_ratio"]) == {"http", "grpc"}


def test_bad_options_are_refused_with_what_to_change() -> None:
    run = bench("--protocols", "http,smtp")
    assert run.returncode == 2
    assert "--protocols: choose from http,grpc, got ['smtp']" in run.stderr
    run = bench("--burst", "0")
    assert run.returncode == 2
    assert "--burst, --batch and --hold must be positive" in run.stderr
