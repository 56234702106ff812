"""Drift-assay numerics against independent computations (scipy, numpy, plain Python).

The reference implementations below are written from the definitions in the docstrings of
``manager.assays.drift``, not from its code, so a change of definition shows up here.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from manager.assays import (
    ALPHA,
    EPS,
    MAX_EXACT,
    METRICS,
    Binning,
    Summary,
    Thresholds,
    bin_counts_values,
    js,
    ks,
    make_edges,
    max_diff,
    merge_all,
    psi,
    score,
    status,
    sum_diff,
    summarise,
    windows,
)
from manager.errors import InvalidInput

SEEDS = (0, 1, 2, 3, 4)


# -- independent references --------------------------------------------------------------------


def shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts]


def ref_psi(b: list[int], w: list[int]) -> float:
    p = [max(x, EPS) for x in shares(b)]
    q = [max(x, EPS) for x in shares(w)]
    return math.fsum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q, strict=True))


def ref_ks(b: list[int], w: list[int]) -> float:
    cp = cq = 0.0
    best = 0.0
    for pi, qi in zip(shares(b), shares(w), strict=True):
        cp, cq = cp + pi, cq + qi
        best = max(best, abs(cp - cq))
    return best


def ref_sum_diff(b: list[int], w: list[int]) -> float:
    return 0.5 * math.fsum(abs(p - q) for p, q in zip(shares(b), shares(w), strict=True))


def ref_max_diff(b: list[int], w: list[int]) -> float:
    return max(abs(p - q) for p, q in zip(shares(b), shares(w), strict=True))


def ref_js(b: list[int], w: list[int]) -> float:
    return float(jensenshannon(shares(b), shares(w), base=2) ** 2)


REFERENCES = {
    "psi": (psi, ref_psi),
    "ks": (ks, ref_ks),
    "sum_diff": (sum_diff, ref_sum_diff),
    "max_diff": (max_diff, ref_max_diff),
    "js": (js, ref_js),
}


def random_counts(rng: np.random.Generator, n: int) -> tuple[list[int], list[int]]:
    b = rng.integers(0, 50, size=n)
    w = rng.integers(0, 50, size=n)
    b[rng.random(n) < 0.2] = 0  # empty bins on either side
    w[rng.random(n) < 0.2] = 0
    b[0] += 1
    w[-1] += 1
    return b.tolist(), w.tolist()


def all_finite(x: object) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


# -- metrics -------------------------------------------------------------------------------------


def test_metric_names() -> None:
    assert set(METRICS) == set(REFERENCES)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", sorted(REFERENCES))
def test_metrics_match_independent_definitions(metric: str, seed: int) -> None:
    fn, ref = REFERENCES[metric]
    rng = np.random.default_rng(seed)
    for n in (1, 2, 7, 30):
        b, w = random_counts(rng, n)
        got = fn(b, w)
        assert isinstance(got, float) and math.isfinite(got)
        assert got == pytest.approx(ref(b, w), abs=1e-9)
        assert score(metric, b, w) == pytest.approx(got, abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_ks_on_distinct_value_bins_equals_scipy_two_sample_ks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=300)
    y = rng.normal(0.3, 1.2, size=200)
    values = np.unique(np.concatenate((x, y)))
    # every distinct value gets its own bin; the extra top edge keeps the closed last bin to
    # the maximum alone
    edges = np.append(values, values[-1] + 1.0)
    b = bin_counts_values(x, edges, outliers=True)
    w = bin_counts_values(y, edges, outliers=True)
    assert ks(b, w) == pytest.approx(ks_2samp(x, y).statistic, abs=1e-9)


def test_metrics_of_identical_and_disjoint_distributions() -> None:
    same = [3, 0, 5]
    for metric in METRICS:
        assert score(metric, same, [6, 0, 10]) == pytest.approx(0.0, abs=1e-12)
    assert js([1, 0], [0, 1]) == pytest.approx(1.0)
    assert sum_diff([1, 0], [0, 1]) == pytest.approx(1.0)
    assert ks([1, 0], [0, 1]) == pytest.approx(1.0)
    assert max_diff([1, 0], [0, 1]) == pytest.approx(1.0)
    assert math.isfinite(psi([1, 0], [0, 1]))


def test_score_no_data_and_bad_input() -> None:
    for metric in METRICS:
        assert score(metric, [0, 0, 0], [1, 2, 3]) is None
        assert score(metric, [1, 2, 3], [0, 0, 0]) is None
    with pytest.raises(InvalidInput) as err:
        score("wasserstein", [1], [1])
    assert err.value.hint and "psi" in err.value.hint
    with pytest.raises(InvalidInput):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(InvalidInput):
        psi([1, -2], [1, 2])
    with pytest.raises(InvalidInput):
        psi([0, 0], [1, 2])


# -- binning -------------------------------------------------------------------------------------


def test_bin_semantics() -> None:
    edges = [0.0, 1.0, 2.0]
    values = np.array([-5, 0, 0.5, 1, 1.5, 2, 2.5, np.nan, -np.inf, np.inf])
    # (-inf, 0), [0, 1), [1, 2], (2, inf)
    assert bin_counts_values(values, edges, outliers=True).tolist() == [2, 2, 3, 2]
    assert bin_counts_values(values, edges, outliers=False).tolist() == [4, 5]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "histogram"}, "mode"),
        ({"mode": "quantile", "bins": 0}, "bins"),
        ({"mode": "quantile", "bins": 1001}, "bins"),
        ({"mode": "quantile", "bins": 2.5}, "bins"),
        ({"mode": "quantile", "bins": True}, "bins"),
        ({"mode": "equal_width", "edges": (0.0, 1.0)}, "edges"),
        ({"mode": "explicit"}, "edges"),
        ({"mode": "explicit", "edges": (1.0,)}, "edges"),
        ({"mode": "explicit", "edges": (0.0, 2.0, 1.0)}, "increasing"),
        ({"mode": "explicit", "edges": (0.0, 1.0, 1.0)}, "increasing"),
        ({"mode": "explicit", "edges": (0.0, math.inf)}, "finite"),
        ({"mode": "explicit", "edges": ("a", "b")}, "numbers"),
        ({"mode": "quantile", "outliers": "yes"}, "outliers"),
    ],
)
def test_bad_binning_parameters(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Binning(**kwargs)
    assert needle in str(err.value)
    assert err.value.hint


def test_explicit_edges_are_kept() -> None:
    binning = Binning("explicit", edges=[0, 1, 10])  # type: ignore[arg-type]
    assert binning.edges == (0.0, 1.0, 10.0)
    assert make_edges(Summary(), binning).tolist() == [0.0, 1.0, 10.0]


def test_quantile_edges_with_ties_collapse_bins() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate((np.zeros(900), rng.normal(size=100)))  # 90 % the same value
    base = summarise(x)[0]
    edges = make_edges(base, Binning("quantile", bins=10))
    assert np.all(np.diff(edges) > 0) and all_finite(edges)
    assert len(edges) < 11
    counts = base.bin_counts(edges, outliers=True)
    assert counts.sum() == 1000 and counts[0] == counts[-1] == 0


@pytest.mark.parametrize("mode", ["quantile", "equal_width"])
@pytest.mark.parametrize("c", [0.0, 3.0, -7.5, 1e300, -1e-300])
def test_constant_feature_gives_one_finite_bin(mode: str, c: float) -> None:
    base = summarise(np.full(50, c))[0]
    edges = make_edges(base, Binning(mode, bins=10))  # type: ignore[arg-type]
    assert len(edges) == 2 and edges[0] < edges[1] and all_finite(edges)
    b = base.bin_counts(edges, outliers=True)
    assert b.tolist() == [0, 50, 0]
    w = bin_counts_values(np.array([c, c, c + 1.0, c - 1.0]), edges, outliers=True)
    for metric in METRICS:
        assert math.isfinite(score(metric, b, w))  # type: ignore[arg-type]
        assert score(metric, b, b) == pytest.approx(0.0)


@pytest.mark.parametrize("mode", ["quantile", "equal_width"])
def test_window_outside_baseline_range_and_empty_bins(mode: str) -> None:
    rng = np.random.default_rng(1)
    base = summarise(rng.uniform(0, 1, size=5000))[0]
    edges = make_edges(base, Binning(mode, bins=10))  # type: ignore[arg-type]
    b = base.bin_counts(edges, outliers=True)
    w = summarise(rng.uniform(5, 6, size=100))[0].bin_counts(edges, outliers=True)
    assert w.tolist() == [0] * 11 + [100]
    clipped = summarise(rng.uniform(5, 6, size=100))[0].bin_counts(edges, outliers=False)
    assert clipped.tolist() == [0] * 9 + [100]
    for metric in METRICS:
        value = score(metric, b, w)
        assert value is not None and math.isfinite(value) and value > 0
    assert score("sum_diff", b, w) == pytest.approx(1.0)


def test_all_nan_window_is_no_data() -> None:
    base = summarise(np.arange(100.0))[0]
    edges = make_edges(base, Binning("quantile", bins=4))
    window = summarise(np.full(20, np.nan))[0]
    assert window.count == 0 and window.missing == 20
    w = window.bin_counts(edges, outliers=True)
    assert w.sum() == 0
    b = base.bin_counts(edges, outliers=True)
    for metric in METRICS:
        assert score(metric, b, w) is None
    assert status(None, Thresholds(0.1, 0.2)) == "no_data"
    with pytest.raises(InvalidInput):
        make_edges(window, Binning("quantile"))


def test_equal_width_edges_span_min_max() -> None:
    base = summarise(np.array([2.0, 4.0, 3.0, 10.0] * 100))[0]
    edges = make_edges(base, Binning("equal_width", bins=4))
    assert edges.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert base.bin_counts(edges, outliers=True).tolist() == [0, 200, 100, 0, 100, 0]


@pytest.mark.parametrize("mode", ["quantile", "equal_width"])
@pytest.mark.parametrize("distinct", [100, 1000])  # exact mode, bucket mode
def test_infinite_baseline_values_keep_edges_finite(mode: str, distinct: int) -> None:
    x = np.concatenate((np.arange(1.0, distinct + 1), [np.inf, -np.inf] * 5))
    base = summarise(x)[0]
    edges = make_edges(base, Binning(mode, bins=5))  # type: ignore[arg-type]
    assert all_finite(edges) and np.all(np.diff(edges) > 0)
    # the finite extremes, exact in exact mode, within ALPHA from buckets
    assert edges[0] == pytest.approx(1.0, rel=ALPHA)
    assert edges[-1] == pytest.approx(distinct, rel=ALPHA)
    counts = base.bin_counts(edges, outliers=True)
    assert counts[0] == 5 and counts[-1] == 5 and counts.sum() == distinct + 10


# -- summaries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_mode_bin_counts_equal_raw_counts_with_integer_edges(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-20, 21, size=(2000, 3)).astype(np.float64)
    x[rng.random(x.shape) < 0.05] = np.nan
    for col, s in enumerate(summarise(x)):
        assert s.is_exact
        for edges in ([-5, 0, 5], list(range(-20, 21)), [-30, -20, 3, 20, 30]):
            for outliers in (True, False):
                raw = bin_counts_values(x[:, col], edges, outliers)
                assert s.bin_counts(edges, outliers).tolist() == raw.tolist()
        qs = np.linspace(0, 1, 11)
        ref = np.quantile(x[~np.isnan(x[:, col]), col], qs, method="inverted_cdf")
        assert s.quantiles(qs).tolist() == ref.tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_bucket_mode_quantiles_within_relative_alpha(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # 25,014 values: q * n is never within rounding of an integer, where numpy's rank and
    # ours (which forgives float noise, see Summary.quantiles) could differ by one
    x = np.concatenate((rng.normal(size=20_011), rng.lognormal(3, 2, size=5003)))
    s = summarise(x.astype(np.float32))[0]
    assert not s.is_exact
    x32 = x.astype(np.float32).astype(np.float64)
    qs = np.linspace(0, 1, 101)
    ref = np.quantile(x32, qs, method="inverted_cdf")
    got = s.quantiles(qs)
    assert np.all(np.abs(got - ref) <= ALPHA * np.abs(ref) + 1e-12)
    assert got[0] == x32.min() and got[-1] == x32.max()


def test_nan_missing_negative_zero_huge_and_infinite_values() -> None:
    values = [np.nan, -3.5, 0.0, -0.0, 1e-300, 1e308, -1e308, np.inf, -np.inf, np.nan, 2.0]
    s = summarise(np.array(values))[0]
    assert (s.count, s.missing) == (9, 2)
    assert (s.min, s.max) == (-math.inf, math.inf)
    assert s.exact is not None and s.exact[0.0] == 2 and s.exact[math.inf] == 1
    # the same values in bucket mode (pushed over MAX_EXACT by many distinct fillers)
    filler = np.linspace(10.0, 20.0, MAX_EXACT + 10)
    big = summarise(np.concatenate((values, filler)))[0]
    assert not big.is_exact
    assert big.count == 9 + filler.size and big.missing == 2
    assert big.zero == 3  # 0.0, -0.0 and 1e-300 (|x| < 1e-12)
    edges = [-10.0, 0.0, 5.0, 25.0]  # no value within ALPHA of an edge
    assert (
        big.bin_counts(edges, outliers=True).tolist()
        == bin_counts_values(np.concatenate((values, filler)), edges, outliers=True).tolist()
    )
    assert big.quantile(0.0) == -math.inf and big.quantile(1.0) == math.inf
    for d in (s.to_json(), big.to_json()):
        json.dumps(d, allow_nan=False)


def test_summarise_shapes_and_empty_input() -> None:
    assert len(summarise(np.zeros((0, 4)))) == 4
    assert summarise(np.zeros((0, 1)))[0] == Summary()
    assert summarise(np.zeros((3, 0))) == []
    assert summarise(np.array([True, False, True]))[0].exact == {0.0: 1, 1.0: 2}
    with pytest.raises(InvalidInput):
        summarise(np.zeros((2, 2, 2)))
    with pytest.raises(InvalidInput):
        summarise(np.array(["a", "b"]))


def assert_same(a: Summary, b: Summary) -> None:
    assert (a.count, a.missing, a.min, a.max) == (b.count, b.missing, b.min, b.max)
    assert a.sum == pytest.approx(b.sum, rel=1e-9, abs=1e-9)
    assert (a.exact, a.positive, a.negative, a.zero) == (b.exact, b.positive, b.negative, b.zero)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["normal", "integers", "overflowing"])
def test_merge_of_parts_equals_summary_of_whole(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.normal(0, 100, size=(3000, 2))
    elif kind == "integers":
        x = rng.integers(0, 100, size=(3000, 2)).astype(np.float64)
    else:  # each third exact (< 256 distinct), the whole not
        x = np.sort(rng.integers(0, 300, size=(3000, 2)), axis=0).astype(np.float64)
    x[rng.random(x.shape) < 0.01] = np.nan
    parts = [summarise(x[i : i + 1000]) for i in (0, 1000, 2000)]
    whole = summarise(x)
    for col in range(2):
        a, b, c = (p[col] for p in parts)
        if kind == "overflowing":
            assert a.is_exact and not whole[col].is_exact
        assert_same(a.merge(b).merge(c), whole[col])
        assert_same(a.merge(b.merge(c)), whole[col])
        assert_same(merge_all([a, b, c]), whole[col])
        assert_same(c.merge(a).merge(b), whole[col])


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_json_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.stack(
        (
            rng.normal(size=2000),
            rng.integers(0, 5, size=2000),
            np.full(2000, np.nan),
            np.where(rng.random(2000) < 0.5, np.inf, -1e-20),
        ),
        axis=1,
    )
    for s in summarise(x):
        text = json.dumps(s.to_json(), allow_nan=False)
        back = Summary.from_json(json.loads(text))
        assert back == s or (math.isnan(s.sum) and math.isnan(back.sum))
        assert back.to_json() == s.to_json()
    with pytest.raises(InvalidInput) as err:
        Summary.from_json({"count": 1})
    assert err.value.hint


def test_quantile_arguments() -> None:
    s = summarise([1.0, 2.0])[0]
    with pytest.raises(InvalidInput):
        s.quantile(1.5)
    with pytest.raises(InvalidInput):
        Summary().quantile(0.5)


# -- windows and thresholds ----------------------------------------------------------------------

UTC = timezone.utc


def test_windows_are_epoch_aligned_and_inside_the_range() -> None:
    start = datetime(2024, 5, 1, 10, 17, tzinfo=UTC)
    end = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
    got = windows(start, end, timedelta(hours=1), timedelta(hours=1))
    assert got == [
        (datetime(2024, 5, 1, h, tzinfo=UTC), datetime(2024, 5, 1, h + 1, tzinfo=UTC))
        for h in (11, 12, 13)
    ]
    # a backfill over a longer range yields the same windows where they overlap
    longer = windows(start - timedelta(days=1), end, timedelta(hours=1), timedelta(hours=1))
    assert longer[-3:] == got
    sliding = windows(start, end, timedelta(hours=2), timedelta(minutes=30))
    assert sliding[0] == (
        datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
        datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    )
    assert sliding[-1][1] == end and all(b - a == timedelta(hours=2) for a, b in sliding)
    assert (
        windows(start, start + timedelta(minutes=5), timedelta(hours=1), timedelta(hours=1)) == []
    )


def test_windows_timezones_and_validation() -> None:
    naive = windows(
        datetime(2024, 1, 1), datetime(2024, 1, 1, 2), timedelta(hours=1), timedelta(hours=1)
    )
    assert naive == [
        (datetime(2024, 1, 1), datetime(2024, 1, 1, 1)),
        (datetime(2024, 1, 1, 1), datetime(2024, 1, 1, 2)),
    ]
    paris = timezone(timedelta(hours=2))
    local = windows(
        datetime(2024, 1, 1, 2, tzinfo=paris),
        datetime(2024, 1, 1, 4, tzinfo=paris),
        timedelta(hours=1),
        timedelta(hours=1),
    )
    assert [a.utcoffset() for a, _ in local] == [timedelta(hours=2)] * 2
    assert local[0][0] == datetime(2024, 1, 1, 0, tzinfo=UTC)
    for width, interval in (
        (timedelta(0), timedelta(hours=1)),
        (timedelta(hours=1), timedelta(seconds=-1)),
    ):
        with pytest.raises(InvalidInput) as err:
            windows(datetime(2024, 1, 1), datetime(2024, 1, 2), width, interval)
        assert err.value.hint
    with pytest.raises(InvalidInput):
        windows(datetime(2024, 1, 2), datetime(2024, 1, 1), timedelta(hours=1), timedelta(hours=1))
    with pytest.raises(InvalidInput):
        windows(
            datetime(2024, 1, 1),
            datetime(2024, 1, 2, tzinfo=UTC),
            timedelta(hours=1),
            timedelta(hours=1),
        )
    with pytest.raises(InvalidInput):
        windows(
            datetime(2000, 1, 1), datetime(2024, 1, 1), timedelta(seconds=1), timedelta(seconds=1)
        )


def test_thresholds_and_status() -> None:
    t = Thresholds(warning=0.1, alert=0.25)
    assert [status(x, t) for x in (0.0, 0.1, 0.2, 0.25, 3.0, None)] == [
        "ok",
        "warning",
        "warning",
        "alert",
        "alert",
        "no_data",
    ]
    assert status(5.0, Thresholds()) == "ok"
    assert status(0.3, Thresholds(alert=0.3)) == "alert"
    assert status(0.3, Thresholds(warning=0.3)) == "warning"
    for bad in ({"warning": 0.5, "alert": 0.1}, {"alert": math.nan}, {"warning": "x"}):
        with pytest.raises(InvalidInput) as err:
            Thresholds(**bad)  # type: ignore[arg-type]
        assert err.value.hint
