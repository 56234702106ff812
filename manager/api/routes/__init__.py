"""One module per resource; each exposes ``router``. ``ERRORS`` documents the problem
responses every authenticated route may give."""

from __future__ import annotations

from typing import Any

from manager.api.schemas import Problem

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these problem statuses."""
    text = {
        400: "Malformed request",
        401: "No key, or an unknown, revoked or expired key",
        403: "Role too low, a server setting is off, or a foreign Host/Origin",
        404: "Not found (also: a workspace you are not a member of)",
        409: "Conflict: exists, in use, or a concurrent change",
        412: "If-Match does not match",
        413: "Body or archive over a limit",
        415: "Content type not accepted",
        422: "Invalid input; the fields are named",
        502: "Triton or the gateway failed",
        503: "Triton unavailable",
        507: "A folder of the manager is at its bound; try again later",
    }
    return {code: {"model": Problem, "description": text[code]} for code in codes}


ERRORS = problems(400, 401, 403, 404, 422)
WRITE_ERRORS = problems(400, 401, 403, 404, 409, 413, 415, 422)
