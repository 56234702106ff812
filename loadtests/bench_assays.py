"""Drift-assay numerics: how fast values are summarised and an assay is scored, on one core.

    python loadtests/bench_assays.py [--rounds 5] [--json]

Measured in interleaved rounds (every figure once per round, in turn), so drift in the
machine's speed hits all of them alike; the report gives the median and [min-max] over rounds.

- summarise: ``manager.assays.summarise`` on float32 standard normals, 1,000,000 x 1 and
  100,000 x 10 (every column has far more than MAX_EXACT distinct values, so this is the
  bucket-sketch path, the slow one). Target: >= 1,000,000 values/s.
- assay run over 1,000,000 captured values: the window's values were summarised at capture
  time into 60 one-minute summaries (not timed here, that is the rate above); one run merges
  them, computes 10 quantile edges from a baseline summary (1,000,000 values), counts both
  sides in those bins and computes all 5 metrics. Target: < 0.2 s. For context, the same run
  with the 60 minute summaries built inside the timing ("with summarising", no target).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from manager.assays import (  # noqa: E402
    METRICS,
    Binning,
    Summary,
    make_edges,
    merge_all,
    score,
    summarise,
)

RATE_TARGET = 1_000_000.0  # values/s
ASSAY_TARGET_S = 0.2
MINUTES = 60
BINNING = Binning("quantile", bins=10)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def assay_run(baseline: Summary, minutes: list[Summary]) -> dict[str, float | None]:
    """What one scheduled assay evaluation does for one element, from stored summaries."""
    window = merge_all(minutes)
    edges = make_edges(baseline, BINNING)
    b = baseline.bin_counts(edges, BINNING.outliers)
    w = window.bin_counts(edges, BINNING.outliers)
    return {metric: score(metric, b, w) for metric in METRICS}


def run(rounds: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tall = rng.standard_normal((1_000_000, 1), dtype=np.float32)
    wide = rng.standard_normal((100_000, 10), dtype=np.float32)
    baseline = summarise(rng.standard_normal(1_000_000, dtype=np.float32))[0]
    captured = (rng.standard_normal(1_000_000, dtype=np.float32) * 1.1 + 0.1).astype(np.float32)
    chunks = np.array_split(captured, MINUTES)
    minutes = [summarise(chunk)[0] for chunk in chunks]
    summarise(tall[:1000])  # warm-up: first-call costs are not what is measured

    samples: dict[str, list[float]] = {
        "summarise 1,000,000 x 1": [],
        "summarise 100,000 x 10": [],
        "assay run": [],
        "assay run with summarising": [],
    }
    scores: dict[str, float | None] = {}
    for _ in range(rounds):
        seconds, _ = timed(lambda: summarise(tall))
        samples["summarise 1,000,000 x 1"].append(tall.size / seconds)
        seconds, _ = timed(lambda: summarise(wide))
        samples["summarise 100,000 x 10"].append(wide.size / seconds)
        seconds, scores = timed(lambda: assay_run(baseline, minutes))
        samples["assay run"].append(seconds)
        seconds, _ = timed(lambda: assay_run(baseline, [summarise(chunk)[0] for chunk in chunks]))
        samples["assay run with summarising"].append(seconds)

    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        if name.startswith("summarise"):
            unit, target, met = "values/s", RATE_TARGET, median >= RATE_TARGET
        elif name == "assay run":
            unit, target, met = "s", ASSAY_TARGET_S, median < ASSAY_TARGET_S
        else:
            unit, target, met = "s", None, None
        rows.append(
            {
                "name": name,
                "unit": unit,
                "median": median,
                "min": min(values),
                "max": max(values),
                "target": target,
                "met": met,
                "rounds": [round(v, 4) for v in values],
            }
        )
    return {
        "rounds": rounds,
        "rows": rows,
        "scores": scores,
        "buckets_per_minute_summary": statistics.median(
            len(s.positive) + len(s.negative) for s in minutes
        ),
        "all_targets_met": all(r["met"] for r in rows if r["met"] is not None),
    }


def _fmt(value: float, unit: str) -> str:
    return f"{value / 1e6:8.2f} M" if unit == "values/s" else f"{value * 1e3:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(max(1, args.rounds), args.seed)
    if args.json:
        print(json.dumps(result))
        return 0 if result["all_targets_met"] else 1
    print(f"drift-assay numerics, {result['rounds']} interleaved rounds, median [min-max]")
    for r in result["rows"]:
        unit = r["unit"]
        spread = f"[{_fmt(r['min'], unit).strip()} - {_fmt(r['max'], unit).strip()}]"
        if r["target"] is None:
            verdict = "(context)"
        else:
            sign = ">=" if unit == "values/s" else "<"
            verdict = f"target {sign} {_fmt(r['target'], unit).strip()}: " + (
                "met" if r["met"] else "NOT met"
            )
        per = "values/s" if unit == "values/s" else ""
        print(f"  {r['name']:<28} {_fmt(r['median'], unit)} {per:<8} {spread:<24} {verdict}")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result["scores"].items() if v is not None)
    print(f"  scores (N(0.1, 1.1) vs N(0, 1), 10 quantile bins): {scores}")
    print(f"  buckets per minute summary: {result['buckets_per_minute_summary']:.0f}")
    return 0 if result["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
