"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest

from manager.k8s import find_kustomize
from manager.k8s.render import KustomizeNotFound


@pytest.fixture(scope="module")
def kustomize() -> list[str]:
    try:
        return find_kustomize()
    except KustomizeNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must render the Kubernetes manifests: {exc}")
        pytest.skip(str(exc))
