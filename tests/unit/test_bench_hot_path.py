"""loadtests/bench_hot_path.py drives the real HTTP path and gRPC relay in process and checks
every answer it gets is the stamped one (assertions inside the benchmark); here, briefly, that
it runs, reports both paths, and refuses a bad option. Its figures are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "loadtests" / "bench_hot_path.py"


def test_a_short_run_reports_both_paths() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--calls", "200", "--rounds", "2", "--profile", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert set(result["paths"]) == {"http-json", "grpc"}
    for entry in result["paths"].values():
        assert len(entry["rounds_us"]) == 2 and entry["best_us"] > 0, entry
        assert any("_receive" in r["function"] or "data_received" in r["function"]
                   for r in entry["profile"]), entry["profile"]  # fmt: skip


def test_bad_options_are_refused() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--calls", "0"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "--calls and --rounds must be >= 1" in run.stderr
