"""manager.charts: SVG/PNG bytes from plain data (real matplotlib, no mocks)."""

from __future__ import annotations

import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from manager.charts import bin_labels, drift_chart, histogram_chart, series_chart
from manager.errors import InvalidInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DRIFT = [
    (T0 + timedelta(hours=6 * i), v)
    for i, v in enumerate([0.02, 0.05, None, 0.12, 0.3, 0.08, None, 0.27, 0.04])
]
SERIES: dict[str, list[tuple[datetime, float | None]]] = {
    "fraud/1": [(T0 + timedelta(minutes=5 * i), 10.0 + i % 3) for i in range(12)],
    "fraud/2": [
        (T0 + timedelta(minutes=5 * i), None if i == 4 else 12.0 - i % 4) for i in range(12)
    ],
}


def svg_text(svg: bytes) -> str:
    """All the text of an SVG document (it must parse)."""
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return "\n".join("".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


def png_shape(png: bytes) -> tuple[int, ...]:
    import matplotlib.image

    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png)).shape


def drift(points=DRIFT, **kw) -> bytes:
    args = {"warning": 0.1, "alert": 0.25, "title": "fraud/2 amount PSI", "metric": "psi"}
    return drift_chart(points, **{**args, **kw})


def test_importing_charts_does_not_import_matplotlib() -> None:
    code = "import manager.charts, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_drift_svg_shows_title_thresholds_metric_and_statuses() -> None:
    text = svg_text(drift())
    for expected in ("fraud/2 amount PSI", "warning 0.1", "alert 0.25", "psi", "time (UTC)"):
        assert expected in text
    for status in ("ok", "warning", "alert", "no data"):  # the legend
        assert status in text.splitlines()


def test_drift_svg_is_byte_identical_and_order_and_timezone_do_not_matter() -> None:
    first = drift()
    assert drift() == first
    assert drift(list(reversed(DRIFT))) == first
    paris = timezone(timedelta(hours=2))
    assert drift([(t.astimezone(paris), v) for t, v in DRIFT]) == first
    assert drift([(t.replace(tzinfo=None), v) for t, v in DRIFT]) == first  # naive = UTC
    assert b"<dc:date>" not in first


def test_drift_without_thresholds_has_no_threshold_labels() -> None:
    text = svg_text(drift([(T0, 0.01), (T0 + timedelta(days=1), 0.02)], warning=None, alert=None))
    assert "warning" not in text and "alert" not in text


def test_drift_png_has_the_expected_size() -> None:
    assert png_shape(drift(fmt="png"))[:2] == (400, 800)


@pytest.mark.parametrize(
    ("points", "no_data"),
    [
        ([], True),
        ([(T0, None)], True),
        ([(T0, None), (T0 + timedelta(days=3), float("nan"))], True),  # NaN counts as missing
        ([(T0, 0.5)], False),
    ],
    ids=["empty", "one-none", "all-missing", "one-point"],
)
def test_drift_renders_degenerate_inputs(points, no_data) -> None:
    text = svg_text(drift(points))
    assert ("no data" in text.splitlines()) == no_data
    assert png_shape(drift(points, fmt="png"))[:2] == (400, 800)


def test_histogram_svg_shows_bins_and_legend_and_is_deterministic() -> None:
    labels = bin_labels([0.1, 0.5, 1, 3, 9], outliers=True)
    base, win = [0.05, 0.2, 0.3, 0.25, 0.15, 0.05], [0.02, 0.1, 0.25, 0.3, 0.2, 0.13]
    svg = histogram_chart(labels, base, win, title="amount")
    text = svg_text(svg)
    for expected in ("amount", "baseline", "window", "proportion", *labels):
        assert expected in text
    assert histogram_chart(labels, base, win, title="amount") == svg
    png = histogram_chart(labels, base, win, title="amount", fmt="png")
    assert png_shape(png)[:2] == (400, 800)


def test_histogram_empty_says_no_data() -> None:
    assert "no data" in svg_text(histogram_chart([], [], [], title="empty"))


@pytest.mark.parametrize(
    ("labels", "baseline", "window"),
    [
        (["a", "b"], [0.5, 0.5], [1.0]),
        (["a"], [0.5, 0.5], [0.5, 0.5]),
        (["a"], [-1], [1]),
        (["a"], ["many"], [1]),
    ],
)
def test_histogram_rejects_mismatched_or_negative_values(labels, baseline, window) -> None:
    with pytest.raises(InvalidInput) as err:
        histogram_chart(labels, baseline, window, title="x")
    assert err.value.hint


def test_series_svg_shows_one_named_line_per_series_and_is_deterministic() -> None:
    svg = series_chart(SERIES, title="p95 latency", y_label="ms")
    text = svg_text(svg)
    for expected in ("p95 latency", "ms", "fraud/1", "fraud/2"):
        assert expected in text
    assert "no data" not in text
    assert series_chart(SERIES, title="p95 latency", y_label="ms") == svg
    png = series_chart(SERIES, title="p95 latency", y_label="ms", fmt="png")
    assert png_shape(png)[:2] == (400, 800)


@pytest.mark.parametrize(
    "series", [{}, {"fraud/1": []}, {"fraud/1": [(T0, None)]}], ids=["none", "empty", "missing"]
)
def test_series_renders_empty_inputs(series) -> None:
    assert "no data" in svg_text(series_chart(series, title="t", y_label="ms"))
    assert png_shape(series_chart(series, title="t", y_label="ms", fmt="png"))[:2] == (400, 800)


@pytest.mark.parametrize(
    "bad",
    [[(T0, 1.0, 2.0)], [("2024-05-01", 1.0)], [T0], [(T0, "high")]],
    ids=["triple", "str-time", "bare", "str-value"],
)
def test_malformed_points_raise_invalid_input(bad) -> None:
    with pytest.raises(InvalidInput):
        drift(bad)
    with pytest.raises(InvalidInput):
        series_chart({"a": bad}, title="t", y_label="y")


@pytest.mark.parametrize("fmt", ["pdf", "SVG", "", "jpg"])
def test_unknown_format_raises_invalid_input_with_a_hint(fmt) -> None:
    calls = [
        lambda: drift(fmt=fmt),
        lambda: histogram_chart(["a"], [1.0], [1.0], title="t", fmt=fmt),
        lambda: series_chart(SERIES, title="t", y_label="y", fmt=fmt),
    ]
    for call in calls:
        with pytest.raises(InvalidInput) as err:
            call()
        assert "svg" in (err.value.hint or "")


@pytest.mark.parametrize(
    ("edges", "outliers", "expected"),
    [
        ([0, 1], False, ["[0, 1]"]),
        ([0, 1], True, ["< 0", "[0, 1]", "> 1"]),
        ([0.1, 0.5, 9], False, ["[0.1, 0.5)", "[0.5, 9]"]),
        ([0.1, 0.5, 9], True, ["< 0.1", "[0.1, 0.5)", "[0.5, 9]", "> 9"]),
        ([-2.5, 0, 2.5], False, ["[-2.5, 0)", "[0, 2.5]"]),
        ([0.123456, 12345.6], True, ["< 0.1235", "[0.1235, 1.235e+04]", "> 1.235e+04"]),
        ([1e-05, 0.001], False, ["[1e-05, 0.001]"]),
    ],
)
def test_bin_labels(edges, outliers, expected) -> None:
    assert bin_labels(edges, outliers) == expected


@pytest.mark.parametrize(
    "edges", [[], [1.0], [1.0, 1.0], [2.0, 1.0], [0.0, float("nan")], [0.0, None]]
)
def test_bin_labels_rejects_bad_edges(edges) -> None:
    with pytest.raises(InvalidInput):
        bin_labels(edges, outliers=True)


def test_concurrent_renders_match_serial_ones() -> None:
    expected = drift()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: drift(), range(4)))
    assert results == [expected] * 4
