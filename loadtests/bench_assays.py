"""Drift-assay numerics: how fast values are summarised and an assay is scored, on one core.

    python loadtests/bench_assays.py [--rounds 5] [--json]

Measured in interleaved rounds (every figure once per round, in turn), so drift in the
machine's speed hits all of them alike; the report gives the median and [min-max] over rounds.

- summarise: ``manager.assays.summarise`` on float32 standard normals, 1,000,000 x 1 and
  100,000 x 10 (every column has far more than MAX_EXACT distinct values, so this is the
  bucket-sketch path, the slow one). Target: >= 1,000,000 values/s.
- summariser: captured calls as the gateway's spool holds them (rollout.capture.Record), decoded
  (requests and answers) and summarised per window as the manager's summariser does, minus
  the SQL write: HTTP binary FP32 [64,16], gRPC raw FP32 [64,16], HTTP JSON FP32 [1,4]. Values
  count inputs and outputs. Target: >= 1,000,000 values/s for each; small JSON calls are
  bound by the cost of each call (their calls/s is printed too): calls that differ only in
  their numbers are checked alike as text and their numbers read in one C call per tensor.
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
from functools import partial
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


def captured_calls(rng: np.random.Generator, kind: str, calls: int) -> list[Any]:
    """Spool records of `calls` identity-model calls (answers echo the inputs)."""
    from rollout.capture import GRPC, HTTP, Record

    records = []
    rows, width = (1, 4) if kind == "http-json" else (64, 16)
    for i in range(calls):
        x = rng.standard_normal((rows, width), dtype=np.float32)
        ts = 1.8e9 + i * 0.001
        if kind == "http-json":
            tensor = {"name": "x", "shape": [rows, width], "datatype": "FP32",
                      "data": x.ravel().tolist()}  # fmt: skip
            request = json.dumps({"inputs": [tensor]}).encode()
            answer = json.dumps({"outputs": [{**tensor, "name": "y"}]}).encode()
            records.append(Record(HTTP, ts, "default/p", "p/1", request, -1, answer, -1))
        elif kind == "http-binary":
            req, ans = (
                json.dumps({side: [{"name": name, "shape": [rows, width], "datatype": "FP32",
                            "parameters": {"binary_data_size": x.nbytes}}]}).encode()
                for side, name in (("inputs", "x"), ("outputs", "y"))
            )  # fmt: skip
            records.append(Record(HTTP, ts, "default/p", "p/1", req + x.tobytes(), len(req),
                                  ans + x.tobytes(), len(ans)))  # fmt: skip
        else:
            from tritonclient.grpc import service_pb2 as pb

            request = pb.ModelInferRequest(model_name="p")
            request.inputs.add(name="x", datatype="FP32", shape=[rows, width])
            request.raw_input_contents.append(x.tobytes())
            answer = pb.ModelInferResponse(model_name="p")
            answer.outputs.add(name="y", datatype="FP32", shape=[rows, width])
            answer.raw_output_contents.append(x.tobytes())
            records.append(Record(GRPC, ts, "default/p", "p/1", request.SerializeToString(), -1,
                                  answer.SerializeToString(), -1))  # fmt: skip
    return records


def summarise_calls(records: list[Any]) -> int:
    """The summariser's work on `records` (decode, group, summarise), without the SQL."""
    from manager.services.capture import PassResult, collect, summaries_of

    result = PassResult()
    for arrays in collect(records, 60, result).values():
        summaries_of(arrays)
    return result.values


CALL_KINDS = {"http-binary": 2000, "grpc": 2000, "http-json": 10000}


def run(rounds: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tall = rng.standard_normal((1_000_000, 1), dtype=np.float32)
    wide = rng.standard_normal((100_000, 10), dtype=np.float32)
    baseline = summarise(rng.standard_normal(1_000_000, dtype=np.float32))[0]
    captured = (rng.standard_normal(1_000_000, dtype=np.float32) * 1.1 + 0.1).astype(np.float32)
    chunks = np.array_split(captured, MINUTES)
    minutes = [summarise(chunk)[0] for chunk in chunks]
    summarise(tall[:1000])  # warm-up: first-call costs are not what is measured
    calls = {kind: captured_calls(rng, kind, n) for kind, n in CALL_KINDS.items()}
    for records in calls.values():
        summarise_calls(records[:10])

    samples: dict[str, list[float]] = {
        "summarise 1,000,000 x 1": [],
        "summarise 100,000 x 10": [],
        **{f"summariser {kind}": [] for kind in CALL_KINDS},
        "assay run": [],
        "assay run with summarising": [],
    }
    calls_per_s: dict[str, list[float]] = {kind: [] for kind in CALL_KINDS}
    scores: dict[str, float | None] = {}
    for _ in range(rounds):
        seconds, _ = timed(lambda: summarise(tall))
        samples["summarise 1,000,000 x 1"].append(tall.size / seconds)
        seconds, _ = timed(lambda: summarise(wide))
        samples["summarise 100,000 x 10"].append(wide.size / seconds)
        for kind, records in calls.items():
            seconds, values = timed(partial(summarise_calls, records))
            samples[f"summariser {kind}"].append(values / seconds)
            calls_per_s[kind].append(len(records) / seconds)
        seconds, scores = timed(lambda: assay_run(baseline, minutes))
        samples["assay run"].append(seconds)
        seconds, _ = timed(lambda: assay_run(baseline, [summarise(chunk)[0] for chunk in chunks]))
        samples["assay run with summarising"].append(seconds)

    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        if name.startswith(("summarise ", "summariser ")):
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
        "summariser_calls_per_s": {k: statistics.median(v) for k, v in calls_per_s.items()},
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
        return 0
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
    per_call = ", ".join(f"{k} {v:,.0f}" for k, v in result["summariser_calls_per_s"].items())
    print(f"  summariser calls/s: {per_call}")
    return 0  # a report (targets met or not are printed), so `make bench` goes on


if __name__ == "__main__":
    sys.exit(main())
