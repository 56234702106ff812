"""What every request passes before a route sees it, as one plain ASGI middleware (no body
buffering, so uploads stay streamed):

- a request id (the client's ``X-Request-Id`` when it is sane, else a new one), echoed back;
- ``Host`` must be one of the API's names (no DNS rebinding), a foreign ``Origin`` is refused
  (no cross-site requests from a web page), and a mutating request with a body must carry a
  content type a browser cannot send without a preflight — or multipart, which needs the
  Origin check — so a ``text/plain`` or form POST never reaches a route;
- every mutating call (POST, PUT, PATCH, DELETE) writes one audit row — who, which workspace,
  what, the outcome, the request id — before its response starts, whatever the outcome.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from manager import store
from manager.api.problems import problem_response
from manager.settings import Settings

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Data-plane calls audited only when refused: gateways send capture segments every few seconds
AUDITED_WHEN_REFUSED = frozenset({"/api/v1/gateway/capture"})
BODY_TYPES = frozenset(
    {
        "application/json",
        "application/problem+json",
        "multipart/form-data",
        "application/octet-stream",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/zip",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
    }
)
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class GuardAndAudit:
    def __init__(self, app: ASGIApp, *, settings: Settings, engine: Callable[[], Any]) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        names = {"localhost", "127.0.0.1", "[::1]", settings.api_bind_host.lower()}
        names |= {h.lower() for h in settings.api_allowed_hosts}
        self.hosts = {n if ":" not in n or n.startswith("[") else f"[{n}]" for n in names}
        self.origins = {o.rstrip("/").lower() for o in settings.api_allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = scope.setdefault("state", {})
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        state["request_id"] = request_id
        mutating = request.method in MUTATING
        refusal = self._refusal(request, mutating)
        audited = False

        async def send_wrapped(message: MutableMapping[str, Any]) -> None:
            nonlocal audited
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
                status = int(message["status"])
                quiet = status < 400 and request.url.path in AUDITED_WHEN_REFUSED
                if mutating and not audited and not quiet:
                    audited = True
                    await self._audit(scope, request, status)
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_wrapped)
            return
        try:
            await self.app(scope, receive, send_wrapped)
        except Exception:
            if mutating and not audited:
                audited = True
                await self._audit(scope, request, 500)
            raise

    def _refusal(self, request: Request, mutating: bool) -> Callable[..., Awaitable[None]] | None:
        host = _host_name(request.headers.get("host", ""))
        if host not in self.hosts:
            return problem_response(
                request,
                status=403,
                type_="Forbidden",
                title="Forbidden",
                detail=f"Host {host!r} is not a name of this API",
                hint="call it by a configured name, or add the name to "
                "LASTMILE_API_ALLOWED_HOSTS on the server",
            )
        origin = request.headers.get("origin")
        if origin is not None:
            own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
            if origin.rstrip("/").lower() not in self.origins | {own}:
                return problem_response(
                    request,
                    status=403,
                    type_="Forbidden",
                    title="Forbidden",
                    detail=f"requests from origin {origin!r} are refused",
                    hint="call the API from a script, the SDK or the CLI, or add the origin to "
                    "LASTMILE_API_ALLOWED_ORIGINS on the server",
                )
        if mutating and _has_body(request):
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media not in BODY_TYPES:
                return problem_response(
                    request,
                    status=415,
                    type_="UnsupportedMedia",
                    title="Unsupported media type",
                    detail=f"a {request.method} body of type {media or 'none'!r} is not accepted",
                    hint="send application/json, multipart/form-data or, for a file, "
                    "application/octet-stream",
                )
        return None

    async def _audit(self, scope: Scope, request: Request, status: int) -> None:
        state = scope.get("state", {})
        caller = state.get("caller")
        route = scope.get("route")
        template = getattr(route, "path", None) or request.url.path
        outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
        detail: dict[str, Any] = {}
        if state.get("problem"):
            detail["problem"] = state["problem"]
        if state.get("audit_detail"):
            detail.update(state["audit_detail"])
        event = store.AuditEvent(
            principal=getattr(caller, "principal", "")[:63],
            key_id=getattr(caller, "key_id", "")[:16],
            workspace=str(
                state.get("workspace") or scope.get("path_params", {}).get("workspace", "")
            )[:63],
            action=f"{request.method} {template}"[:255],
            target=request.url.path[:1024],
            status=status,
            outcome=outcome,
            request_id=str(state.get("request_id", ""))[:64],
            detail=detail,
        )
        try:
            await run_in_threadpool(self._write, event)
        except Exception:  # the request's own outcome stands; say loudly that auditing failed
            log.exception("could not write the audit row for %s", event.action)

    def _write(self, event: store.AuditEvent) -> None:
        from sqlmodel import Session

        with Session(self.engine()) as session:
            store.add_audit_event(session, event=event)
            session.commit()


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in request.headers
