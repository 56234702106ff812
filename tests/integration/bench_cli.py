"""Run a benchmark script of loadtests/ as a user does: a subprocess, its output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python loadtests/SCRIPT ARGS`` from the repository's root."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "loadtests" / script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
