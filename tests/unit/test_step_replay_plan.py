"""The pure part of replaying captured calls through a pipeline's steps (manager.assays.replay):
which steps run, how captured calls become runs, and one run, with numpy as the model."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from manager.assays.replay import CapturedCalls, ReplayError, chunks, plan, run
from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec


def _step(name: str, inputs: dict[str, str], *, batched: bool = True) -> PipelineStep:
    dims = (-1, 4) if batched else (4,)
    signature = Signature(
        inputs=tuple(TensorSpec(i, "FP32", dims) for i in inputs),
        outputs=(TensorSpec("y", "FP32", dims), TensorSpec("aux", "FP32", dims)),
        batched=batched,
    )
    refs = {k: TensorRef.parse(v) for k, v in inputs.items()}
    return PipelineStep(name=name, model=f"m-{name}", version=1, signature=signature, inputs=refs)


def _spec(*, batched: bool = True) -> PipelineSpec:
    """p(raw) -> q(p.y); r(other); s(p.y, r.y) -> out."""
    steps = (
        _step("p", {"x": "$inputs.raw"}, batched=batched),
        _step("q", {"x": "$p.y"}, batched=batched),
        _step("r", {"x": "$inputs.other"}),
        _step("s", {"a": "$p.y", "b": "$r.y"}),
    )
    return PipelineSpec(name="dag", steps=steps, outputs={"out": TensorRef("s", "y")})


def _numpy(step: PipelineStep, names: Sequence[str], feed: dict[str, np.ndarray]) -> list[Any]:
    """Every step: y = the sum of its inputs + 1, aux = y * 10."""
    y = np.sum(list(feed.values()), axis=0) + np.float32(1)
    return [{"y": y, "aux": y * 10}[n] for n in names]


def test_the_plan_is_the_upstream_closure_in_dependency_order() -> None:
    spec = _spec()
    only_q = plan(spec, ["q.y"])
    assert [s.name for s in only_q.steps] == ["p", "q"]
    assert only_q.inputs == ("raw",) and dict(only_q.fetch) == {"p": ("y",), "q": ("y",)}
    both = plan(spec, ["s.aux", "p.y"])
    assert [s.name for s in both.steps] == ["p", "r", "s"]
    assert both.inputs == ("other", "raw") and both.fetch["s"] == ("aux",)
    assert plan(spec, ["q.y"]).batched and not plan(_spec(batched=False), ["q.y"]).batched
    for bad in ("q.nope", "ghost.y", "noseparator"):
        with pytest.raises(ReplayError):
            plan(spec, [bad])


def test_batched_calls_are_concatenated_per_layout_and_bounded_in_rows() -> None:
    the_plan = plan(_spec(), ["q.y"])
    kept = CapturedCalls(wants={})
    key = ("ws", "dag", 1, datetime(2026, 1, 1, tzinfo=timezone.utc))
    kept.add(key, {"raw": np.ones((5, 2, 4), np.float32)}, stacked=True)
    kept.add(key, {"raw": np.zeros((1, 4), np.float32)}, stacked=False)
    kept.add(key, {"raw": np.zeros((3, 8), np.float32)}, stacked=False)
    kept.add(key, {"other": np.zeros((1, 4), np.float32)}, stacked=False)
    runs, lacking = chunks(kept.stacks[key], the_plan, max_rows=8)
    assert lacking == 1
    shapes = sorted((c.calls, c.feed["raw"].shape) for c in runs)
    # 5 calls of 2 rows + 1 of 1 row in runs of at most 8 rows; the wider call alone
    assert shapes == [(1, (3, 8)), (2, (3, 4)), (4, (8, 4))]


def test_unbatched_steps_run_one_call_at_a_time_and_the_run_gives_each_wanted_tensor() -> None:
    spec = _spec(batched=False)
    the_plan = plan(spec, ["q.y", "p.aux"])
    stack = {"raw": np.arange(12, dtype=np.float64).reshape(3, 4)}  # 3 calls of shape (4,)
    runs, lacking = chunks([stack], the_plan)
    assert lacking == 0 and [c.feed["raw"].shape for c in runs] == [(4,)] * 3
    got = run(the_plan, runs[1].feed, _numpy)
    x = np.arange(4, 8, dtype=np.float32)
    np.testing.assert_array_equal(got["p.aux"], (x + 1) * 10)
    np.testing.assert_array_equal(got["q.y"], x + 2)
    assert got["q.y"].dtype == np.float32  # cast to the model's datatype
    with pytest.raises(ReplayError, match="gave 0 of outputs"):
        run(the_plan, runs[0].feed, lambda step, names, feed: [])
