"""What ``repo validate DIR`` checks when DIR is not a plain repository: one model's folder is
checked as a repository of only that model, an empty repository is a warning, and callers
that gate on a clean repository (import, export) let warnings through."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from manager import store
from manager.repository.validate import (
    Problem,
    errors,
    is_model_folder,
    read_repository_or_model,
    validate_repository,
)
from manager.services.context import Platform
from manager.services.repository import import_repository
from manager.settings import Settings
from tests.unit.test_repository_validate import ENSEMBLE, build_repository, edit, step


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repository(tmp_path)


def test_a_valid_model_folder_is_checked_as_that_one_model(repo: Path) -> None:
    assert is_model_folder(repo / "ws.scaler") and not is_model_folder(repo)
    read = read_repository_or_model(repo / "ws.scaler")
    assert list(read.models) == ["ws.scaler"] and read.single_model
    assert validate_repository(repo / "ws.scaler") == []


def test_a_broken_model_folder_reports_its_problems(repo: Path) -> None:
    (repo / "ws.scaler" / "1" / "model.onnx").unlink()
    (problem,) = validate_repository(repo / "ws.scaler")
    assert problem.rule == "missing-model-file" and problem.model == "ws.scaler"


def test_an_invalid_ensemble_folder_is_not_reported_clean(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: c.ensemble_scheduling.ClearField("step"))
    problems = validate_repository(repo / ENSEMBLE)
    assert problems and all(p.model == ENSEMBLE for p in problems)
    assert "no-steps" in {p.rule for p in problems}


def test_an_ensemble_folder_alone_reports_its_step_models_as_missing(repo: Path) -> None:
    problems = validate_repository(repo / ENSEMBLE)
    assert {p.rule for p in problems} == {"unknown-model"}
    assert [p.where for p in problems] == [
        "step 1 (model 'ws.scaler')",
        "step 2 (model 'ws.classifier')",
    ]
    assert "only the ensemble's own folder was given" in problems[0].message
    assert str(repo) in problems[0].hint  # where to point the validator instead
    assert validate_repository(repo) == []  # the same ensemble in its repository is fine


def test_a_model_folder_named_by_a_relative_path_keeps_its_name(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo / "ws.scaler")
    assert list(read_repository_or_model(Path(".")).models) == ["ws.scaler"]
    edit(repo, "ws.scaler", lambda c: setattr(c, "name", "ws.other"))
    (problem,) = validate_repository(Path("."))
    assert problem.rule == "name-mismatch"


def test_an_empty_repository_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "empty" / ".staging").mkdir(parents=True)  # hidden folders are not models
    (tmp_path / "empty" / "README.md").write_text("no models yet")
    (problem,) = validate_repository(tmp_path / "empty")
    assert problem.rule == "empty-repository" and problem.severity == "warning"
    assert not problem.is_error and errors([problem]) == []
    assert str(problem).startswith("warning: ")
    assert "holds no model folder" in str(problem)


def test_a_folder_of_broken_models_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "repository" / "ws.orphan").mkdir(parents=True)
    problems = validate_repository(tmp_path / "repository")
    assert [p.rule for p in problems] == ["missing-config"]


def test_problem_dict_carries_the_severity(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: setattr(step(c, 1), "model_version", 2))
    (problem,) = validate_repository(repo)
    assert problem.to_dict()["severity"] == "error" and problem.is_error
    warning = Problem(
        "", "/x", "holds no model folder", rule="empty-repository", severity="warning"
    )
    assert warning.to_dict() == {
        "model": "",
        "where": "/x",
        "message": "holds no model folder",
        "hint": "",
        "rule": "empty-repository",
        "severity": "warning",
    }


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    settings = Settings(home=tmp_path / "home")
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    engine = store.make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    store.init_db(engine)
    with Session(engine) as session:
        store.ensure_workspace(session, name="default")
        session.commit()
    return Platform(settings=settings, engine=engine)


def test_importing_an_empty_repository_is_not_refused_for_its_warning(
    platform: Platform, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    result = import_repository(platform, workspace="default", root=tmp_path / "empty")
    assert result == {"models": [], "pipelines": []}


def test_importing_a_model_folder_imports_that_model(platform: Platform, repo: Path) -> None:
    result = import_repository(platform, workspace="default", root=repo / "ws.scaler")
    assert [(m["name"], m["from"], m["versions"]) for m in result["models"]] == [
        ("ws-scaler", "ws.scaler", 1)  # no "default." prefix to strip
    ]
