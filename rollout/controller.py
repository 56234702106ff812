"""The progressive (canary) rollout as a pure state machine: (plan, state, window figures, now)
-> decision (the new state, the candidate's weight and why).

Why pure: the loop that gathers figures and pushes routing tables (manager/services/rollouts.py)
can crash, restart or run twice. When every decision is a function of the stored plan, the
stored state, the figures and the caller's clock, a restarted manager resumes by calling
``evaluate`` with what it stored, and every branch is testable without a clock, a gateway or a
database. Nothing here does I/O, reads a clock or keeps anything between calls.

    pending --start--> running --pause--> paused --resume--> running
    running | paused  --promote (by hand, or the last step passed)--> promoted
    running | paused  --rollback (by hand, or a gate failed)--------> rolled_back
    pending | running | paused --abort--> aborted

Anything else raises ``TransitionError``. Step ``i`` routes ``plan.steps[i]`` % to the
candidate; the caller measures the step's window from ``state.step_started_at`` and calls
``evaluate``, which compares the candidate's window with the stable variant's:

- once the candidate has ``min_requests`` requests in the window, a failing gate rolls back at
  once, even before the interval has elapsed;
- with fewer, a failing gate only holds, except the error-rate gate when the errors alone
  already exceed what ``min_requests`` requests may hold (errors / min_requests >
  max_error_rate): it could not pass at ``min_requests`` even if every further request
  succeeded, so a broken candidate on a small share of little traffic stops serving errors now;
- when the interval has elapsed and nothing failed, the rollout advances (promotes after the
  last step) only with ``min_requests`` candidate requests: no promotion on silence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import pairwise
from typing import Any, Literal, get_args

RolloutState = Literal["pending", "running", "paused", "promoted", "rolled_back", "aborted"]
Action = Literal["start", "hold", "advance", "promote", "rollback", "pause", "resume", "abort"]
STATES: tuple[str, ...] = get_args(RolloutState)
TERMINAL_STATES = frozenset({"promoted", "rolled_back", "aborted"})

# operation -> the states it may be applied to
_ALLOWED_FROM: dict[str, frozenset[str]] = {
    "start": frozenset({"pending"}),
    "evaluate": frozenset({"running"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "promote": frozenset({"running", "paused"}),
    "rollback": frozenset({"running", "paused"}),
    "abort": frozenset({"pending", "running", "paused"}),
}
_DONE = {
    "start": "started",
    "evaluate": "evaluated",
    "pause": "paused",
    "resume": "resumed",
    "promote": "promoted",
    "rollback": "rolled back",
    "abort": "aborted",
}


class TransitionError(ValueError):
    """An operation the rollout's current state does not allow (a 409 for the API)."""

    def __init__(self, state: str, operation: str) -> None:
        self.state = state
        self.operation = operation
        words = state.replace("_", " ")
        hint = ""
        if state == "pending":
            hint = "; start it first"
        elif state == "paused" and operation == "evaluate":
            hint = "; resume it first"
        super().__init__(
            f"rollout is {words}; a {words} rollout cannot be {_DONE[operation]}{hint}"
        )


def _number(value: object, what: str) -> float:
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
                if not allowed(_number(raw, f"gates.{name}")):
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
    may pass (and before most may fail, see the module docstring)."""

    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    min_requests: int = 100
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence):
            raise ValueError(f"plan.steps must be a list of percentages, not {self.steps!r}")
        steps = tuple(_number(s, "each of plan.steps") for s in self.steps)
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
        interval = _number(self.interval_s, "plan.interval_s")
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
            if _number(self.p99_s, "p99_s") < 0:
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
            object.__setattr__(self, "drift", _number(self.drift, "drift"))

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
            self, "step_started_at", _number(self.step_started_at, "step_started_at")
        )
        if (self.paused_at is None) == (self.state == "paused"):
            raise ValueError("paused_at is set when, and only when, the rollout is paused")
        if self.paused_at is not None:
            object.__setattr__(self, "paused_at", _number(self.paused_at, "paused_at"))

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


# --- formatting ---------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value:g} %"


def _secs(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + " s"


def _latency(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


def _versus(value: float, threshold: float, passed: bool, digits: int = 3) -> str:
    """'0.120 > 0.010', with enough digits that the two never print equal when they differ."""
    a = b = ""
    for d in range(digits, 10):
        a, b = f"{value:.{d}f}", f"{threshold:.{d}f}"
        if a != b or value == threshold:
            break
    return f"{a} {'<=' if passed else '>'} {b}"


# --- gates --------------------------------------------------------------------------------


def check_gates(plan: Plan, figures: WindowFigures) -> tuple[GateResult, ...]:
    """Every enabled gate of ``plan`` over ``figures``, in a fixed order (the first failing one
    names a rollback). Whether a failure rolls back depends on the request counts: see
    ``evaluate``."""
    gates, cand, stable = plan.gates, figures.candidate, figures.stable
    results: list[GateResult] = []

    def skip(name: str, limit: float, why: str) -> None:
        results.append(GateResult(name, None, limit, None, f"skipped: {why}"))

    def judge(name: str, limit: float, value: float, describe: str, digits: int = 3) -> None:
        ok = value <= limit
        detail = describe.format(_versus(value, limit, ok, digits))
        results.append(GateResult(name, value, limit, ok, detail))

    no_candidate = "no candidate requests in the window"
    stable_short = (
        f"the stable variant has {stable.requests} of {plan.min_requests} requests in the "
        "window, too few to compare with"
        if stable.requests < plan.min_requests
        else None
    )
    c_rate, s_rate = cand.error_rate, stable.error_rate
    if (limit := gates.max_error_rate) is not None:
        if c_rate is None:
            skip("error_rate", limit, no_candidate)
        else:
            judge("error_rate", limit, c_rate, f"error rate {{}} over {cand.requests} requests")
    if (limit := gates.max_error_rate_increase) is not None:
        if stable_short or s_rate is None:
            skip("error_rate_increase", limit, stable_short or "no stable requests")
        elif c_rate is None:
            skip("error_rate_increase", limit, no_candidate)
        else:
            judge(
                "error_rate_increase",
                limit,
                c_rate - s_rate,
                f"error rate increase {{}} (candidate {c_rate:.3f} over {cand.requests} "
                f"requests, stable {s_rate:.3f} over {stable.requests})",
            )
    if (limit := gates.max_p99_ratio) is not None:
        if stable_short:
            skip("p99_ratio", limit, stable_short)
        elif cand.p99_s is None or stable.p99_s is None:
            which = "candidate" if cand.p99_s is None else "stable variant"
            skip("p99_ratio", limit, f"no p99 latency for the {which}")
        elif stable.p99_s == 0:
            skip("p99_ratio", limit, "the stable variant's p99 is 0")
        else:
            judge(
                "p99_ratio",
                limit,
                cand.p99_s / stable.p99_s,
                f"p99 ratio {{}} (candidate {_latency(cand.p99_s)} over {cand.requests} "
                f"requests, stable {_latency(stable.p99_s)} over {stable.requests})",
                digits=2,
            )
    if (limit := gates.max_drift) is not None:
        if figures.drift is None:
            skip("drift", limit, "no drift figure for this window")
        else:
            judge("drift", limit, figures.drift, "drift {}")
    return tuple(results)


# --- transitions --------------------------------------------------------------------------


def _require(state: CanaryState, operation: str) -> None:
    if state.state not in _ALLOWED_FROM[operation]:
        raise TransitionError(state.state, operation)


def _step_of(plan: Plan, state: CanaryState) -> int:
    if state.step >= len(plan.steps):
        raise ValueError(
            f"the stored state is at step index {state.step} but the plan has "
            f"{len(plan.steps)} steps"
        )
    return state.step


def _where(plan: Plan, step: int) -> str:
    return f"step {step + 1} of {len(plan.steps)} ({_pct(plan.steps[step])})"


def candidate_weight(plan: Plan, state: CanaryState) -> float:
    """The candidate percentage a rollout in ``state`` routes (what a restarted manager pushes
    before its first decision)."""
    if state.state == "promoted":
        return 100.0
    if state.state in ("pending", "rolled_back", "aborted"):
        return 0.0
    return plan.steps[_step_of(plan, state)]


def start(plan: Plan, now: float, state: CanaryState | None = None) -> Decision:
    """pending -> running at the first step. ``state``: the stored one (default: a new,
    pending rollout)."""
    _require(state or CanaryState(), "start")
    now = _number(now, "now")
    new = CanaryState("running", 0, now, None)
    reason = f"started at {_where(plan, 0)} for at least {_secs(plan.interval_s)}"
    return Decision(new, "start", plan.steps[0], reason, next_check_at=now + plan.interval_s)


def pause(plan: Plan, state: CanaryState, now: float) -> Decision:
    """running -> paused; the weights stay as they are."""
    _require(state, "pause")
    step = _step_of(plan, state)
    new = replace(state, state="paused", paused_at=_number(now, "now"))
    reason = f"paused at {_where(plan, step)}; the weights stay"
    return Decision(new, "pause", plan.steps[step], reason)


def resume(plan: Plan, state: CanaryState, now: float) -> Decision:
    """paused -> running; the step's window restarts now (figures gathered before, paused or
    not, do not count)."""
    _require(state, "resume")
    step = _step_of(plan, state)
    now = _number(now, "now")
    new = replace(state, state="running", step_started_at=now, paused_at=None)
    reason = f"resumed at {_where(plan, step)}; the step's window restarts"
    return Decision(new, "resume", plan.steps[step], reason, next_check_at=now + plan.interval_s)


def _finish(
    state: CanaryState,
    now: float,
    operation: str,
    to: RolloutState,
    action: Action,
    weight: float,
    reason: str,
    gates: tuple[GateResult, ...] = (),
    figures: WindowFigures | None = None,
) -> Decision:
    _require(state, operation)
    _number(now, "now")
    new = CanaryState(to, state.step, state.step_started_at, None)
    return Decision(new, action, weight, reason, gates, None, figures)


def promote(state: CanaryState, now: float, reason: str = "promoted by hand") -> Decision:
    """running | paused -> promoted: the candidate gets 100 %."""
    return _finish(state, now, "promote", "promoted", "promote", 100.0, reason)


def rollback(state: CanaryState, now: float, reason: str = "rolled back by hand") -> Decision:
    """running | paused -> rolled_back: the stable variant gets 100 % again."""
    return _finish(state, now, "rollback", "rolled_back", "rollback", 0.0, reason)


def abort(state: CanaryState, now: float, reason: str = "aborted by hand") -> Decision:
    """pending | running | paused -> aborted: the stable variant gets 100 %."""
    return _finish(state, now, "abort", "aborted", "abort", 0.0, reason)


def evaluate(plan: Plan, state: CanaryState, figures: WindowFigures, now: float) -> Decision:
    """Judge the running step's window: hold, advance, promote or roll back (module
    docstring). ``figures`` cover the window opened at ``state.step_started_at``."""
    _require(state, "evaluate")
    step = _step_of(plan, state)
    now = _number(now, "now")
    gates = check_gates(plan, figures)
    cand, need = figures.candidate, plan.min_requests
    where = _where(plan, step)
    failed = [g for g in gates if g.passed is False]
    if failed and cand.requests >= need:
        also = f" (also failing: {', '.join(g.name for g in failed[1:])})" if failed[1:] else ""
        reason = f"rolled back at {where}: gate {failed[0].name} failed, {failed[0].detail}{also}"
        return _finish(
            state, now, "rollback", "rolled_back", "rollback", 0.0, reason, gates, figures
        )
    limit = plan.gates.max_error_rate
    if limit is not None and cand.requests < need and cand.errors / need > limit:
        first = next(g for g in gates if g.name == "error_rate")
        reason = (
            f"rolled back at {where}: gate error_rate failed before {need} requests, "
            f"{first.detail}; {cand.errors} errors exceed {limit:g} of {need} requests even if "
            "every further request succeeds"
        )
        return _finish(
            state, now, "rollback", "rolled_back", "rollback", 0.0, reason, gates, figures
        )
    weight = plan.steps[step]
    elapsed = now - state.step_started_at
    failing = (
        f"; failing so far: {', '.join(g.name for g in failed)} (judged from {need} requests)"
        if failed
        else ""
    )
    if elapsed < plan.interval_s:
        reason = (
            f"holding {where}: {_secs(max(elapsed, 0.0))} of {_secs(plan.interval_s)}, "
            f"{cand.requests} of {need} candidate requests{failing}"
        )
        return Decision(
            state, "hold", weight, reason, gates, state.step_started_at + plan.interval_s, figures
        )
    if cand.requests < need:
        reason = (
            f"holding {where}: only {cand.requests} of {need} candidate requests after "
            f"{_secs(elapsed)}; no promotion on silence{failing}"
        )
        return Decision(state, "hold", weight, reason, gates, now + plan.interval_s, figures)
    passed = f"{where} passed its gates over {cand.requests} candidate requests in {_secs(elapsed)}"
    if step == len(plan.steps) - 1:
        new = CanaryState("promoted", step, state.step_started_at, None)
        return Decision(new, "promote", 100.0, f"promoted: {passed}", gates, None, figures)
    new = replace(state, step=step + 1, step_started_at=now)
    reason = f"advanced to {_where(plan, step + 1)}: {passed}"
    return Decision(
        new, "advance", plan.steps[step + 1], reason, gates, now + plan.interval_s, figures
    )
