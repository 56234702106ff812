"""Output-diff reports for shadow routes, computed off the event loop.

The gateway mirrors a request to a candidate variant and, when both answers succeeded, hands
the two raw bodies here with `DiffCollector.submit`. That call only appends to a bounded deque
under a lock (O(1), never blocks on the worker): decoding tensors and comparing them costs
milliseconds for large outputs, which the event loop must never pay. When the queue is full the
pair is dropped and counted, like a mirror past `max_queue`, so a slow diff can never build up
memory or back-pressure into the gateway.

A daemon worker thread decodes both answers (KServe v2 HTTP JSON + binary extension, or a
serialized gRPC ModelInferResponse) into numpy arrays and folds the comparison into running
sums per (route, mirror variant) and output name. Comparisons are sampled: at most `max_rate`
pairs a second per (route, mirror) are queued (a token bucket in `submit`), the others only
count for the latencies, which every pair feeds (a report says how many pairs were `sampled`
and `not_sampled`). Only latencies keep samples, in a window of the last `LATENCY_WINDOW`
pairs, for the p99; everything else is a counter, so memory stays bounded however long a
shadow runs.

Agreement, per pair and output: integer, bool and BYTES outputs must be equal element for
element; floating outputs must satisfy |a - b| <= tol + tol * |a| everywhere (a = primary; NaN
agrees only with NaN). `agreement` is agreeing pairs / compared pairs, where "compared" means
both answers had the output with the same shape; outputs missing from the candidate or with
another shape are counted apart (`missing`, `mismatched_shape`) and are not in the rate.
`class_agreement` is the share of rows (every index but the last axis) whose argmax over the
last axis agrees, for floating outputs whose last dimension is at least 2 — for a classifier
that is the share of predictions that would not change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rollout.tensors import DecodeError, decode_grpc, decode_http

logger = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # pairs per (route, mirror) kept for the latency p99
# Pairs compared per second and (route, mirror); the others only count for the latencies.
# Decoding and comparing costs ~120 µs of gateway CPU per small pair (measured at ~2,000
# req/s: a quarter of a core); 100 a second give 6,000 compared pairs a minute.
DEFAULT_MAX_RATE = 100.0


@dataclass(frozen=True, slots=True)
class RawResponse:
    """One successful inference answer as the gateway saw it on the wire.

    HTTP: the whole body and its Inference-Header-Content-Length (None for pure JSON);
    gRPC: the serialized ModelInferResponse (header_length unused).
    """

    protocol: str  # "http" | "grpc"
    body: bytes
    header_length: int | None = None


def decode(response: RawResponse) -> dict[str, np.ndarray]:
    """The outputs of one answer."""
    if response.protocol == "grpc":
        return decode_grpc(response.body)
    if response.protocol == "http":
        return decode_http(response.body, response.header_length)
    raise DecodeError(f"unknown protocol {response.protocol!r}")


@dataclass(slots=True)
class _Comparison:
    """One output of one pair: what the worker folds into the running sums."""

    outcome: str = "compared"  # or "mismatched_shape" | "missing": counted apart, not in rates
    agree: bool = False
    elements: int = 0  # numeric elements behind sum_diff / max_diff
    sum_diff: float = 0.0
    max_diff: float | None = None
    rows: int = 0  # argmax rows compared (floating outputs with last dim >= 2)
    rows_agree: int = 0


def compare(primary: np.ndarray, candidate: np.ndarray | None, tolerance: float) -> _Comparison:
    """Compare one output of a pair (candidate None: the candidate did not return it)."""
    if candidate is None:
        return _Comparison("missing")
    if primary.shape != candidate.shape:
        return _Comparison("mismatched_shape")
    if primary.dtype.kind == "O" or candidate.dtype.kind == "O":  # BYTES: equality only
        same = primary.dtype.kind == candidate.dtype.kind and bool(
            np.array_equal(primary, candidate)
        )
        return _Comparison(agree=same)
    a, b = primary.astype(np.float64), candidate.astype(np.float64)
    floating = primary.dtype.kind == "f" or candidate.dtype.kind == "f"
    with np.errstate(invalid="ignore", over="ignore"):
        equal = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.where(equal, 0.0, np.abs(a - b))
        if floating:
            agree = bool(np.all(equal | (diff <= tolerance + tolerance * np.abs(a))))
        else:  # exact, also for 64-bit integers that float64 cannot tell apart
            agree = bool(np.array_equal(primary, candidate))
    finite = diff[np.isfinite(diff)]  # an inf/NaN difference disagrees but is no figure
    result = _Comparison(agree=agree, elements=int(finite.size), sum_diff=float(finite.sum()))
    if finite.size:
        result.max_diff = float(finite.max())
    if floating and primary.ndim >= 1 and primary.shape[-1] >= 2 and primary.size:
        matches = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
        result.rows, result.rows_agree = int(matches.size), int(matches.sum())
    return result


@dataclass(slots=True)
class _OutputStats:
    compared: int = 0
    agreeing: int = 0
    elements: int = 0
    sum_diff: float = 0.0
    max_diff: float | None = None
    rows: int = 0
    rows_agree: int = 0
    mismatched_shape: int = 0
    missing: int = 0

    def add(self, result: _Comparison) -> None:
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
    if not count:
        return None, None
    return mean_of / count * 1000.0, float(np.percentile(np.fromiter(values, float), 99)) * 1000.0


@dataclass(slots=True)
class _Latencies:
    """Every pair's latencies of one (route, mirror variant): recorded at submit, cheaply."""

    pairs: int = 0
    primary_sum: float = 0.0
    candidate_sum: float = 0.0
    primary_recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    candidate_recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    # token bucket of the comparisons (see DiffCollector.max_rate)
    tokens: float = 0.0
    refilled: float = 0.0
    not_sampled: int = 0

    def copy(self) -> _Latencies:
        """A snapshot (C-level deque copies: cheap enough under the submit lock)."""
        return _Latencies(
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
class _PairStats:
    """Running comparisons of one (route, mirror variant), from the sampled pairs."""

    sampled: int = 0
    decode_errors: int = 0
    tolerance: float | None = None
    outputs: dict[str, _OutputStats] = field(default_factory=dict)

    def add(self, pair: _Pair, results: dict[str, _Comparison] | None) -> None:
        self.sampled += 1
        self.tolerance = pair.tolerance
        if results is None:
            self.decode_errors += 1
            return
        for name, result in results.items():
            output = self.outputs.get(name)
            if output is None:
                output = self.outputs[name] = _OutputStats()
            output.add(result)

    def report(self, dropped: int, latencies: _Latencies) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class _Pair:
    route: str
    mirror: str
    primary: RawResponse
    candidate: RawResponse
    primary_s: float
    candidate_s: float
    tolerance: float
    epoch: tuple[int, int]  # (global resets, resets of this route) when submitted


class DiffCollector:
    """Bounded hand-off from the event loop to one worker thread that decodes and aggregates.

    Locks: `_lock` guards the queue, the drop counters and the reset epochs (held for O(1)
    work only, so `submit` never waits on decoding); `_stats_lock` guards the aggregates.
    Whenever both are held, `_stats_lock` is taken first.
    """

    def __init__(self, max_pending: int = 1024, max_rate: float = DEFAULT_MAX_RATE) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if not max_rate > 0:
            raise ValueError(f"max_rate must be > 0 pairs per second, got {max_rate}")
        self.max_pending = max_pending
        self.max_rate = float(max_rate)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits for pairs
        self._idle = threading.Condition(self._lock)  # drain() waits for pending == 0
        self._queue: deque[_Pair] = deque()
        self._pending = 0  # queued + being processed
        self._dropped: dict[tuple[str, str], int] = {}
        self._epoch_all = 0
        self._epochs: dict[str, int] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._stats: dict[tuple[str, str], _PairStats] = {}
        self._latencies: dict[tuple[str, str], _Latencies] = {}  # under _lock

    # -- event-loop side ------------------------------------------------------------------

    def submit(
        self,
        route: str,
        mirror: str,
        primary: RawResponse,
        candidate: RawResponse,
        primary_s: float,
        candidate_s: float,
        tolerance: float,
    ) -> bool:
        """Record the pair's latencies and, within the rate limit, queue it for comparison;
        False when it was not queued (over the rate: counted as not sampled; queue full:
        counted as dropped)."""
        key = (route, mirror)
        now = time.monotonic()
        with self._lock:
            latencies = self._latencies.get(key)
            if latencies is None:
                latencies = self._latencies[key] = _Latencies(tokens=self.max_rate, refilled=now)
            latencies.add(primary_s, candidate_s)
            rate = self.max_rate
            tokens = min(rate, latencies.tokens + (now - latencies.refilled) * rate)
            latencies.refilled = now
            if tokens < 1.0:
                latencies.tokens = tokens
                latencies.not_sampled += 1
                return False
            latencies.tokens = tokens - 1.0
            if len(self._queue) >= self.max_pending:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            epoch = (self._epoch_all, self._epochs.get(route, 0))
            pair = _Pair(
                route, mirror, primary, candidate, primary_s, candidate_s, tolerance, epoch
            )
            self._queue.append(pair)
            self._pending += 1
            self._work.notify()
            return True

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="lastmile-shadow-diff", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker after the pair in hand; pairs still queued are discarded."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            if thread is None or not thread.is_alive():
                self._thread = None
                self._pending -= len(self._queue)
                self._queue.clear()
                if self._pending <= 0:
                    self._pending = 0
                    self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted pair is folded into the reports; False on timeout.

        For tests and orderly shutdowns: without a running worker it only returns True when
        nothing is pending.
        """
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        """route -> mirror variant -> report (plain JSON values, no NaN)."""
        with self._stats_lock:
            with self._lock:
                dropped = dict(self._dropped)
                latencies = {key: value.copy() for key, value in self._latencies.items()}
            keys = sorted(set(self._stats) | set(dropped) | set(latencies))
            out: dict[str, dict[str, dict[str, Any]]] = {}
            for route, mirror in keys:
                key = (route, mirror)
                stats = self._stats.get(key) or _PairStats()
                seen = latencies.get(key) or _Latencies()
                out.setdefault(route, {})[mirror] = stats.report(dropped.get(key, 0), seen)
            return out

    def reset(self, route: str | None = None) -> None:
        """Forget the figures of one route (every mirror), or of all routes.

        Pairs submitted before the reset but not yet processed are ignored when they come up.
        """
        with self._stats_lock:
            with self._lock:
                if route is None:
                    self._epoch_all += 1
                    self._dropped.clear()
                    self._latencies.clear()
                else:
                    self._epochs[route] = self._epochs.get(route, 0) + 1
                    for key in [k for k in self._dropped if k[0] == route]:
                        del self._dropped[key]
                    for key in [k for k in self._latencies if k[0] == route]:
                        del self._latencies[key]
            if route is None:
                self._stats.clear()
            else:
                for key in [k for k in self._stats if k[0] == route]:
                    del self._stats[key]

    # -- worker side ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                self._work.wait_for(lambda: bool(self._queue) or self._stopping)
                if self._stopping:
                    return
                pair = self._queue.popleft()
            try:
                self._process(pair)
            except Exception:  # the worker must outlive any one bad pair
                logger.exception("shadow diff of route %s / %s failed", pair.route, pair.mirror)
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def _process(self, pair: _Pair) -> None:
        results: dict[str, _Comparison] | None = None
        try:
            primary, candidate = decode(pair.primary), decode(pair.candidate)
        except DecodeError as exc:
            logger.debug("shadow diff of %s / %s: %s", pair.route, pair.mirror, exc)
        else:
            results = {
                name: compare(array, candidate.get(name), pair.tolerance)
                for name, array in primary.items()
            }
        with self._stats_lock:
            with self._lock:
                current = (self._epoch_all, self._epochs.get(pair.route, 0))
            if pair.epoch == current:  # else: submitted before a reset
                key = (pair.route, pair.mirror)
                stats = self._stats.get(key)
                if stats is None:
                    stats = self._stats[key] = _PairStats()
                stats.add(pair, results)
