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
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout.shadow_report import Comparison, Latencies, PairStats, merge_reports, snapshot
from rollout.tensors import DecodeError, decode_grpc, decode_http

logger = logging.getLogger(__name__)

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


def compare(primary: np.ndarray, candidate: np.ndarray | None, tolerance: float) -> Comparison:
    """Compare one output of a pair (candidate None: the candidate did not return it)."""
    if candidate is None:
        return Comparison("missing")
    if primary.shape != candidate.shape:
        return Comparison("mismatched_shape")
    if primary.dtype.kind == "O" or candidate.dtype.kind == "O":  # BYTES: equality only
        same = primary.dtype.kind == candidate.dtype.kind and bool(
            np.array_equal(primary, candidate)
        )
        return Comparison(agree=same)
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
    result = Comparison(agree=agree, elements=int(finite.size), sum_diff=float(finite.sum()))
    if finite.size:
        result.max_diff = float(finite.max())
    if floating and primary.ndim >= 1 and primary.shape[-1] >= 2 and primary.size:
        matches = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
        result.rows, result.rows_agree = int(matches.size), int(matches.sum())
    return result


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
        self._stats: dict[tuple[str, str], PairStats] = {}
        self._latencies: dict[tuple[str, str], Latencies] = {}  # under _lock

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
                latencies = self._latencies[key] = Latencies(tokens=self.max_rate, refilled=now)
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

    def snapshot(self) -> list[dict[str, Any]]:
        """This collector's figures as plain JSON (rollout.shadow_report.snapshot)."""
        with self._stats_lock:
            with self._lock:
                dropped = dict(self._dropped)
                latencies = {key: value.copy() for key, value in self._latencies.items()}
            return snapshot(self._stats, latencies, dropped)

    def reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        """route -> mirror variant -> report (plain JSON values, no NaN)."""
        return merge_reports([self.snapshot()])

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
        results: dict[str, Comparison] | None = None
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
                    stats = self._stats[key] = PairStats()
                stats.add(pair.tolerance, results)
