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

The records it reads and returns (``Plan``, ``Gates``, ``WindowFigures``, ``CanaryState``,
``Decision``, ...) are defined in rollout.controller_types and importable from here.
"""

from __future__ import annotations

from dataclasses import replace

from rollout.controller_types import (
    STATES,
    TERMINAL_STATES,
    Action,
    CanaryState,
    Decision,
    GateResult,
    Gates,
    Plan,
    RolloutState,
    VariantFigures,
    WindowFigures,
    finite_number,
)

# the records live in rollout.controller_types; callers import them from here too
__all__ = [
    "STATES",
    "TERMINAL_STATES",
    "Action",
    "CanaryState",
    "Decision",
    "GateResult",
    "Gates",
    "Plan",
    "RolloutState",
    "TransitionError",
    "VariantFigures",
    "WindowFigures",
    "abort",
    "candidate_weight",
    "check_gates",
    "evaluate",
    "pause",
    "promote",
    "resume",
    "rollback",
    "start",
]

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
    now = finite_number(now, "now")
    new = CanaryState("running", 0, now, None)
    reason = f"started at {_where(plan, 0)} for at least {_secs(plan.interval_s)}"
    return Decision(new, "start", plan.steps[0], reason, next_check_at=now + plan.interval_s)


def pause(plan: Plan, state: CanaryState, now: float) -> Decision:
    """running -> paused; the weights stay as they are."""
    _require(state, "pause")
    step = _step_of(plan, state)
    new = replace(state, state="paused", paused_at=finite_number(now, "now"))
    reason = f"paused at {_where(plan, step)}; the weights stay"
    return Decision(new, "pause", plan.steps[step], reason)


def resume(plan: Plan, state: CanaryState, now: float) -> Decision:
    """paused -> running; the step's window restarts now (figures gathered before, paused or
    not, do not count)."""
    _require(state, "resume")
    step = _step_of(plan, state)
    now = finite_number(now, "now")
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
    finite_number(now, "now")
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
    now = finite_number(now, "now")
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
