"""Bins for drift assays: how to choose edges, and which bin a value belongs to.

Drift metrics compare two histograms over the *same* bins, so the edges are chosen once from
the baseline (quantiles, equal widths, or given by the user) and every window is counted with
them. Edges are always finite and strictly increasing, whatever the baseline looks like (ties,
a constant feature, infinities), so every later metric stays finite.

Bin semantics, for edges ``e_0 < e_1 < ... < e_k`` (``k`` interior bins):

* interior bin ``i`` (``0 <= i < k``) is ``[e_i, e_{i+1})``, except the last one, which is
  closed: ``[e_{k-1}, e_k]``, so the baseline's maximum (the last quantile or equal-width edge)
  is counted inside the range it defined;
* with ``outliers=True`` there are ``k + 2`` bins: ``(-inf, e_0)`` first, the interior bins,
  then ``(e_k, +inf)`` last (``-inf`` and ``+inf`` themselves land there);
* with ``outliers=False`` there are ``k`` bins and values outside ``[e_0, e_k]`` are clipped
  into the first or last interior bin;
* NaN is missing data and is never counted.

Quantile edges are the baseline's quantiles at ``i / bins`` (inverted-CDF definition, see
``Summary.quantiles``), de-duplicated: ties collapse bins, so a feature with few distinct
values gets fewer bins rather than empty zero-width ones. Infinite quantiles (from ``+-inf``
values) are replaced by the smallest / largest finite value, so infinities fall in the outlier
bins. When fewer than two distinct finite edges
remain (a constant feature), the edges are ``[c, c + 1e-9 * max(1, |c|)]``: one bin holding
every value equal to ``c`` (``[c - d, c]`` in the unlikely case ``c + d`` overflows; ``c = 0``
when the baseline has no finite value at all). Equal-width edges split ``[min, max]`` of the
finite baseline values the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from manager.errors import InvalidInput

if TYPE_CHECKING:
    from manager.assays.sketch import Summary

Mode = Literal["quantile", "equal_width", "explicit"]
MODES: tuple[str, ...] = ("quantile", "equal_width", "explicit")
MAX_BINS = 1000
CONSTANT_WIDTH = 1e-9  # relative width of the single bin of a constant feature


@dataclass(frozen=True)
class Binning:
    """How an assay bins a feature. ``bins`` is ignored in ``explicit`` mode (the edges say)."""

    mode: Mode
    bins: int = 5
    edges: tuple[float, ...] | None = None
    outliers: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(
                f"unknown binning mode {self.mode!r}", hint=f"use one of {', '.join(MODES)}"
            )
        if not isinstance(self.outliers, bool):
            raise InvalidInput(
                f"binning 'outliers' must be true or false, not {self.outliers!r}",
                hint="true adds a bin below the first edge and one above the last",
            )
        if self.mode == "explicit":
            if self.edges is None:
                raise InvalidInput(
                    "explicit binning needs edges",
                    hint="give at least 2 strictly increasing finite numbers, e.g. [0, 1, 10]",
                )
            object.__setattr__(self, "edges", tuple(check_edges(self.edges).tolist()))
            return
        if self.edges is not None:
            raise InvalidInput(
                f"{self.mode} binning computes its edges from the baseline; edges were given",
                hint="drop 'edges', or use mode 'explicit' to fix the edges yourself",
            )
        if isinstance(self.bins, bool) or not isinstance(self.bins, int | np.integer):
            raise InvalidInput(
                f"'bins' must be an integer, not {self.bins!r}",
                hint=f"use a whole number from 1 to {MAX_BINS}",
            )
        if not 1 <= self.bins <= MAX_BINS:
            raise InvalidInput(
                f"'bins' is {self.bins}, out of range",
                hint=f"use a whole number from 1 to {MAX_BINS} (5 to 20 is usual for PSI)",
            )
        object.__setattr__(self, "bins", int(self.bins))


def check_edges(edges: object) -> np.ndarray:
    """The edges as a float64 array, or InvalidInput saying what is wrong with them."""
    try:
        arr = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"bin edges must be numbers, got {edges!r}",
            hint="give a list of at least 2 strictly increasing finite numbers",
        ) from exc
    if arr.ndim != 1 or arr.size < 2:
        raise InvalidInput(
            f"bin edges need at least 2 numbers in a flat list, got {edges!r}",
            hint="e.g. [0, 1, 10] makes the bins [0, 1) and [1, 10]",
        )
    if arr.size - 1 > MAX_BINS:
        raise InvalidInput(
            f"{arr.size - 1} bins is too many", hint=f"use at most {MAX_BINS + 1} edges"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(
            "bin edges must be finite",
            hint="drop inf/NaN: values beyond the outer edges go to the outlier bins",
        )
    if not np.all(np.diff(arr) > 0):
        raise InvalidInput(
            f"bin edges must be strictly increasing, got {arr.tolist()}",
            hint="sort them and remove duplicates",
        )
    return arr


def n_bins(edges: np.ndarray, outliers: bool) -> int:
    """Length of a count vector for these edges (interior bins, plus 2 with outliers)."""
    return len(edges) - 1 + (2 if outliers else 0)


def bin_index(values: np.ndarray, edges: np.ndarray, outliers: bool) -> np.ndarray:
    """Bin of each non-NaN value under the semantics of the module docstring.

    One ``searchsorted`` (side right) counts the edges <= v: 0 below ``e_0``, ``i + 1`` in
    ``[e_i, e_{i+1})``, ``k + 1`` at or above ``e_k``; a value equal to ``e_k`` is moved back
    into the closed last interior bin. Shared by raw values and summaries so both agree exactly.
    """
    k = len(edges) - 1
    idx = np.searchsorted(edges, values, side="right")
    idx[values == edges[-1]] = k
    if outliers:
        return idx
    return np.clip(idx - 1, 0, k - 1)


def bin_counts_values(values: np.ndarray, edges: object, outliers: bool) -> np.ndarray:
    """Counts per bin (int64) of raw values; NaN values are not counted."""
    arr = check_edges(edges)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    return np.bincount(bin_index(v, arr, outliers), minlength=n_bins(arr, outliers)).astype(
        np.int64
    )


def single_bin_edges(c: float) -> np.ndarray:
    """Edges of one bin that holds exactly the value ``c`` (a constant feature)."""
    d = CONSTANT_WIDTH * max(1.0, abs(c))
    hi = c + d
    if not math.isfinite(hi):
        return np.array([c - d, c])
    return np.array([c, hi])


def make_edges(baseline: Summary, binning: Binning) -> np.ndarray:
    """Finite, strictly increasing edges for ``binning`` computed from the baseline."""
    if binning.mode == "explicit":
        assert binning.edges is not None  # checked by Binning
        return np.array(binning.edges, dtype=np.float64)
    if baseline.count == 0:
        raise InvalidInput(
            "the baseline has no values to compute bin edges from",
            hint="choose a baseline window with traffic, or use explicit edges",
        )
    bounds = baseline.finite_bounds()
    if bounds is None:  # only +-inf in the baseline
        return single_bin_edges(0.0)
    lo, hi = bounds
    if binning.mode == "quantile":
        # infinite quantiles (from +-inf values) become the finite extremes
        edges = np.clip(baseline.quantiles(np.arange(binning.bins + 1) / binning.bins), lo, hi)
    else:
        if lo == hi:
            return single_bin_edges(lo)
        t = np.arange(binning.bins + 1) / binning.bins
        span = hi - lo
        # lo * (1 - t) + hi * t cannot overflow when hi - lo does (e.g. -1e308 .. 1e308)
        edges = lo + span * t if math.isfinite(span) else lo * (1.0 - t) + hi * t
        edges[0], edges[-1] = lo, hi
    edges = np.unique(edges)
    return edges if edges.size >= 2 else single_bin_edges(float(edges[0]))
