"""Every error the API answers is ``application/problem+json`` (RFC 9457), whatever raised it:
our error tree, FastAPI's request validation, Starlette's HTTP errors (unknown route, wrong
method) and anything unexpected — which becomes a 500 without a traceback or a server path."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from manager.errors import LastmileError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

HTTP_TITLES = {
    400: ("BadRequest", "Bad request"),
    401: ("Unauthenticated", "Unauthenticated"),
    403: ("Forbidden", "Forbidden"),
    404: ("NotFound", "Not found"),
    405: ("MethodNotAllowed", "Method not allowed"),
    406: ("NotAcceptable", "Not acceptable"),
    413: ("PayloadTooLarge", "Payload too large"),
    415: ("UnsupportedMedia", "Unsupported media type"),
}


def problem_response(
    request: Request | None,
    *,
    status: int,
    type_: str,
    title: str,
    detail: str,
    hint: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if hint:
        body["hint"] = hint
    if extra:
        body.update(extra)
    if request is not None:
        request.state.problem = type_
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        head, rest = parts[0], parts[1:]
        return f"{head} field {'.'.join(rest)!r}" if rest else head
    return ".".join(parts) or "request"


def validation_detail(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    fields = []
    messages = []
    for error in errors[:20]:
        where = _where(error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        messages.append(f"{where}: {message}")
        fields.append({"field": where, "message": message})
    return "; ".join(messages), fields


def redactor(home: Path) -> Callable[[str], str]:
    """Server paths out of messages (Triton's load errors name repository files): the home
    folder becomes ``$LASTMILE_HOME``, the interpreter's tree ``<python>``."""
    pairs = sorted(
        {
            str(home.resolve()): "$LASTMILE_HOME",
            str(home.absolute()): "$LASTMILE_HOME",
            sys.prefix: "<python>",
            sys.base_prefix: "<python>",
        }.items(),
        key=lambda item: -len(item[0]),
    )

    def redact(text: str) -> str:
        for path, name in pairs:
            if path and path != "/":
                text = text.replace(path, name)
        return text

    return redact


def install(app: FastAPI, home: Path) -> None:
    redact = redactor(home)

    @app.exception_handler(LastmileError)
    async def _lastmile(request: Request, exc: LastmileError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        return problem_response(
            request,
            status=exc.status_code,
            type_=type(exc).__name__,
            title=exc.title,
            detail=redact(exc.message),
            hint=redact(exc.hint) if exc.hint else None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, fields = validation_detail(list(exc.errors()))
        return problem_response(
            request,
            status=422,
            type_="InvalidInput",
            title="Invalid input",
            detail=detail,
            hint="see the route's schema at /docs",
            extra={"errors": fields},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, title = HTTP_TITLES.get(exc.status_code, ("HTTPError", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path!r}"
        return problem_response(
            request,
            status=exc.status_code,
            type_=type_,
            title=title,
            detail=detail,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            request,
            status=500,
            type_="LastmileError",
            title="Internal error",
            detail="the server failed on this request; its log has the details",
            hint="quote the request_id when you report it",
        )
