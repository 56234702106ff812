"""FastAPI dependencies: the platform, the authenticated caller and the workspace scope.

Routes declare what they need — ``Depends(editor)`` for a workspace route that changes
something — and get a ``Scope`` with the workspace name checked and the caller's role in it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from manager import store
from manager.errors import BadRequest
from manager.names import NAME_RE
from manager.services import auth
from manager.services.auth import Caller
from manager.services.context import Platform


def get_platform(request: Request) -> Platform:
    return request.app.state.system.platform  # type: ignore[no-any-return]


PlatformDep = Annotated[Platform, Depends(get_platform)]


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A Lastmile API key: `Authorization: Bearer lm_...`",
)


def get_caller(
    request: Request,
    platform: PlatformDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Caller:
    caller = auth.authenticate(platform, request.headers.get("authorization"))
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

WorkspaceName = Annotated[
    str,
    Path(description="Workspace name", pattern=NAME_RE.pattern, max_length=63),
]


@dataclass(frozen=True)
class Scope:
    """A workspace the caller may act in, and their role there."""

    workspace: str
    role: str
    caller: Caller

    @property
    def principal(self) -> str:
        return self.caller.principal


def _scope(role: str):  # type: ignore[no-untyped-def]
    def dependency(
        request: Request, workspace: WorkspaceName, caller: CallerDep, platform: PlatformDep
    ) -> Scope:
        request.state.workspace = workspace
        have = caller.require(workspace, role)
        if caller.is_owner:  # admin everywhere, but only where there is a workspace
            with platform.session() as session:
                store.get_workspace(session, name=workspace)
        return Scope(workspace=workspace, role=have, caller=caller)

    return dependency


ViewerScope = Annotated[Scope, Depends(_scope("viewer"))]
EditorScope = Annotated[Scope, Depends(_scope("editor"))]
AdminScope = Annotated[Scope, Depends(_scope("admin"))]


@dataclass(frozen=True)
class PageParams:
    limit: int
    after_id: int | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=64, description="`next_cursor` of the previous page"),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after_id=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageParams, Depends(page_params)]


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "id" or not number.isdigit() or len(number) > 18:
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"invalid cursor {cursor!r}", hint="pass the next_cursor of the previous page"
        ) from exc


def next_cursor(last_id: int | None) -> str | None:
    """The ``next_cursor`` of a page whose listing said where to continue (None at the end)."""
    return encode_cursor(last_id) if last_id else None


def etag(kind: str, number: int) -> str:
    """A counter as an ETag: ``"r3"`` (serving revision 3), ``"v2"`` (pipeline version 2)."""
    return f'"{kind}{number}"'


def parse_if_match(header: str | None, kind: str, *, hint: str) -> int | None:
    """The counter an ``If-Match`` header names (None for no header or ``*``)."""
    if header is None or header.strip() == "*":
        return None
    match = re.fullmatch(rf'\s*(?:W/)?"{kind}(\d{{1,9}})"\s*', header)
    if not match:
        raise BadRequest(f"If-Match {header!r} is not an ETag of this API", hint=hint)
    return int(match.group(1))
