"""Mergeable per-element summaries of a stream of numbers: the state drift assays keep.

Why this shape: an assay compares a baseline with many windows over weeks of traffic. Keeping
raw values costs too much, and binning has to be re-done whenever edges change. A summary is
small (a few hundred to a few thousand integers), merges exactly (minute summaries roll up
into any assay window), and can be re-binned for edges chosen later.

Two regimes per summary:

* exact: while an element has at most ``MAX_EXACT`` distinct values their exact counts are
  kept, so categorical and integer features (common in tabular drift) bin exactly, even with
  edges placed on the values themselves;
* buckets: beyond that, a DDSketch-style logarithmic sketch (Masson et al., VLDB 2019) with
  relative accuracy ``ALPHA``: positive ``x`` counts in key ``ceil(log_gamma(x))`` with
  ``gamma = (1 + ALPHA) / (1 - ALPHA)``, negatives in a mirrored map keyed by ``|x|``,
  ``|x| < ZERO_LIMIT`` in a zero bucket and ``+-inf`` in key ``INF_KEY``. The representative
  ``2 * gamma**k / (gamma + 1)`` (with the sign) is within ``ALPHA`` (relative) of every value
  of bucket ``k``, so quantiles are within ``ALPHA``, and a bin count can only be off by values
  lying within ``ALPHA`` of an edge, far below what drift metrics resolve. When an exact map
  overflows (in ``summarise`` or a merge), all its values are converted into buckets.

NaN is *missing* (counted, never distributed); ``+-inf`` is a value (it lands in the outer
bins). Representatives are clamped to ``[min, max]``: every value lies there, so clamping only
removes error, and the baseline's extremes stay inside the edges they defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from manager.assays.binning import bin_index, check_edges, n_bins
from manager.errors import InvalidInput

MAX_EXACT = 256
ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
ZERO_LIMIT = 1e-12
INF_KEY = 2**31 - 1  # bucket key of +-inf; finite keys stay within about +-71,000
FORMAT = 1  # version of the JSON form


def _classify(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class (0 negative, 1 zero, 2 positive) and bucket key of each non-NaN value.

    The single place keys are computed, for ``summarise`` and for converting exact maps, so a
    merge of parts equals the summary of the whole bucket for bucket.
    """
    mag = np.abs(values)
    zero = mag < ZERO_LIMIT
    cls = np.where(zero, 1, np.where(values > 0, 2, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = np.ceil(np.log(mag) / LN_GAMMA)
    keys[zero] = 0.0
    keys[np.isinf(mag)] = INF_KEY
    return cls.astype(np.int64), keys.astype(np.int64)


def _representatives(keys: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        reps = np.exp(keys * LN_GAMMA) * (2.0 / (GAMMA + 1.0))
    reps[keys == INF_KEY] = np.inf
    return reps


def _add(into: dict, keys: Iterable, counts: Iterable) -> None:
    for k, n in zip(keys, counts, strict=True):
        into[k] = into.get(k, 0) + n


def _enc(x: float | None) -> float | str | None:
    """JSON has no infinities or NaN: those travel as strings."""
    if x is None or math.isfinite(x):
        return x
    return repr(float(x))  # 'inf', '-inf', 'nan'


def _dec(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass
class Summary:
    """Summary of one tensor element over one time window (treat as immutable).

    ``exact`` maps each distinct value to its count, or is None in bucket mode, where
    ``positive`` / ``negative`` map bucket keys to counts and ``zero`` counts ``|x| < 1e-12``.
    ``min`` / ``max`` are None while ``count`` is 0.
    """

    count: int = 0
    missing: int = 0
    min: float | None = None
    max: float | None = None
    sum: float = 0.0
    exact: dict[float, int] | None = field(default_factory=dict)
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] = field(default_factory=dict)
    zero: int = 0

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def merge(self, other: Summary) -> Summary:
        return merge_all((self, other))

    # -- distribution -------------------------------------------------------------------------

    def _points(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted values (exact) or clamped representatives (buckets) with their counts."""
        if self.exact is not None:
            values = np.fromiter(self.exact.keys(), dtype=np.float64, count=len(self.exact))
            counts = np.fromiter(self.exact.values(), dtype=np.int64, count=len(self.exact))
            order = np.argsort(values, kind="stable")
            return values[order], counts[order]
        neg_keys = np.array(sorted(self.negative, reverse=True), dtype=np.int64)
        pos_keys = np.array(sorted(self.positive), dtype=np.int64)
        values = np.concatenate((-_representatives(neg_keys), [0.0], _representatives(pos_keys)))
        counts = np.array(
            [self.negative[k] for k in neg_keys.tolist()]
            + [self.zero]
            + [self.positive[k] for k in pos_keys.tolist()],
            dtype=np.int64,
        )
        if self.count:
            values = np.clip(values, self.min, self.max)
        return values, counts

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Inverted-CDF quantiles: the smallest value ``x`` with ``F(x) >= q``.

        That is the value of rank ``ceil(q * count)`` (1-based, at least 1); ``q = 0`` gives
        ``min`` and ``q = 1`` gives ``max`` exactly. Exact in exact mode; in bucket mode within
        relative ``ALPHA`` of the true value (absolute 1e-12 near zero). Same definition as
        ``numpy.quantile(..., method="inverted_cdf")``.
        """
        q = np.asarray(qs, dtype=np.float64).ravel()
        if not np.all((q >= 0) & (q <= 1)):
            raise InvalidInput(
                f"quantile levels must lie in [0, 1], got {q.tolist()}",
                hint="e.g. 0.5 for the median",
            )
        if self.count == 0:
            raise InvalidInput(
                "an empty summary has no quantiles", hint="summarise at least one non-NaN value"
            )
        assert self.min is not None and self.max is not None
        values, counts = self._points()
        ranks = np.maximum(1, np.ceil(np.round(q * self.count, 6)))
        out = values[np.minimum(np.searchsorted(np.cumsum(counts), ranks), len(values) - 1)]
        out[q == 0] = self.min
        out[q == 1] = self.max
        return out

    def quantile(self, q: float) -> float:
        return float(self.quantiles([q])[0])

    def bin_counts(self, edges: Sequence[float] | np.ndarray, outliers: bool) -> np.ndarray:
        """Counts per bin (int64), semantics of ``manager.assays.binning``.

        Exact mode assigns each distinct value exactly (equal to ``bin_counts_values`` on the
        raw values); bucket mode puts each bucket's whole count in the bin of its clamped
        representative.
        """
        arr = check_edges(edges)
        out = np.zeros(n_bins(arr, outliers), dtype=np.int64)
        if self.count:
            values, counts = self._points()
            np.add.at(out, bin_index(values, arr, outliers), counts)
        return out

    def finite_bounds(self) -> tuple[float, float] | None:
        """Smallest and largest finite value (approximate in bucket mode if ``+-inf`` occur)."""
        if self.count == 0:
            return None
        assert self.min is not None and self.max is not None
        if math.isfinite(self.min) and math.isfinite(self.max):
            return self.min, self.max
        values, counts = self._points()
        finite = values[(counts > 0) & np.isfinite(values)]
        return (float(finite[0]), float(finite[-1])) if finite.size else None

    # -- JSON -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (``json.dumps(..., allow_nan=False)`` accepts it)."""
        d: dict[str, Any] = {
            "v": FORMAT,
            "count": self.count,
            "missing": self.missing,
            "min": _enc(self.min),
            "max": _enc(self.max),
            "sum": _enc(self.sum),
        }
        if self.exact is not None:
            d["exact"] = {repr(float(k)): int(n) for k, n in self.exact.items()}
        else:
            d["alpha"] = ALPHA
            d["pos"] = {str(k): int(n) for k, n in self.positive.items()}
            d["neg"] = {str(k): int(n) for k, n in self.negative.items()}
            d["zero"] = self.zero
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Summary:
        try:
            if d.get("v") != FORMAT:
                raise ValueError(f"format version {d.get('v')!r}")
            s = cls(
                count=int(d["count"]),
                missing=int(d["missing"]),
                min=_dec(d["min"]),
                max=_dec(d["max"]),
                sum=float(d["sum"]),
            )
            if "exact" in d:
                s.exact = {float(k): int(n) for k, n in d["exact"].items()}
            else:
                if d.get("alpha") != ALPHA:
                    raise ValueError(f"sketch accuracy {d.get('alpha')!r}, expected {ALPHA}")
                s.exact = None
                s.positive = {int(k): int(n) for k, n in d["pos"].items()}
                s.negative = {int(k): int(n) for k, n in d["neg"].items()}
                s.zero = int(d["zero"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(
                f"not a Lastmile value summary: {exc}",
                hint="pass a dict made by Summary.to_json of this version",
            ) from exc
        return s


def merge_all(summaries: Iterable[Summary]) -> Summary:
    """One summary of all the values of ``summaries`` (exact while the union stays small)."""
    items = list(summaries)
    out = Summary(
        count=sum(s.count for s in items),
        missing=sum(s.missing for s in items),
        sum=float(sum(s.sum for s in items)),
    )
    mins = [s.min for s in items if s.min is not None]
    maxs = [s.max for s in items if s.max is not None]
    out.min = min(mins) if mins else None
    out.max = max(maxs) if maxs else None
    exact: dict[float, int] = {}
    rest = items
    if all(s.exact is not None for s in items):
        for s in items:
            assert s.exact is not None
            _add(exact, s.exact.keys(), s.exact.values())
        if len(exact) <= MAX_EXACT:
            out.exact = exact
            return out
        rest = []
    out.exact = None
    for s in rest:
        if s.exact is None:
            _add(out.positive, s.positive.keys(), s.positive.values())
            _add(out.negative, s.negative.keys(), s.negative.values())
            out.zero += s.zero
        else:
            _add(exact, s.exact.keys(), s.exact.values())
    if exact:
        values = np.fromiter(exact.keys(), dtype=np.float64, count=len(exact))
        counts = np.fromiter(exact.values(), dtype=np.int64, count=len(exact))
        cls, keys = _classify(values)
        for c, into in ((0, out.negative), (2, out.positive)):
            sel = cls == c
            _add(into, keys[sel].tolist(), counts[sel].tolist())
        out.zero += int(counts[cls == 1].sum())
    return out


def summarise(matrix: np.ndarray | Sequence[float]) -> list[Summary]:
    """One Summary per column of an ``(n_rows, n_elements)`` array (1-D: one element).

    Vectorised, no Python loop over rows: each column is sorted once (NaN sorts last), distinct
    values are the starts of runs of equal values; columns with more than ``MAX_EXACT`` of them
    get bucket keys, and since keys are monotone in ``|x|`` the (column, sign, key) groups are
    runs of the sorted data too, so counting them is one more run-length pass.
    """
    m = np.asarray(matrix)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2 or not (np.issubdtype(m.dtype, np.number) or m.dtype == np.bool_):
        raise InvalidInput(
            f"expected a 2-D numeric array (rows x elements), got {m.dtype} of shape {m.shape}",
            hint="flatten each captured tensor into one row of a float matrix",
        )
    if np.iscomplexobj(m):
        raise InvalidInput("complex values cannot be summarised", hint="summarise .real/.imag")
    n_rows, n_el = m.shape
    a = np.array(m.T, dtype=np.float64, order="C")
    a.sort(axis=1)
    nan = np.isnan(a)
    counts = n_rows - np.count_nonzero(nan, axis=1)
    with np.errstate(invalid="ignore"):  # inf + -inf: the sum is NaN, as it should be
        sums = np.where(nan, 0.0, a).sum(axis=1)
    vals = a.ravel() if counts.sum() == a.size else a.ravel()[~nan.ravel()]
    cols = np.repeat(np.arange(n_el, dtype=np.int64), counts)
    col_start = np.cumsum(counts) - counts

    new = np.empty(vals.size, dtype=bool)
    if vals.size:
        np.not_equal(vals[1:], vals[:-1], out=new[1:])
        new[0] = True
        new[col_start[counts > 0]] = True
    distinct = np.bincount(cols[new], minlength=n_el)
    exact_col = distinct <= MAX_EXACT

    out = [
        Summary(
            count=int(counts[c]),
            missing=n_rows - int(counts[c]),
            min=float(a[c, 0]) if counts[c] else None,
            max=float(a[c, counts[c] - 1]) if counts[c] else None,
            sum=float(sums[c]),
        )
        for c in range(n_el)
    ]

    # exact columns: runs of equal values
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, vals.size))
    run_cols = cols[starts]
    sel = exact_col[run_cols]
    e_cols, e_vals, e_lens = run_cols[sel], vals[starts[sel]] + 0.0, lengths[sel]  # -0.0 -> 0.0
    bounds = np.searchsorted(e_cols, np.arange(n_el + 1))
    for c in np.flatnonzero(exact_col).tolist():
        lo, hi = bounds[c], bounds[c + 1]
        out[c].exact = dict(zip(e_vals[lo:hi].tolist(), e_lens[lo:hi].tolist(), strict=True))

    if exact_col.all():
        return out
    # bucket columns: runs of equal (column, sign class, key)
    bmask = ~exact_col[cols]
    bv, bc = vals[bmask], cols[bmask]
    cls, keys = _classify(bv)
    ids = ((bc * 3 + cls) << 32) + (keys + 2**31)
    b_new = np.empty(ids.size, dtype=bool)
    b_new[0] = True
    np.not_equal(ids[1:], ids[:-1], out=b_new[1:])
    b_starts = np.flatnonzero(b_new)
    # np.unique guards the (theoretical) case of a key split over two runs by log rounding
    run_ids, inverse = np.unique(ids[b_starts], return_inverse=True)
    run_n = np.bincount(inverse, weights=np.diff(np.append(b_starts, ids.size))).astype(np.int64)
    group = run_ids >> 32
    r_cols, r_cls, r_keys = group // 3, group % 3, (run_ids & 0xFFFFFFFF) - 2**31
    bounds = np.searchsorted(r_cols, np.arange(n_el + 1))
    for c in np.flatnonzero(~exact_col).tolist():
        lo, hi = bounds[c], bounds[c + 1]
        s = out[c]
        s.exact = None
        kk, cc, nn = r_keys[lo:hi], r_cls[lo:hi], run_n[lo:hi]
        s.negative = dict(zip(kk[cc == 0].tolist(), nn[cc == 0].tolist(), strict=True))
        s.positive = dict(zip(kk[cc == 2].tolist(), nn[cc == 2].tolist(), strict=True))
        s.zero = int(nn[cc == 1].sum())
    return out
