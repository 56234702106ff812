"""Ensembles over decoupled models: a branch of a decoupled model's responses may meet only
its own branches. Each refusal names the ensemble, the step, the decoupled model and the
tensor of it that branched; ``tests/e2e/test_decoupled_ensemble_triton.py`` shows that a
real tritonserver refuses exactly these."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.repository.decoupled import is_decoupled
from manager.repository.validate import Problem, read_repository, validate_repository
from tests import decoupled_ensembles as cases


def mixes(problems: list[Problem], ensemble: str) -> list[Problem]:
    return [p for p in problems if p.model == ensemble and p.rule == "decoupled-mix"]


@pytest.fixture
def problems(tmp_path: Path) -> list[Problem]:
    return validate_repository(cases.build(tmp_path / "repository"))


@pytest.mark.parametrize(
    "name", [n for n, (_, _, refused) in cases.ENSEMBLES.items() if not refused]
)
def test_branches_of_a_decoupled_model_that_meet_only_each_other_pass(
    problems: list[Problem], name: str
) -> None:
    assert [p for p in problems if p.model == name] == []


def test_decoupled_branch_meeting_an_ensemble_input_is_refused(problems: list[Problem]) -> None:
    (problem,) = mixes(problems, "ws.mix-input")
    assert problem.where == "step 2 (model 'ws.join')"
    assert "decoupled model 'ws.gen'" in problem.message
    assert "its output tensor 'g'" in problem.message  # the tensor that branched
    assert "input 'p' reads tensor 'g'" in problem.message
    assert "input 'q' reads tensor 'x', which comes one per request" in problem.message
    assert "originated from different decoupled models" in problem.message  # Triton's words
    assert problem.hint and problem.severity == "error"


def test_decoupled_branch_meeting_a_tensor_from_before_it_is_refused(
    problems: list[Problem],
) -> None:
    (problem,) = mixes(problems, "ws.mix-step")
    assert problem.where == "step 4 (model 'ws.join')"
    # 'gb' is b's copy of gen's output 'g': the message names the tensor gen branched from
    assert "tensor 'gb', which comes one per response of decoupled model 'ws.gen'" in (
        problem.message
    )
    assert "(step 2, through its output tensor 'g')" in problem.message
    assert "tensor 'xa', which comes one per request" in problem.message


def test_streams_of_two_decoupled_steps_meeting_are_refused(problems: list[Problem]) -> None:
    (problem,) = mixes(problems, "ws.two-decoupled")
    assert "(step 1, through its output tensor 'g1')" in problem.message
    assert "(step 2, through its output tensor 'g2')" in problem.message


def test_ensemble_outputs_from_different_streams_are_refused(problems: list[Problem]) -> None:
    (problem,) = mixes(problems, "ws.mix-outputs")
    assert problem.where == "outputs"
    assert "ensemble output 'out', which comes one per response of decoupled model" in (
        problem.message
    )
    assert "ensemble output 'out2', which comes one per request" in problem.message


def test_the_rule_follows_data_flow_not_the_order_of_the_steps(tmp_path: Path) -> None:
    root = cases.build(tmp_path / "repository", ensembles=[])
    steps, outputs, _ = cases.ENSEMBLES["ws.mix-step"]
    (root / "ws.reordered" / "1").mkdir(parents=True)
    (root / "ws.reordered" / "config.pbtxt").write_text(
        cases.ensemble_text("ws.reordered", list(reversed(steps)), outputs)
    )
    (problem,) = mixes(validate_repository(root), "ws.reordered")
    assert problem.where == "step 1 (model 'ws.join')"


def test_a_step_that_is_a_decoupled_ensemble_counts_as_decoupled(tmp_path: Path) -> None:
    root = cases.build(tmp_path / "repository", ensembles=["ws.chain"])
    # ws.outer runs ws.chain (decoupled through ws.gen), then joins its output with x
    (root / "ws.outer" / "1").mkdir(parents=True)
    (root / "ws.outer" / "config.pbtxt").write_text(
        cases.ensemble_text(
            "ws.outer",
            [
                ("ws.chain", {"x": "x"}, {"out": "c"}),
                ("ws.join", {"p": "c", "q": "x"}, {"z": "out"}),
            ],
            ["out"],
        )
    )
    repo = read_repository(root)
    assert is_decoupled(repo, repo.models["ws.chain"])
    assert not is_decoupled(repo, repo.models["ws.a"])
    (problem,) = mixes(validate_repository(root), "ws.outer")
    assert "decoupled model 'ws.chain'" in problem.message


def test_the_same_graph_without_a_decoupled_model_passes(tmp_path: Path) -> None:
    root = cases.build(tmp_path / "repository", ensembles=["ws.mix-input", "ws.mix-outputs"])
    for name in ("ws.gen",):
        config = root / name / "config.pbtxt"
        config.write_text(config.read_text().replace("decoupled: true", "decoupled: false"))
    assert validate_repository(root) == []
