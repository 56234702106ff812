"""Assay windows in time and the status of a score: pure arithmetic, no clock, no I/O.

Windows are aligned to multiples of ``interval`` since the Unix epoch (1970-01-01T00:00Z), not
to the moment a run happens, so a scheduled run, a run that was late, and a backfill over the
same period all produce the same windows, and a stored result is found again by its window.

For ``width`` W and ``interval`` I, the windows of ``windows(start, end, W, I)`` are every
``[t - W, t)`` such that

* ``t`` is a boundary: ``t = epoch + n * I`` for an integer n;
* the window lies within ``[start, end]``: ``start + W <= t <= end``;

in increasing order of ``t``. ``W > I`` gives overlapping (sliding) windows, ``W < I`` gaps.
A window ending exactly at ``end`` is included; one starting before ``start`` is not. Naive
datetimes are taken as UTC; results have ``start``'s timezone (naive in, naive out).
Arithmetic is in whole microseconds, the resolution of ``datetime``, so nothing rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from manager.errors import InvalidInput

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_WINDOWS = 100_000
_US = timedelta(microseconds=1)

Status = Literal["ok", "warning", "alert", "no_data"]


def _micros(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // _US


def windows(
    start: datetime, end: datetime, width: timedelta, interval: timedelta
) -> list[tuple[datetime, datetime]]:
    """The epoch-aligned windows ``[t - width, t)`` lying within ``[start, end]`` (see module)."""
    for name, value in (("width", width), ("interval", interval)):
        if not isinstance(value, timedelta) or value <= timedelta(0):
            raise InvalidInput(
                f"window {name} must be a positive duration, got {value!r}",
                hint="e.g. width 1 hour and interval 1 hour for hourly, non-overlapping windows",
            )
    if (start.tzinfo is None) != (end.tzinfo is None):
        raise InvalidInput(
            "start and end mix a naive and a timezone-aware datetime",
            hint="give both with a timezone (naive ones are taken as UTC)",
        )
    s, e = _micros(start), _micros(end)
    if e < s:
        raise InvalidInput(
            f"window range ends ({end.isoformat()}) before it starts ({start.isoformat()})",
            hint="swap start and end",
        )
    w, step = width // _US, interval // _US
    if w == 0 or step == 0:
        raise InvalidInput(
            "window width and interval must be at least one microsecond",
            hint="use durations of seconds or more",
        )
    first = -(-(s + w) // step) * step  # smallest boundary >= start + width
    n = (e - first) // step + 1 if e >= first else 0
    if n > MAX_WINDOWS:
        raise InvalidInput(
            f"{n} windows between {start.isoformat()} and {end.isoformat()}",
            hint=f"use a larger interval or a shorter range (at most {MAX_WINDOWS} windows)",
        )
    tz = start.tzinfo

    def at(us: int) -> datetime:
        dt = EPOCH + timedelta(microseconds=us)
        return dt.replace(tzinfo=None) if tz is None else dt.astimezone(tz)

    return [(at(t - w), at(t)) for t in range(first, first + n * step, step)]


@dataclass(frozen=True)
class Thresholds:
    """Score levels (higher score = more drift); None disables a level."""

    warning: float | None = None
    alert: float | None = None

    def __post_init__(self) -> None:
        for name in ("warning", "alert"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(
                    f"{name} threshold must be a number, got {value!r}", hint="e.g. 0.1"
                )
            if not math.isfinite(value):
                raise InvalidInput(
                    f"{name} threshold must be finite, got {value!r}",
                    hint="leave it unset (null) to disable that level",
                )
            object.__setattr__(self, name, float(value))
        if self.warning is not None and self.alert is not None and self.warning > self.alert:
            raise InvalidInput(
                f"warning threshold {self.warning} is above the alert threshold {self.alert}",
                hint="a warning must come before an alert, e.g. warning 0.1, alert 0.25 for PSI",
            )


def status(score: float | None, thresholds: Thresholds) -> Status:
    """``no_data`` for None; ``alert`` if score >= alert; ``warning`` if >= warning; else ok."""
    if score is None:
        return "no_data"
    if math.isnan(score):
        raise InvalidInput("a drift score is NaN", hint="scores come from drift.score")
    if thresholds.alert is not None and score >= thresholds.alert:
        return "alert"
    if thresholds.warning is not None and score >= thresholds.warning:
        return "warning"
    return "ok"
