"""The running figures behind a shadow route's output-diff report, and their merge.

rollout.shadow_diff folds each compared pair into these per (route, mirror variant): counters
for the comparisons (`PairStats`, one `OutputStats` per output) and every pair's latencies
(`Latencies`, a window of recent ones for the p99). A gateway with several worker processes
(rollout.gateway_workers) has one collector per process: `snapshot` turns a collector's
figures into plain JSON, and `merge_reports` adds the snapshots of every process up before a
report is made, so that the leader answers GET /shadow with the figures of all of them: sums
and maxima are exact, and the p99 is taken over the union of the processes' windows. One
process's report is the same merge of its one snapshot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

LATENCY_WINDOW = 10_000  # pairs per (route, mirror) and process kept for the latency p99


@dataclass(slots=True)
class Comparison:
    """One output of one pair: what the worker folds into the running sums."""

    outcome: str = "compared"  # or "mismatched_shape" | "missing": counted apart, not in rates
    agree: bool = False
    elements: int = 0  # numeric elements behind sum_diff / max_diff
    sum_diff: float = 0.0
    max_diff: float | None = None
    rows: int = 0  # argmax rows compared (floating outputs with last dim >= 2)
    rows_agree: int = 0


@dataclass(slots=True)
class OutputStats:
    compared: int = 0
    agreeing: int = 0
    elements: int = 0
    sum_diff: float = 0.0
    max_diff: float | None = None
    rows: int = 0
    rows_agree: int = 0
    mismatched_shape: int = 0
    missing: int = 0

    def add(self, result: Comparison) -> None:
        if result.outcome != "compared":
            setattr(self, result.outcome, getattr(self, result.outcome) + 1)
            return
        self.compared += 1
        self.agreeing += result.agree
        self.elements += result.elements
        self.sum_diff += result.sum_diff
        if result.max_diff is not None:
            self.max_diff = max(self.max_diff or 0.0, result.max_diff)
        self.rows += result.rows
        self.rows_agree += result.rows_agree

    def merge(self, other: OutputStats) -> None:
        for name in ("compared", "agreeing", "elements", "sum_diff", "rows", "rows_agree",
                     "mismatched_shape", "missing"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.max_diff is not None:
            self.max_diff = max(self.max_diff or 0.0, other.max_diff)

    def report(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "agreement": self.agreeing / self.compared if self.compared else None,
            "max_abs_diff": self.max_diff,
            "mean_abs_diff": self.sum_diff / self.elements if self.elements else None,
            "class_agreement": self.rows_agree / self.rows if self.rows else None,
            "mismatched_shape": self.mismatched_shape,
            "missing": self.missing,
        }


def _ms(values: list[float] | deque[float], mean_of: float, count: int) -> tuple[Any, Any]:
    if not count or not values:
        return None, None
    return mean_of / count * 1000.0, float(np.percentile(np.fromiter(values, float), 99)) * 1000.0


def _window() -> deque[float]:
    return deque(maxlen=LATENCY_WINDOW)


@dataclass(slots=True)
class Latencies:
    """Every pair's latencies of one (route, mirror variant): recorded at submit, cheaply."""

    pairs: int = 0
    primary_sum: float = 0.0
    candidate_sum: float = 0.0
    primary_recent: deque[float] = field(default_factory=_window)
    candidate_recent: deque[float] = field(default_factory=_window)
    # token bucket of the comparisons (see DiffCollector.max_rate)
    tokens: float = 0.0
    refilled: float = 0.0
    not_sampled: int = 0

    def copy(self) -> Latencies:
        """A snapshot (C-level deque copies: cheap enough under the submit lock)."""
        return Latencies(
            self.pairs,
            self.primary_sum,
            self.candidate_sum,
            deque(self.primary_recent, maxlen=LATENCY_WINDOW),
            deque(self.candidate_recent, maxlen=LATENCY_WINDOW),
            not_sampled=self.not_sampled,
        )

    def add(self, primary_s: float, candidate_s: float) -> None:
        self.pairs += 1
        self.primary_sum += primary_s
        self.candidate_sum += candidate_s
        self.primary_recent.append(primary_s)
        self.candidate_recent.append(candidate_s)

    def report(self) -> dict[str, Any]:
        primary_mean, primary_p99 = _ms(self.primary_recent, self.primary_sum, self.pairs)
        candidate_mean, candidate_p99 = _ms(self.candidate_recent, self.candidate_sum, self.pairs)
        ratio = candidate_mean / primary_mean if primary_mean else None
        return {
            "primary_mean_ms": primary_mean,
            "candidate_mean_ms": candidate_mean,
            "primary_p99_ms": primary_p99,
            "candidate_p99_ms": candidate_p99,
            "ratio_mean": ratio,
        }


@dataclass(slots=True)
class PairStats:
    """Running comparisons of one (route, mirror variant), from the sampled pairs."""

    sampled: int = 0
    decode_errors: int = 0
    tolerance: float | None = None
    outputs: dict[str, OutputStats] = field(default_factory=dict)

    def add(self, tolerance: float, results: dict[str, Comparison] | None) -> None:
        self.sampled += 1
        self.tolerance = tolerance
        if results is None:
            self.decode_errors += 1
            return
        for name, result in results.items():
            output = self.outputs.get(name)
            if output is None:
                output = self.outputs[name] = OutputStats()
            output.add(result)

    def report(self, dropped: int, latencies: Latencies) -> dict[str, Any]:
        return {
            "pairs": latencies.pairs,
            "sampled": self.sampled,
            "not_sampled": latencies.not_sampled,
            "decode_errors": self.decode_errors,
            "dropped": dropped,
            "tolerance": self.tolerance,
            "outputs": {name: stats.report() for name, stats in self.outputs.items()},
            "latency": latencies.report(),
        }


# -- snapshots and their merge ---------------------------------------------------------------

Key = tuple[str, str]  # (route, mirror variant)


def snapshot(
    stats: dict[Key, PairStats], latencies: dict[Key, Latencies], dropped: dict[Key, int]
) -> list[dict[str, Any]]:
    """One process's figures as plain JSON values (one entry per route and mirror)."""
    out = []
    for route, mirror in sorted(set(stats) | set(latencies) | set(dropped)):
        key = (route, mirror)
        pair = stats.get(key) or PairStats()
        seen = latencies.get(key) or Latencies()
        out.append(
            {
                "route": route,
                "mirror": mirror,
                "dropped": dropped.get(key, 0),
                "sampled": pair.sampled,
                "decode_errors": pair.decode_errors,
                "tolerance": pair.tolerance,
                "outputs": {
                    name: {f.name: getattr(o, f.name) for f in fields(OutputStats)}
                    for name, o in pair.outputs.items()
                },
                "pairs": seen.pairs,
                "primary_sum": seen.primary_sum,
                "candidate_sum": seen.candidate_sum,
                "primary_recent": list(seen.primary_recent),
                "candidate_recent": list(seen.candidate_recent),
                "not_sampled": seen.not_sampled,
            }
        )
    return out


def merge_reports(snapshots: list[list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """route -> mirror variant -> report, of the figures of every snapshot added up."""
    merged: dict[Key, tuple[PairStats, Latencies, list[int]]] = {}
    for entries in snapshots:
        for entry in entries:
            key = (entry["route"], entry["mirror"])
            if key not in merged:
                merged[key] = (PairStats(), Latencies(primary_recent=deque(),
                                                      candidate_recent=deque()), [0])  # fmt: skip
            pair, seen, dropped = merged[key]
            dropped[0] += entry["dropped"]
            pair.sampled += entry["sampled"]
            pair.decode_errors += entry["decode_errors"]
            if entry["tolerance"] is not None:
                pair.tolerance = entry["tolerance"]
            for name, values in entry["outputs"].items():
                pair.outputs.setdefault(name, OutputStats()).merge(OutputStats(**values))
            seen.pairs += entry["pairs"]
            seen.primary_sum += entry["primary_sum"]
            seen.candidate_sum += entry["candidate_sum"]
            seen.primary_recent.extend(entry["primary_recent"])
            seen.candidate_recent.extend(entry["candidate_recent"])
            seen.not_sampled += entry["not_sampled"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (route, mirror), (pair, seen, dropped) in sorted(merged.items()):
        out.setdefault(route, {})[mirror] = pair.report(dropped[0], seen)
    return out
