from __future__ import annotations

import pytest

from manager.errors import InvalidInput
from manager.names import check_name, check_tensor_name, triton_ensemble_name, triton_model_name


@pytest.mark.parametrize("good", ["a", "fraud-scaler", "m_2", "x" * 63])
def test_valid_names_pass(good: str) -> None:
    assert check_name(good, kind="model") == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "A", "1abc", "a/b", "a.b", "x" * 64, "a b", "-a", "é", "a\n"]
)
def test_invalid_names_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_name(bad, kind="pipeline")
    assert "invalid pipeline name" in info.value.message and info.value.hint


@pytest.mark.parametrize("bad", ["", "a..b", "1x", "x" * 200, "a b"])
def test_invalid_tensor_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="in step s"):
        check_tensor_name(bad, where="step s")


def test_generated_triton_names_cannot_collide_with_user_names() -> None:
    assert triton_model_name("default", "scaler") == "default.scaler"
    assert triton_ensemble_name("default", "fraud", 2) == "default.fraud.v2"
