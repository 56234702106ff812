"""The progressive rollout's state machine (rollout/controller.py): every transition, each gate,
no promotion on silence, the early rollback of a broken candidate, pause/resume, the metric
helpers, and a restarted manager resuming from the stored (JSON) state."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from rollout.controller import (
    STATES,
    TERMINAL_STATES,
    CanaryState,
    Decision,
    Gates,
    Plan,
    TransitionError,
    VariantFigures,
    WindowFigures,
    abort,
    candidate_weight,
    check_gates,
    evaluate,
    pause,
    promote,
    resume,
    rollback,
    start,
)
from rollout.windows import (
    VariantCounters,
    buckets_delta,
    counter_delta,
    histogram_quantile,
    p99_from_histogram,
    window_delta,
)

PLAN = Plan()  # 5 -> 25 -> 50 -> 100 %, 60 s, 100 requests, error rate 0.01, p99 ratio 1.5
T0 = 1_000.0


def window(
    cand: int = 200,
    cand_errors: int = 0,
    cand_p99: float | None = 0.010,
    stable: int = 2_000,
    stable_errors: int = 0,
    stable_p99: float | None = 0.010,
    drift: float | None = None,
) -> WindowFigures:
    return WindowFigures(
        stable=VariantFigures(stable, stable_errors, stable_p99),
        candidate=VariantFigures(cand, cand_errors, cand_p99),
        drift=drift,
    )


HEALTHY = window()


def in_state(name: str) -> CanaryState:
    """A stored state of each kind, at step 1 (25 %) where a step applies."""
    return {
        "pending": CanaryState(),
        "running": CanaryState("running", 1, T0),
        "paused": CanaryState("paused", 1, T0, paused_at=T0 + 30),
        "promoted": CanaryState("promoted", 3, T0),
        "rolled_back": CanaryState("rolled_back", 1, T0),
        "aborted": CanaryState("aborted", 1, T0),
    }[name]


OPERATIONS: dict[str, Callable[[CanaryState, float], Decision]] = {
    "start": lambda s, now: start(PLAN, now, s),
    "evaluate": lambda s, now: evaluate(PLAN, s, HEALTHY, now),
    "pause": lambda s, now: pause(PLAN, s, now),
    "resume": lambda s, now: resume(PLAN, s, now),
    "promote": lambda s, now: promote(s, now),
    "rollback": lambda s, now: rollback(s, now),
    "abort": lambda s, now: abort(s, now),
}
VALID = {
    ("start", "pending"): "running",
    ("evaluate", "running"): "running",  # a hold at T0 + 10 (the interval has not elapsed)
    ("pause", "running"): "paused",
    ("resume", "paused"): "running",
    ("promote", "running"): "promoted",
    ("promote", "paused"): "promoted",
    ("rollback", "running"): "rolled_back",
    ("rollback", "paused"): "rolled_back",
    ("abort", "pending"): "aborted",
    ("abort", "running"): "aborted",
    ("abort", "paused"): "aborted",
}
INVALID = [(op, st) for op in OPERATIONS for st in STATES if (op, st) not in VALID]
PAST = {"start": "started", "evaluate": "evaluated", "pause": "paused", "resume": "resumed",
        "promote": "promoted", "rollback": "rolled back", "abort": "aborted"}  # fmt: skip


# --- transitions --------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "before"), sorted(VALID))
def test_every_allowed_transition_reaches_its_state(operation: str, before: str) -> None:
    decision = OPERATIONS[operation](in_state(before), T0 + 10)
    assert decision.state.state == VALID[(operation, before)]
    assert decision.state == CanaryState.from_dict(
        json.loads(json.dumps(decision.to_dict()))["state"]
    )


@pytest.mark.parametrize(("operation", "before"), INVALID)
def test_every_other_transition_raises_a_transition_error(operation: str, before: str) -> None:
    state = in_state(before)
    with pytest.raises(TransitionError) as caught:
        OPERATIONS[operation](state, T0 + 10)
    words = before.replace("_", " ")
    assert str(caught.value).startswith(
        f"rollout is {words}; a {words} rollout cannot be {PAST[operation]}"
    )
    assert isinstance(caught.value, ValueError)
    assert (caught.value.state, caught.value.operation) == (before, operation)


def test_transition_error_messages_read_well() -> None:
    with pytest.raises(TransitionError, match=r"^rollout is promoted; a promoted rollout cannot "
                       r"be paused$"):  # fmt: skip
        pause(PLAN, in_state("promoted"), T0)
    with pytest.raises(TransitionError, match="a paused rollout cannot be evaluated; resume it"):
        evaluate(PLAN, in_state("paused"), HEALTHY, T0)
    with pytest.raises(TransitionError, match="a rolled back rollout cannot be resumed"):
        resume(PLAN, in_state("rolled_back"), T0)
    with pytest.raises(TransitionError, match="a pending rollout cannot be promoted; start it"):
        promote(in_state("pending"), T0)


def test_terminal_states_are_the_last_three() -> None:
    assert {"promoted", "rolled_back", "aborted"} == TERMINAL_STATES
    assert [s for s in STATES if in_state(s).terminal] == ["promoted", "rolled_back", "aborted"]


def test_start_routes_the_first_step_and_opens_its_window() -> None:
    decision = start(PLAN, T0)
    assert decision.action == "start"
    assert decision.state == CanaryState("running", 0, T0, None)
    assert (decision.candidate_weight, decision.stable_weight) == (5.0, 95.0)
    assert decision.next_check_at == T0 + 60
    assert decision.reason == "started at step 1 of 4 (5 %) for at least 60 s"


def test_manual_promote_rollback_and_abort_set_the_weights_and_keep_the_reason() -> None:
    promoted = promote(in_state("paused"), T0, "promoted by alice: looks good")
    assert (promoted.action, promoted.candidate_weight) == ("promote", 100.0)
    assert promoted.state == CanaryState("promoted", 1, T0, None)
    assert promoted.reason == "promoted by alice: looks good"
    rolled = rollback(in_state("running"), T0, "customer complaints")
    assert (rolled.action, rolled.candidate_weight, rolled.stable_weight) == ("rollback", 0, 100)
    assert rolled.reason == "customer complaints"
    aborted = abort(in_state("pending"), T0)
    assert (aborted.action, aborted.candidate_weight) == ("abort", 0.0)
    assert aborted.state == CanaryState("aborted", -1, 0.0, None)
    for decision in (promoted, rolled, aborted):
        assert decision.next_check_at is None and decision.state.terminal


def test_pause_keeps_the_weight_and_resume_restarts_the_window() -> None:
    running = CanaryState("running", 1, T0)
    paused = pause(PLAN, running, T0 + 30)
    assert (paused.action, paused.candidate_weight, paused.next_check_at) == ("pause", 25, None)
    assert paused.state == CanaryState("paused", 1, T0, paused_at=T0 + 30)

    resumed = resume(PLAN, paused.state, T0 + 500)
    assert (resumed.action, resumed.candidate_weight) == ("resume", 25.0)
    assert resumed.state == CanaryState("running", 1, T0 + 500, None)
    assert resumed.next_check_at == T0 + 560
    assert "window restarts" in resumed.reason

    # 530 s after the step began but 30 s after the resume: figures gathered while paused do
    # not count, the new window has not run its interval yet
    held = evaluate(PLAN, resumed.state, HEALTHY, T0 + 530)
    assert held.action == "hold"
    assert held.reason == "holding step 2 of 4 (25 %): 30 s of 60 s, 200 of 100 candidate requests"
    advanced = evaluate(PLAN, resumed.state, HEALTHY, T0 + 560)
    assert (advanced.action, advanced.candidate_weight) == ("advance", 50.0)


# --- evaluate -----------------------------------------------------------------------------


def test_a_healthy_candidate_advances_through_every_step_to_promotion() -> None:
    decision = start(PLAN, T0)
    weights, actions = [decision.candidate_weight], [decision.action]
    now = T0
    while not decision.state.terminal:
        # mid-window: hold
        assert evaluate(PLAN, decision.state, HEALTHY, now + 30).action == "hold"
        now += 60
        share = decision.candidate_weight / 100
        figures = window(cand=int(4_000 * share), stable=int(4_000 * (1 - share)))
        decision = evaluate(PLAN, decision.state, figures, now)
        weights.append(decision.candidate_weight)
        actions.append(decision.action)
    assert weights == [5, 25, 50, 100, 100]
    assert actions == ["start", "advance", "advance", "advance", "promote"]
    assert decision.state == CanaryState("promoted", 3, T0 + 180, None)
    assert decision.reason == (
        "promoted: step 4 of 4 (100 %) passed its gates over 4000 candidate requests in 60 s"
    )
    # at 100 % the stable variant serves nothing: the p99 comparison is skipped, and says so
    p99 = next(g for g in decision.gates if g.name == "p99_ratio")
    assert p99.passed is None
    assert "stable variant has 0 of 100 requests" in p99.detail


def test_advance_opens_a_new_window_at_the_next_weight() -> None:
    decision = evaluate(PLAN, CanaryState("running", 0, T0), HEALTHY, T0 + 61.5)
    assert decision.action == "advance"
    assert decision.state == CanaryState("running", 1, T0 + 61.5, None)
    assert (decision.candidate_weight, decision.next_check_at) == (25.0, T0 + 121.5)
    assert decision.reason == (
        "advanced to step 2 of 4 (25 %): step 1 of 4 (5 %) passed its gates over 200 candidate "
        "requests in 61.5 s"
    )
    assert decision.figures == HEALTHY
    assert [g.passed for g in decision.gates] == [True, True]


def test_before_the_interval_a_passing_window_holds_until_the_window_ends() -> None:
    state = CanaryState("running", 2, T0)
    decision = evaluate(PLAN, state, HEALTHY, T0 + 59.9)
    assert (decision.action, decision.state, decision.candidate_weight) == ("hold", state, 50)
    assert decision.next_check_at == T0 + 60


@pytest.mark.parametrize("requests", [0, 1, 99])
def test_no_promotion_on_silence(requests: int) -> None:
    state = CanaryState("running", 3, T0)
    decision = evaluate(PLAN, state, window(cand=requests, stable=0), T0 + 600)
    assert decision.action == "hold"
    assert decision.state == state
    assert decision.candidate_weight == 100.0
    assert decision.reason == (
        f"holding step 4 of 4 (100 %): only {requests} of 100 candidate requests after 600 s; "
        "no promotion on silence"
    )
    assert decision.next_check_at == T0 + 660


def test_min_requests_is_enough_to_advance() -> None:
    decision = evaluate(PLAN, CanaryState("running", 0, T0), window(cand=100), T0 + 60)
    assert decision.action == "advance"


def test_error_rate_gate_rolls_back_at_once_with_the_numbers() -> None:
    state = CanaryState("running", 1, T0)
    decision = evaluate(PLAN, state, window(cand=250, cand_errors=30), T0 + 5)
    assert decision.action == "rollback"
    assert decision.state == CanaryState("rolled_back", 1, T0, None)
    assert (decision.candidate_weight, decision.stable_weight) == (0.0, 100.0)
    assert decision.next_check_at is None
    assert decision.reason == (
        "rolled back at step 2 of 4 (25 %): gate error_rate failed, "
        "error rate 0.120 > 0.010 over 250 requests"
    )
    gate = decision.gates[0]
    assert (gate.name, gate.value, gate.threshold, gate.passed) == ("error_rate", 0.12, 0.01, False)


def test_error_rate_increase_gate_compares_with_the_stable_variant() -> None:
    plan = Plan(gates=Gates(max_error_rate=None, max_error_rate_increase=0.02, max_p99_ratio=None))
    figures = window(cand=200, cand_errors=8, stable=1_000, stable_errors=10)
    decision = evaluate(plan, CanaryState("running", 0, T0), figures, T0 + 1)
    assert decision.action == "rollback"
    assert decision.reason.endswith(
        "gate error_rate_increase failed, error rate increase 0.030 > 0.020 "
        "(candidate 0.040 over 200 requests, stable 0.010 over 1000)"
    )
    # the same candidate beside an equally bad stable variant passes
    fine = window(cand=200, cand_errors=8, stable=1_000, stable_errors=30)
    assert evaluate(plan, CanaryState("running", 0, T0), fine, T0 + 60).action == "advance"


def test_p99_ratio_gate_rolls_back_with_the_latencies() -> None:
    figures = window(cand_p99=0.020, stable_p99=0.010)
    decision = evaluate(PLAN, CanaryState("running", 0, T0), figures, T0 + 1)
    assert decision.action == "rollback"
    assert decision.reason == (
        "rolled back at step 1 of 4 (5 %): gate p99_ratio failed, p99 ratio 2.00 > 1.50 "
        "(candidate 20 ms over 200 requests, stable 10 ms over 2000)"
    )


def test_drift_gate_uses_the_window_drift_when_there_is_one() -> None:
    plan = Plan(gates=Gates(max_drift=0.2))
    decision = evaluate(plan, CanaryState("running", 0, T0), window(drift=0.35), T0 + 1)
    assert decision.action == "rollback"
    assert decision.reason.endswith("gate drift failed, drift 0.350 > 0.200")
    skipped = evaluate(plan, CanaryState("running", 0, T0), window(drift=None), T0 + 60)
    assert skipped.action == "advance"
    drift = skipped.gates[-1]
    assert (drift.name, drift.passed, drift.detail) == (
        "drift", None, "skipped: no drift figure for this window"
    )  # fmt: skip


def test_the_first_failing_gate_names_the_rollback_and_the_others_are_listed() -> None:
    figures = window(cand=250, cand_errors=30, cand_p99=0.5)
    decision = evaluate(PLAN, CanaryState("running", 0, T0), figures, T0 + 1)
    assert "gate error_rate failed" in decision.reason
    assert decision.reason.endswith("(also failing: p99_ratio)")


def test_a_value_equal_to_its_threshold_passes_and_close_values_print_apart() -> None:
    at_limit = check_gates(PLAN, window(cand=1_000, cand_errors=10, cand_p99=0.015))
    assert [g.passed for g in at_limit] == [True, True]
    assert at_limit[0].detail == "error rate 0.010 <= 0.010 over 1000 requests"
    above = check_gates(PLAN, window(cand=10_000, cand_errors=101))
    assert above[0].detail == "error rate 0.0101 > 0.0100 over 10000 requests"


def test_gates_can_be_disabled() -> None:
    plan = Plan(gates=Gates(max_error_rate=None, max_p99_ratio=None))
    assert check_gates(plan, window(cand_errors=200)) == ()
    decision = evaluate(plan, CanaryState("running", 0, T0), window(cand_errors=200), T0 + 60)
    assert decision.action == "advance"  # no gate: only the request count is required


@pytest.mark.parametrize(
    ("figures", "detail"),
    [
        (window(stable=99), "skipped: the stable variant has 99 of 100 requests in the window"),
        (window(cand_p99=None), "skipped: no p99 latency for the candidate"),
        (window(stable_p99=None), "skipped: no p99 latency for the stable variant"),
        (window(stable_p99=0.0), "skipped: the stable variant's p99 is 0"),
    ],
)
def test_p99_gate_is_skipped_without_a_comparable_stable_figure(
    figures: WindowFigures, detail: str
) -> None:
    gate = check_gates(PLAN, figures)[1]
    assert (gate.name, gate.value, gate.passed) == ("p99_ratio", None, None)
    assert gate.detail.startswith(detail)


def test_a_gate_failing_on_too_few_requests_holds_and_says_so() -> None:
    figures = window(cand=50, cand_p99=0.5)  # slow, but only 50 of 100 requests
    early = evaluate(PLAN, CanaryState("running", 0, T0), figures, T0 + 10)
    assert early.action == "hold"
    assert early.reason == (
        "holding step 1 of 4 (5 %): 10 s of 60 s, 50 of 100 candidate requests; "
        "failing so far: p99_ratio (judged from 100 requests)"
    )
    late = evaluate(PLAN, CanaryState("running", 0, T0), figures, T0 + 90)
    assert late.action == "hold"
    assert "no promotion on silence; failing so far: p99_ratio" in late.reason
    enough = evaluate(PLAN, CanaryState("running", 0, T0), window(cand_p99=0.5), T0 + 10)
    assert enough.action == "rollback"


def test_a_broken_candidate_rolls_back_before_min_requests() -> None:
    state = CanaryState("running", 0, T0)
    # every request fails: no need to wait for 100 of them
    decision = evaluate(PLAN, state, window(cand=12, cand_errors=12), T0 + 3)
    assert decision.action == "rollback"
    assert decision.candidate_weight == 0.0
    assert decision.reason == (
        "rolled back at step 1 of 4 (5 %): gate error_rate failed before 100 requests, "
        "error rate 1.000 > 0.010 over 12 requests; 12 errors exceed 0.01 of 100 requests even "
        "if every further request succeeds"
    )
    # 2 errors could not pass at 100 requests (0.02 > 0.01) ...
    assert evaluate(PLAN, state, window(cand=10, cand_errors=2), T0 + 3).action == "rollback"
    # ... 1 error still could (0.01 <= 0.01): hold
    assert evaluate(PLAN, state, window(cand=10, cand_errors=1), T0 + 3).action == "hold"


def test_errors_spread_over_many_requests_do_not_trigger_the_early_rollback() -> None:
    # 5 errors > 0.01 x 100, but over 1000 requests the rate is 0.005: the gate passes
    decision = evaluate(PLAN, CanaryState("running", 0, T0), window(1_000, 5), T0 + 60)
    assert decision.action == "advance"


def test_only_the_error_rate_gate_rolls_back_early() -> None:
    plan = Plan(gates=Gates(max_error_rate=None, max_error_rate_increase=0.01))
    figures = window(cand=50, cand_errors=50)
    decision = evaluate(plan, CanaryState("running", 0, T0), figures, T0 + 3)
    assert decision.action == "hold"


def test_a_clock_that_went_back_holds() -> None:
    decision = evaluate(PLAN, CanaryState("running", 0, T0), HEALTHY, T0 - 5)
    assert decision.action == "hold"
    assert "0 s of 60 s" in decision.reason


def test_a_stored_state_beyond_the_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="step index 4 but the plan has 4 steps"):
        evaluate(PLAN, CanaryState("running", 4, T0), HEALTHY, T0)


@pytest.mark.parametrize("now", [math.nan, math.inf, "1000", True])
def test_now_must_be_a_finite_number(now: object) -> None:
    with pytest.raises(ValueError, match="now must be a finite number"):
        start(PLAN, now)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "weight"),
    [("pending", 0.0), ("running", 25.0), ("paused", 25.0), ("promoted", 100.0),
     ("rolled_back", 0.0), ("aborted", 0.0)],
)  # fmt: skip
def test_candidate_weight_of_a_stored_state(state: str, weight: float) -> None:
    assert candidate_weight(PLAN, in_state(state)) == weight


# --- restart: nothing but the stored plan and state ---------------------------------------


def through_json(plan: Plan, state: CanaryState) -> tuple[Plan, CanaryState]:
    stored = json.dumps({"plan": plan.to_dict(), "state": state.to_dict()}, allow_nan=False)
    loaded = json.loads(stored)
    return Plan.from_dict(loaded["plan"]), CanaryState.from_dict(loaded["state"])


@pytest.mark.parametrize(
    "plan",
    [PLAN, Plan(steps=(10, 100), interval_s=0.5, min_requests=1, gates=Gates(max_drift=0.1,
     max_error_rate_increase=0.005, max_p99_ratio=None))],
)  # fmt: skip
def test_a_restarted_manager_decides_as_if_it_had_never_stopped(plan: Plan) -> None:
    scenario = [
        (window(), 30.0),
        (window(), 61.0),
        (window(cand=40), 200.0),
        (window(cand_errors=1, drift=0.05), 230.0),
        (window(cand_p99=0.012), 300.0),
        (window(stable=0, drift=0.01), 400.0),
    ]
    decision = start(plan, T0)
    for figures, offset in scenario:
        if decision.state.terminal:
            break
        stored_plan, stored_state = through_json(plan, decision.state)
        assert (stored_plan, stored_state) == (plan, decision.state)
        after_restart = evaluate(stored_plan, stored_state, figures, T0 + offset)
        decision = evaluate(plan, decision.state, figures, T0 + offset)
        assert after_restart == decision
        json.dumps(decision.to_dict(), allow_nan=False)  # the log entry is plain JSON
    assert decision.state.state == "promoted"


def test_a_restart_while_paused_resumes_from_the_stored_state() -> None:
    paused = pause(PLAN, CanaryState("running", 2, T0), T0 + 20).state
    _, stored = through_json(PLAN, paused)
    assert stored == paused
    resumed = resume(PLAN, stored, T0 + 100)
    assert resumed.state == CanaryState("running", 2, T0 + 100, None)
    assert resumed.candidate_weight == 50.0


def test_decision_to_dict_is_the_log_entry() -> None:
    entry = evaluate(PLAN, CanaryState("running", 0, T0), window(cand_errors=30), T0 + 1).to_dict()
    assert entry["action"] == "rollback"
    assert (entry["candidate_weight"], entry["stable_weight"]) == (0.0, 100.0)
    assert entry["state"] == {"state": "rolled_back", "step": 0, "step_started_at": T0,
                              "paused_at": None}  # fmt: skip
    assert entry["figures"]["candidate"] == {"requests": 200, "errors": 30, "p99_s": 0.01}
    assert entry["gates"][0]["name"] == "error_rate"
    assert entry["gates"][0]["passed"] is False


# --- plan, figures and state validation ---------------------------------------------------


def test_plan_defaults_and_normalisation() -> None:
    assert PLAN.steps == (5.0, 25.0, 50.0, 100.0)
    assert (PLAN.interval_s, PLAN.min_requests) == (60.0, 100)
    assert PLAN.gates == Gates(0.01, None, 1.5, None)
    plan = Plan(steps=[10, 100], interval_s=5)  # type: ignore[arg-type]
    assert plan.steps == (10.0, 100.0) and plan.interval_s == 5.0
    assert Plan(steps=(100,)).steps == (100.0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": ()}, "at least one step"),
        ({"steps": (5, 25, 50)}, "last of plan.steps must be 100, not 50"),
        ({"steps": (25, 5, 100)}, "strictly increasing: 5 after 25"),
        ({"steps": (5, 5, 100)}, "strictly increasing: 5 after 5"),
        ({"steps": (0, 100)}, r"in \(0, 100\], not 0"),
        ({"steps": (-5, 100)}, r"in \(0, 100\], not -5"),
        ({"steps": (50, 150)}, r"in \(0, 100\], not 150"),
        ({"steps": (math.nan, 100)}, "finite number"),
        ({"steps": (True, 100)}, "finite number"),
        ({"steps": "5,100"}, "list of percentages"),
        ({"interval_s": 0}, "interval_s must be > 0"),
        ({"interval_s": -1}, "interval_s must be > 0"),
        ({"interval_s": math.inf}, "interval_s must be a finite number"),
        ({"min_requests": 0}, "min_requests must be a whole number >= 1"),
        ({"min_requests": 1.5}, "min_requests must be a whole number >= 1"),
        ({"min_requests": True}, "min_requests must be a whole number >= 1"),
        ({"gates": {"max_error_rate": 0.1}}, "plan.gates must be Gates"),
    ],
)
def test_bad_plans_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plan(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_error_rate": 1.5}, r"gates.max_error_rate must be in \[0, 1\]"),
        ({"max_error_rate": -0.1}, r"gates.max_error_rate must be in \[0, 1\]"),
        ({"max_error_rate_increase": 2}, r"max_error_rate_increase must be in \[0, 1\]"),
        ({"max_p99_ratio": 0}, "max_p99_ratio must be > 0"),
        ({"max_drift": -1}, "max_drift must be >= 0"),
        ({"max_drift": math.nan}, "max_drift must be a finite number"),
        ({"max_p99_ratio": "2"}, "max_p99_ratio must be a finite number"),
    ],
)
def test_bad_gates_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Gates(**kwargs)  # type: ignore[arg-type]


def test_plan_from_dict_fills_defaults_and_null_disables_a_gate() -> None:
    assert Plan.from_dict({}) == PLAN
    plan = Plan.from_dict({"steps": [20, 100], "gates": {"max_p99_ratio": None}})
    assert plan.steps == (20.0, 100.0)
    assert plan.gates == Gates(max_error_rate=0.01, max_p99_ratio=None)
    custom = Plan((1, 2.5, 100), 0.25, 7, Gates(None, 0.002, 3, 0.4))
    assert Plan.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert custom.to_dict()["steps"] == [1.0, 2.5, 100.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([5, 100], "plan must be an object, not list"),
        ({"step": [5, 100]}, "unknown plan field"),
        ({"gates": {"max_latency": 1}}, "unknown gates field"),
        ({"gates": [1]}, "gates must be an object"),
        ({"steps": 100}, "list of percentages"),
        ({"steps": "5,100"}, "list of percentages"),
    ],
)
def test_plan_from_dict_refuses_bad_data_with_value_errors(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plan.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"state": "done"}, "state must be one of"),
        ({"state": "pending", "step": 0}, "pending rollout has step -1"),
        ({"state": "running", "step": -1}, "running rollout has a step >= 0"),
        ({"state": "promoted"}, "promoted rollout has a step >= 0"),
        ({"state": "paused", "step": 1}, "paused_at is set when, and only when"),
        ({"state": "running", "step": 1, "paused_at": 3.0}, "paused_at is set when"),
        ({"state": "running", "step": 1.0}, "step must be a whole number"),
        ({"state": "running", "step": 0, "step_started_at": math.nan}, "finite number"),
    ],
)
def test_bad_states_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CanaryState(**kwargs)  # type: ignore[arg-type]


def test_state_from_dict_round_trips_and_refuses_unknown_fields() -> None:
    for name in STATES:
        state = in_state(name)
        assert CanaryState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match="unknown state field"):
        CanaryState.from_dict({"state": "pending", "weight": 5})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: VariantFigures(10, 11), r"errors \(11\) cannot exceed requests \(10\)"),
        (lambda: VariantFigures(-1, 0), "requests must be a whole number >= 0"),
        (lambda: VariantFigures(10, 0, -0.5), "p99_s must be >= 0"),
        (lambda: VariantFigures(10, 0, math.nan), "p99_s must be a finite number"),
        (lambda: window(drift=math.nan), "drift must be a finite number"),
    ],
)
def test_bad_figures_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- metric helpers -----------------------------------------------------------------------

INF = math.inf


def test_p99_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    buckets = [(0.1, 50), (0.2, 90), (0.5, 100), (INF, 100)]
    # rank 99 falls in (0.2, 0.5], 9 of its 10 observations in: 0.2 + 0.3 * 0.9
    assert p99_from_histogram(buckets) == pytest.approx(0.47)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)


def test_p99_in_the_first_bucket_starts_from_zero() -> None:
    assert p99_from_histogram([(0.1, 100), (INF, 100)]) == pytest.approx(0.099)
    assert p99_from_histogram([(0.0, 100), (INF, 100)]) == 0.0  # a bound <= 0 is returned


def test_p99_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert p99_from_histogram([(0.1, 10), (1.0, 20), (INF, 100)]) == 1.0


@pytest.mark.parametrize(
    "buckets", [[], [(0.1, 0), (INF, 0)], [(INF, 7)]], ids=["empty", "no-count", "inf-only"]
)
def test_p99_is_none_without_observations_or_finite_buckets(
    buckets: list[tuple[float, int]],
) -> None:
    assert p99_from_histogram(buckets) is None


def test_p99_raises_non_monotonic_counts_like_prometheus() -> None:
    # 0.2's count dips below 0.1's (inconsistent scrapes): treated as 50
    assert p99_from_histogram([(0.1, 50), (0.2, 40), (0.5, 100), (INF, 100)]) == pytest.approx(
        0.2 + 0.3 * 49 / 50
    )


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        ([(0.1, 5), (0.5, 9)], r"last bucket must be \+Inf"),
        ([(0.5, 5), (0.1, 9), (INF, 9)], "strictly increasing"),
        ([(0.1, 5), (0.1, 9), (INF, 9)], "strictly increasing"),
        ([(0.1, -1), (INF, 9)], "counts must be finite and >= 0"),
    ],
)
def test_malformed_histograms_are_refused(buckets: list[tuple[float, int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        p99_from_histogram(buckets)


def test_counter_delta_restarts_the_window_on_a_reset() -> None:
    assert counter_delta(100, 150) == 50
    assert counter_delta(100, 100) == 0
    assert counter_delta(100, 30) == 30  # the gateway restarted: 30 since then


def test_buckets_delta_per_bucket_and_on_reset() -> None:
    before = [(0.1, 10), (0.5, 20), (INF, 25)]
    assert buckets_delta(before, [(0.1, 15), (0.5, 40), (INF, 50)]) == [
        (0.1, 5), (0.5, 20), (INF, 25)
    ]  # fmt: skip
    went_down = [(0.1, 3), (0.5, 30), (INF, 30)]
    assert buckets_delta(before, went_down) == went_down
    other_bounds = [(0.2, 1), (INF, 2)]
    assert buckets_delta(before, other_bounds) == other_bounds


def test_window_delta_subtracts_the_window_start() -> None:
    before = VariantCounters(1_000, 10, ((0.01, 900), (0.1, 1_000), (INF, 1_000)))
    after = VariantCounters(1_200, 12, ((0.01, 900), (0.1, 1_200), (INF, 1_200)))
    figures = window_delta(before, after)
    assert (figures.requests, figures.errors) == (200, 2)
    # all 200 new observations fall in (0.01, 0.1]: p99 = 0.01 + 0.09 * 198 / 200
    assert figures.p99_s == pytest.approx(0.01 + 0.09 * 0.99)


@pytest.mark.parametrize(
    "after",
    [
        VariantCounters(50, 12, ((0.01, 40), (0.1, 50), (INF, 50))),  # requests went down
        VariantCounters(1_200, 3, ((0.01, 1_000), (0.1, 1_200), (INF, 1_200))),  # errors did
        VariantCounters(1_200, 12, ((0.01, 40), (0.1, 1_200), (INF, 1_200))),  # a bucket did
        VariantCounters(1_200, 12, ((0.05, 40), (INF, 1_200))),  # bounds changed
    ],
    ids=["requests", "errors", "bucket", "bounds"],
)
def test_window_delta_after_a_gateway_restart_uses_the_new_counters_as_is(
    after: VariantCounters,
) -> None:
    before = VariantCounters(1_000, 10, ((0.01, 900), (0.1, 1_000), (INF, 1_000)))
    figures = window_delta(before, after)
    assert (figures.requests, figures.errors) == (after.requests, after.errors)
    assert figures.p99_s == p99_from_histogram(after.buckets)


def test_window_delta_without_a_start_or_a_histogram_yet() -> None:
    after = VariantCounters(30, 1, ((0.1, 30), (INF, 30)))
    assert window_delta(None, after) == VariantFigures(30, 1, p99_from_histogram(after.buckets))
    # no latency observed at the window's start: the histogram grows from nothing, the
    # counters are still subtracted
    figures = window_delta(VariantCounters(10, 0), after)
    assert (figures.requests, figures.errors) == (20, 1)
    assert figures.p99_s == pytest.approx(0.099)
