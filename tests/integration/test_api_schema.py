"""Schemathesis over the API's own OpenAPI schema, bounded in time: with a valid key no
operation answers 5xx or off-schema; without a key every operation but /health is a 401."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck

from tests.integration.api_harness import Api, running_api

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 25


@schemathesis.serializer("application/gzip", "application/zip", "application/x-tar")
def _archive_bytes(_ctx: object, value: object) -> bytes:
    """Archive bodies are opaque bytes to the generator (the server must refuse junk)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # schemathesis calls the app in-process as host "testserver"
    yield from running_api(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'api.db'}",
        api_allowed_hosts=["testserver"],
        max_upload_bytes=64 * 1024,
    )


def _operations(api: Api) -> list:  # type: ignore[type-arg]
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_operation_answers_5xx_or_off_schema_with_a_key(api: Api) -> None:
    headers = api.headers()
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
    ]
    operations = _operations(api)
    assert len(operations) > 30
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def run(case: object) -> None:
            response = case.call(headers=headers)  # type: ignore[attr-defined]
            case.validate_response(response, checks=checks)  # type: ignore[attr-defined]

        run()


def test_no_operation_answers_without_a_key(api: Api) -> None:
    for operation in _operations(api):
        if operation.path == "/health":
            continue

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=3,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: object) -> None:
            response = case.call(headers={"authorization": ""})  # type: ignore[attr-defined]
            assert response.status_code == 401, (case, response.text)
            assert "application/problem+json" in str(response.headers["content-type"])

        run()
