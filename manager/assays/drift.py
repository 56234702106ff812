"""Drift metrics over two count vectors on the same bins: baseline ``b`` and window ``w``.

Every metric works on proportions ``p = b / sum(b)`` and ``q = w / sum(w)``, so windows of
different traffic volumes compare fairly. Each is finite for any non-negative counts with
non-zero totals (empty bins included), because an assay's score is stored, charted and
compared with thresholds: a NaN or an infinity there would silently disable an alert. A side
with no data at all has no distribution; ``score`` answers None for it ("no data"), the
individual functions refuse it.

Which to use: PSI is the industry habit for tabular features (rule of thumb: < 0.1 stable,
0.1-0.25 moderate, > 0.25 large shift); KS is sensitive to a shift of location on ordered
bins; ``sum_diff`` (total variation) and JS are bounded in [0, 1] and symmetric, which makes
thresholds portable between features; ``max_diff`` points at the single worst bin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from manager.errors import InvalidInput

EPS = 1e-4  # floor of each proportion in PSI
METRICS: tuple[str, ...] = ("psi", "ks", "sum_diff", "max_diff", "js")
# A window with fewer values than this is not scored (an assay's default ``min_values``): the
# scores of a handful of values are large by chance. Values drawn from the baseline itself,
# 5 equal bins: PSI >= 0.25 (a usual alert) in 37 % of windows of 20 values, 0.5 % of 68,
# none of 2,000 of 100.
DEFAULT_MIN_VALUES = 100

Counts = Sequence[float] | np.ndarray


def _check(b: Counts, w: Counts) -> tuple[np.ndarray, np.ndarray]:
    bb = np.asarray(b, dtype=np.float64)
    ww = np.asarray(w, dtype=np.float64)
    if bb.ndim != 1 or bb.shape != ww.shape or bb.size == 0:
        raise InvalidInput(
            f"count vectors must be 1-D of the same non-zero length, got {bb.shape} and {ww.shape}",
            hint="count the baseline and the window with the same bin edges",
        )
    if not (np.all(np.isfinite(bb)) and np.all(np.isfinite(ww))):
        raise InvalidInput("counts must be finite", hint="counts come from bin_counts")
    if np.any(bb < 0) or np.any(ww < 0):
        raise InvalidInput("counts must not be negative", hint="counts come from bin_counts")
    return bb, ww


def proportions(b: Counts, w: Counts) -> tuple[np.ndarray, np.ndarray]:
    """``p = b / sum(b)``, ``q = w / sum(w)``; InvalidInput when a side has a zero total."""
    bb, ww = _check(b, w)
    tb, tw = bb.sum(), ww.sum()
    if tb == 0 or tw == 0:
        raise InvalidInput(
            "a side has no data (zero total count)",
            hint="use score(), which answers None for no data",
        )
    return bb / tb, ww / tw


def psi(b: Counts, w: Counts) -> float:
    """Population stability index.

    PSI = sum((q' - p') * ln(q' / p')), where p' = max(p, EPS) and q' = max(q, EPS)
    element-wise, EPS = 1e-4, and p', q' are NOT renormalised after flooring. The floor keeps
    PSI finite when a bin is empty on one side; each term is >= 0.
    """
    p, q = proportions(b, w)
    pf, qf = np.maximum(p, EPS), np.maximum(q, EPS)
    return float(np.sum((qf - pf) * np.log(qf / pf)))


def ks(b: Counts, w: Counts) -> float:
    """Kolmogorov-Smirnov distance on the bins: KS = max over bins of |cumsum(p) - cumsum(q)|.

    Equals the two-sample KS statistic of the raw samples when every distinct value has its own
    bin; coarser bins give a lower bound of it. In [0, 1].
    """
    p, q = proportions(b, w)
    return float(min(1.0, np.max(np.abs(np.cumsum(p) - np.cumsum(q)))))


def sum_diff(b: Counts, w: Counts) -> float:
    """Total variation distance: sum_diff = 0.5 * sum |p - q|, in [0, 1]."""
    p, q = proportions(b, w)
    return float(min(1.0, 0.5 * np.sum(np.abs(p - q))))


def max_diff(b: Counts, w: Counts) -> float:
    """Largest change of one bin's share: max_diff = max |p - q|, in [0, 1]."""
    p, q = proportions(b, w)
    return float(np.max(np.abs(p - q)))


def _kl2(a: np.ndarray, m: np.ndarray) -> float:
    pos = a > 0  # 0 * log 0 = 0; m > 0 wherever a > 0
    return float(np.sum(a[pos] * np.log2(a[pos] / m[pos])))


def js(b: Counts, w: Counts) -> float:
    """Jensen-Shannon divergence with base-2 logarithms, in [0, 1].

    JS = 0.5 * KL(p || m) + 0.5 * KL(q || m), m = (p + q) / 2, KL(a || m) =
    sum over bins with a > 0 of a * log2(a / m) (0 * log 0 = 0, no smoothing). It is the square
    of scipy's ``jensenshannon(p, q, base=2)`` (a distance). Rounding is clipped into [0, 1].
    """
    p, q = proportions(b, w)
    m = 0.5 * (p + q)
    return float(min(1.0, max(0.0, 0.5 * _kl2(p, m) + 0.5 * _kl2(q, m))))


_FUNCTIONS: dict[str, Callable[[Counts, Counts], float]] = {
    "psi": psi,
    "ks": ks,
    "sum_diff": sum_diff,
    "max_diff": max_diff,
    "js": js,
}


def score(metric: str, b: Counts, w: Counts) -> float | None:
    """The metric named ``metric``, or None ("no data") when either side has a zero total."""
    fn = _FUNCTIONS.get(metric)
    if fn is None:
        raise InvalidInput(f"unknown drift metric {metric!r}", hint=f"use one of {METRICS}")
    bb, ww = _check(b, w)
    if bb.sum() == 0 or ww.sum() == 0:
        return None
    return fn(bb, ww)
