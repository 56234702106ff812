"""Charts a person would rather look at than read: drift over time, histograms, series.

Pure functions over plain data that return SVG or PNG bytes. matplotlib is imported lazily
inside the functions (importing this module stays cheap) and only through its object API with
the Agg canvas: no pyplot, no global figure state. matplotlib's rcParams are process-global, so
building and rendering a chart happens under one lock; the SVG is byte-for-byte deterministic
(fixed hash salt, no date, text kept as text).
"""

from __future__ import annotations

import io
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from manager.errors import InvalidInput

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FORMATS = ("svg", "png")
_SIZE_IN = (8.0, 4.0)  # inches; at _DPI a PNG is 800 × 400 pixels
_DPI = 100
_STATUS_COLOURS = {"ok": "#2e7d32", "warning": "#f9a825", "alert": "#c62828"}
_NO_DATA_COLOUR = "#9e9e9e"
_HOLLOW: dict[str, Any] = {
    "facecolors": "none",
    "edgecolors": _NO_DATA_COLOUR,
    "s": 28,
    "zorder": 3,
}
_NOTE: dict[str, Any] = {"fontsize": 8, "ha": "right", "va": "bottom"}
_CENTRE: dict[str, Any] = {"fontsize": 14, "ha": "center", "va": "center"}
_LOCK = threading.Lock()

Points = Sequence[tuple[datetime, float | None]]


def bin_labels(edges: Sequence[float], outliers: bool) -> list[str]:
    """Labels for the bins cut by ``edges``: ``[a, b)`` … ``[y, z]``, plus ``< a`` / ``> z``."""
    values = _floats(edges, "bin edges")
    if len(values) < 2:
        raise InvalidInput(
            f"a histogram needs at least two bin edges, got {len(values)}",
            hint="pass the edges of the bins, e.g. [0, 0.1, 0.5, 9]",
        )
    if not all(math.isfinite(v) for v in values) or any(
        b <= a for a, b in itertools.pairwise(values)
    ):
        raise InvalidInput(
            "bin edges must be finite and strictly increasing",
            hint="sort the edges and remove duplicates, NaN and infinities",
        )
    f = [f"{v:.4g}" for v in values]
    k = len(f) - 1
    labels = [f"[{f[i]}, {f[i + 1]})" for i in range(k - 1)] + [f"[{f[k - 1]}, {f[k]}]"]
    return [f"< {f[0]}", *labels, f"> {f[k]}"] if outliers else labels


def drift_chart(
    points: Points,
    *,
    warning: float | None,
    alert: float | None,
    title: str,
    metric: str,
    fmt: str = "svg",
) -> bytes:
    """A drift score over time, coloured by status, with the warning and alert thresholds."""
    _check_fmt(fmt)
    data = _points(points, "drift")

    def draw(ax: Axes) -> None:
        xs = _x([t for t, _ in data])
        if data:  # NaN breaks the line: a gap where there is no score
            ax.plot(xs, _y(data), color="#546e7a", linewidth=1.2, zorder=2)
        groups: dict[str, list[tuple[float, float]]] = {status: [] for status in _STATUS_COLOURS}
        missing = []
        for x, (_, v) in zip(xs, data, strict=True):
            if v is None:
                missing.append(x)
            else:
                groups[_status(v, warning, alert)].append((x, v))
        for status, xy in groups.items():
            if xy:
                px, py = [x for x, _ in xy], [y for _, y in xy]
                ax.scatter(px, py, color=_STATUS_COLOURS[status], s=28, zorder=3, label=status)
        if missing:  # hollow markers on the bottom edge: a time with no score
            on_x = ax.get_xaxis_transform()
            ax.scatter(missing, [0.03] * len(missing), transform=on_x, label="no data", **_HOLLOW)
        for name, level in (("warning", warning), ("alert", alert)):
            if level is not None:
                colour, on_y = _STATUS_COLOURS[name], ax.get_yaxis_transform()
                ax.axhline(level, color=colour, linestyle="--", linewidth=1, zorder=1)
                ax.text(0.995, level, f"{name} {level:.4g}", transform=on_y, color=colour, **_NOTE)
        ax.set_ylabel(metric)
        if not any(v is not None for _, v in data):
            _no_data(ax)
            if warning is None and alert is None:
                ax.set_ylim(0, 1)
        _time_axis(ax, xs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, frameon=False)

    return _render(draw, title=title, fmt=fmt)


def histogram_chart(
    labels: Sequence[str],
    baseline: Sequence[float],
    window: Sequence[float],
    *,
    title: str,
    fmt: str = "svg",
) -> bytes:
    """Baseline against window proportions per bin, as side-by-side bars."""
    _check_fmt(fmt)
    if not len(labels) == len(baseline) == len(window):
        raise InvalidInput(
            f"histogram has {len(labels)} labels, {len(baseline)} baseline and "
            f"{len(window)} window values",
            hint="pass one label and one value of each per bin",
        )
    base, win = _floats(baseline, "baseline"), _floats(window, "window")
    if not all(math.isfinite(v) and v >= 0 for v in (*base, *win)):
        raise InvalidInput(
            "histogram values must be finite and not negative",
            hint="pass the proportion (or count) of values in each bin",
        )

    def draw(ax: Axes) -> None:
        ax.set_ylabel("proportion")
        if not labels:
            _no_data(ax)
            return
        xs = list(range(len(labels)))
        width = 0.4
        ax.bar([x - width / 2 for x in xs], base, width, label="baseline", color="#90a4ae")
        ax.bar([x + width / 2 for x in xs], win, width, label="window", color="#1e88e5")
        ax.set_xticks(xs, [str(label) for label in labels])
        if len(labels) > 6 or max(len(str(label)) for label in labels) > 12:
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.legend(fontsize=8, frameon=False)

    return _render(draw, title=title, fmt=fmt)


def series_chart(
    series: Mapping[str, Points],
    *,
    title: str,
    y_label: str,
    fmt: str = "svg",
) -> bytes:
    """One line per series (e.g. per variant), with a legend and gaps where a value is None."""
    _check_fmt(fmt)
    data = {str(name): _points(pts, f"series {name!r}") for name, pts in series.items()}

    def draw(ax: Axes) -> None:
        ax.set_ylabel(y_label)
        for name, pts in data.items():
            xs = _x([t for t, _ in pts])
            ax.plot(xs, _y(pts), marker="o", markersize=3, linewidth=1.4, label=name)
        if not any(v is not None for pts in data.values() for _, v in pts):
            _no_data(ax)
        _time_axis(ax, [x for pts in data.values() for x in _x([t for t, _ in pts])])
        if data:
            ax.legend(fontsize=8, frameon=False)

    return _render(draw, title=title, fmt=fmt)


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown chart format {fmt!r}", hint="use 'svg' or 'png'")


def _points(points: Points, what: str) -> list[tuple[datetime, float | None]]:
    """Validated points, in UTC, sorted by time; a non-finite value counts as no data."""
    out: list[tuple[datetime, float | None]] = []
    for item in points:
        if (
            not isinstance(item, tuple | list)
            or len(item) != 2
            or not isinstance(item[0], datetime)
        ):
            raise InvalidInput(
                f"{what}: a point must be a (datetime, value) pair, got {item!r}",
                hint="pass (time, value) pairs; use None as the value where there is no data",
            )
        t, v = item
        t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
        value = None if v is None else _floats([v], what)[0]
        value = value if value is not None and math.isfinite(value) else None
        out.append((t, value))
    return sorted(out, key=lambda p: p[0])


def _floats(values: Sequence[Any], what: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: values must be numbers", hint=f"got {values!r:.80}") from exc


def _x(times: Sequence[datetime]) -> list[float]:
    from matplotlib import dates

    return [float(dates.date2num(t)) for t in times]


def _y(points: Sequence[tuple[datetime, float | None]]) -> list[float]:
    return [math.nan if v is None else v for _, v in points]


def _status(value: float, warning: float | None, alert: float | None) -> str:
    if alert is not None and value >= alert:
        return "alert"
    if warning is not None and value >= warning:
        return "warning"
    return "ok"


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, color=_NO_DATA_COLOUR, **_CENTRE)


def _time_axis(ax: Axes, xs: Sequence[float]) -> None:
    from matplotlib import dates

    if not xs:  # nothing to place in time: no meaningless 0…1 ticks
        ax.set_xticks([])
        return
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.03 or 1 / 24  # one instant: show the hour around it, not years
    ax.set_xlim(lo - pad, hi + pad)  # set, not autoscaled: points with no value count too
    locator = dates.AutoDateLocator(tz=timezone.utc, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax.set_xlabel("time (UTC)")


def _render(draw: Callable[[Axes], None], *, title: str, fmt: str) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {"Software": None}
    buf = io.BytesIO()
    with _LOCK, matplotlib.rc_context({"svg.hashsalt": "lastmile", "svg.fonttype": "none"}):
        fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_title(title)
        ax.grid(True, color="#eeeeee", linewidth=0.8)
        ax.set_axisbelow(True)
        draw(ax)
        fig.savefig(buf, format=fmt, dpi=_DPI, metadata=metadata)
    return buf.getvalue()
