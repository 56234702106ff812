"""Durations as people write them on a command line: ``30s``, ``15m``, ``2h``, ``7d``, and
points in time as a duration before now or an ISO 8601 date and time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from manager.errors import InvalidInput

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_S = 400 * 86400
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$")


def parse_duration(text: str, *, what: str = "--since") -> int:
    """Seconds in ``text``; an InvalidInput naming ``what`` and the accepted forms otherwise."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(
            f"{what} {text!r} is not a duration",
            hint="write a whole number and a unit: 30s, 15m, 2h or 7d",
        )
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not 0 < seconds <= MAX_S:
        raise InvalidInput(
            f"{what} {text!r} is out of range",
            hint=f"use more than 0 s and at most {MAX_S // 86400}d",
        )
    return seconds


def parse_when(text: str, *, what: str = "--since", now: datetime | None = None) -> datetime:
    """A duration before `now` (30s, 15m, 2h, 7d) or an ISO 8601 date and time (UTC when it
    names no zone)."""
    if isinstance(text, str) and not _DURATION.match(text):
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidInput(
                f"{what} {text!r} is neither a duration nor a date and time",
                hint="a duration before now: 30s, 15m, 2h or 7d; or ISO 8601, "
                "e.g. 2026-06-01T12:00",
            ) from None
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
    seconds = parse_duration(text, what=what)
    return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
