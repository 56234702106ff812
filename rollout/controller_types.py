"""The records the progressive controller (rollout.controller) reads and returns: the plan
(steps, interval, gates), the window figures, the stored state and the decision, each frozen,
validated as it is made (ValueError names the field) and round-tripped through plain dicts, as
the manager stores them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any, Literal, get_args

RolloutState = Literal["pending", "running", "paused", "promoted", "rolled_back", "aborted"]
Action = Literal["start", "hold", "advance", "promote", "rollback", "pause", "resume", "abort"]
STATES: tuple[str, ...] = get_args(RolloutState)
TERMINAL_STATES = frozenset({"promoted", "rolled_back", "aborted"})


def finite_number(value: object, what: str) -> float:
    """`value` as a float; ValueError naming `what` unless it is a finite int or float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _whole(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, not {value!r}")
    return value


def _known(data: object, what: str, cls: type) -> dict[str, Any]:
    """``data`` as keyword arguments of dataclass ``cls``, refusing unknown keys."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be an object, not {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(map(str, unknown))}")
    return dict(data)


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds a step's window must stay within; None disables a gate. A value equal to its
    threshold passes. ``max_error_rate_increase`` and ``max_p99_ratio`` compare with the stable
    variant and are skipped while it has fewer than ``min_requests`` in the window (at the
    100 % step it has none); ``max_drift`` is skipped when the window has no drift figure."""

    max_error_rate: float | None = 0.01  # candidate errors / requests
    max_error_rate_increase: float | None = None  # candidate rate - stable rate
    max_p99_ratio: float | None = 1.5  # candidate p99 / stable p99
    max_drift: float | None = None  # WindowFigures.drift (from the assays)

    def __post_init__(self) -> None:
        for name, allowed, rule in (
            ("max_error_rate", lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("max_error_rate_increase", lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("max_p99_ratio", lambda v: v > 0, "> 0"),
            ("max_drift", lambda v: v >= 0, ">= 0"),
        ):
            raw = getattr(self, name)
            if raw is not None:
                if not allowed(finite_number(raw, f"gates.{name}")):
                    raise ValueError(f"gates.{name} must be {rule} (or null to disable), not {raw}")
                object.__setattr__(self, name, float(raw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Gates:
        """A missing key keeps its default; an explicit null disables the gate."""
        return cls(**_known(data, "gates", cls))


@dataclass(frozen=True, slots=True)
class Plan:
    """A canary's parameters. ``steps``: the candidate's percentage at each step, strictly
    increasing, ending at 100. ``min_requests``: candidate requests a window needs before a gate
    may pass (and before most may fail, see rollout.controller)."""

    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    min_requests: int = 100
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence):
            raise ValueError(f"plan.steps must be a list of percentages, not {self.steps!r}")
        steps = tuple(finite_number(s, "each of plan.steps") for s in self.steps)
        if not steps:
            raise ValueError("plan.steps must name at least one step (the last is 100)")
        for s in steps:
            if not 0 < s <= 100:
                raise ValueError(f"each of plan.steps must be in (0, 100], not {s:g}")
        for a, b in pairwise(steps):
            if b <= a:
                raise ValueError(f"plan.steps must be strictly increasing: {b:g} after {a:g}")
        if steps[-1] != 100:
            raise ValueError(f"the last of plan.steps must be 100, not {steps[-1]:g}")
        object.__setattr__(self, "steps", steps)
        interval = finite_number(self.interval_s, "plan.interval_s")
        if interval <= 0:
            raise ValueError(f"plan.interval_s must be > 0, not {self.interval_s!r}")
        object.__setattr__(self, "interval_s", interval)
        _whole(self.min_requests, "plan.min_requests", minimum=1)
        if not isinstance(self.gates, Gates):
            raise ValueError(f"plan.gates must be Gates, not {type(self.gates).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, data: object) -> Plan:
        """The inverse of ``to_dict``; a missing key keeps its default. Raises ValueError."""
        kwargs = _known(data, "plan", cls)
        if "gates" in kwargs:
            kwargs["gates"] = Gates.from_dict(kwargs["gates"])
        if not isinstance(kwargs.get("steps", ()), list | tuple):
            raise ValueError(f"plan.steps must be a list of percentages, not {kwargs['steps']!r}")
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant's figures over a window (not cumulative: see ``window_delta``)."""

    requests: int
    errors: int
    p99_s: float | None = None

    def __post_init__(self) -> None:
        _whole(self.requests, "requests")
        _whole(self.errors, "errors")
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        if self.p99_s is not None:
            if finite_number(self.p99_s, "p99_s") < 0:
                raise ValueError(f"p99_s must be >= 0, not {self.p99_s!r}")
            object.__setattr__(self, "p99_s", float(self.p99_s))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """Both variants over the current step's window, and the candidate's output drift when
    capture is on (the assays feed it)."""

    stable: VariantFigures
    candidate: VariantFigures
    drift: float | None = None

    def __post_init__(self) -> None:
        if self.drift is not None:
            object.__setattr__(self, "drift", finite_number(self.drift, "drift"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CanaryState:
    """What the manager stores between decisions. ``step`` indexes ``plan.steps`` (-1 before
    start); ``step_started_at`` (caller's clock, seconds) opens the current step's window;
    ``paused_at`` is set only while paused. Terminal states keep the last step."""

    state: RolloutState = "pending"
    step: int = -1
    step_started_at: float = 0.0
    paused_at: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")
        _whole(self.step, "step", minimum=-1)
        if self.state == "pending" and self.step != -1:
            raise ValueError(f"a pending rollout has step -1, not {self.step}")
        if self.state not in ("pending", "aborted") and self.step < 0:
            raise ValueError(f"a {self.state} rollout has a step >= 0, not {self.step}")
        object.__setattr__(
            self, "step_started_at", finite_number(self.step_started_at, "step_started_at")
        )
        if (self.paused_at is None) == (self.state == "paused"):
            raise ValueError("paused_at is set when, and only when, the rollout is paused")
        if self.paused_at is not None:
            object.__setattr__(self, "paused_at", finite_number(self.paused_at, "paused_at"))

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> CanaryState:
        """The inverse of ``to_dict``. Raises ValueError."""
        return cls(**_known(data, "state", cls))


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate over one window. ``passed`` None: skipped (``detail`` says why)."""

    name: str  # "error_rate", "error_rate_increase", "p99_ratio", "drift"
    value: float | None
    threshold: float
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Decision:
    """The new state, the candidate percentage to route now (the stable variant gets the rest)
    and why, with the gates and figures behind it (for the rollout's log). ``next_check_at``:
    evaluate again by then at the latest (sooner catches a failing gate sooner); None when
    there is nothing to evaluate (paused or finished)."""

    state: CanaryState
    action: Action
    candidate_weight: float
    reason: str
    gates: tuple[GateResult, ...] = ()
    next_check_at: float | None = None
    figures: WindowFigures | None = None

    @property
    def stable_weight(self) -> float:
        return 100.0 - self.candidate_weight

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stable_weight": self.stable_weight}
