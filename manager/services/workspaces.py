"""Workspaces, their members, principals and API keys (the use cases behind /workspaces,
/principals and /keys). Authorisation is decided here from the caller, not in the routes."""

from __future__ import annotations

import logging
from typing import Any

from manager import store
from manager.errors import Conflict, Forbidden, InvalidInput, NotFound
from manager.names import check_name
from manager.services import auth
from manager.services.auth import Caller
from manager.services.context import Platform

log = logging.getLogger(__name__)


def workspace_info(ws: store.Workspace, role: str | None) -> dict[str, Any]:
    return {"name": ws.name, "created_at": ws.created_at, "role": role}


def create_workspace(platform: Platform, caller: Caller, *, name: str) -> dict[str, Any]:
    caller.require_owner("create workspaces")
    check_name(name, kind="workspace")
    with platform.session() as session:
        ws = store.create_workspace(session, name=name)
        session.commit()
        return workspace_info(ws, "admin")


def list_workspaces(
    platform: Platform, caller: Caller, *, after_id: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    with platform.session() as session:
        rows = [
            ws
            for ws in store.list_workspaces(session)
            if caller.role_in(ws.name) is not None and (after_id is None or ws.id > after_id)  # type: ignore[operator]
        ]
        page = rows[:limit]
        more = page[-1].id if len(rows) > limit else None
        return [workspace_info(ws, caller.role_in(ws.name)) for ws in page], more


def get_workspace(platform: Platform, caller: Caller, *, name: str) -> dict[str, Any]:
    role = caller.require(name, "viewer")
    with platform.session() as session:
        return workspace_info(store.get_workspace(session, name=name), role)


def delete_workspace(platform: Platform, caller: Caller, *, name: str) -> None:
    caller.require(name, "admin")
    if name == store.DEFAULT_WORKSPACE:
        raise Conflict("the default workspace cannot be deleted")
    with platform.session() as session:
        ws = store.get_workspace(session, name=name)
        if not store.workspace_is_empty(session, workspace=ws):
            raise Conflict(
                f"workspace {name!r} still holds models, pipelines or baselines",
                hint="delete its assays, pipelines, baselines and model versions first",
            )
        store.delete_workspace(session, workspace=ws)
        session.commit()


def member_info(m: store.Membership, p: store.Principal) -> dict[str, Any]:
    return {"principal": p.name, "kind": p.kind, "role": m.role, "since": m.created_at}


def list_members(platform: Platform, caller: Caller, *, workspace: str) -> list[dict[str, Any]]:
    caller.require(workspace, "viewer")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        return [member_info(m, p) for m, p in store.list_memberships(session, workspace=ws)]


def set_member(
    platform: Platform, caller: Caller, *, workspace: str, principal: str, role: str
) -> dict[str, Any]:
    caller.require(workspace, "admin")
    auth.check_role(role)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        who = store.get_principal(session, name=principal)
        if who.is_owner:
            raise InvalidInput("the server owner is admin everywhere; it needs no membership")
        current = store.get_membership(session, workspace=ws, principal=who)
        if current is not None and current.role == "admin" and role != "admin":
            _keep_an_admin(session, ws, leaving=who)
        m = store.set_membership(session, workspace=ws, principal=who, role=role)
        session.commit()
        return member_info(m, who)


def remove_member(platform: Platform, caller: Caller, *, workspace: str, principal: str) -> None:
    caller.require(workspace, "admin")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        who = store.get_principal(session, name=principal)
        current = store.get_membership(session, workspace=ws, principal=who)
        if current is None:
            raise NotFound(f"{principal!r} is not a member of workspace {workspace!r}")
        if current.role == "admin":
            _keep_an_admin(session, ws, leaving=who)
        session.delete(current)
        session.commit()


def _keep_an_admin(session: Any, ws: store.Workspace, *, leaving: store.Principal) -> None:
    admins = [p for m, p in store.list_memberships(session, workspace=ws) if m.role == "admin"]
    if all(p.id == leaving.id for p in admins):
        raise Conflict(
            f"{leaving.name!r} is the last admin of workspace {ws.name!r}",
            hint="make another member admin first",
        )


# -- principals and keys ---------------------------------------------------------------------


def principal_info(p: store.Principal) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind, "is_owner": p.is_owner, "created_at": p.created_at}


def create_principal(
    platform: Platform,
    caller: Caller,
    *,
    name: str,
    workspace: str | None = None,
    role: str | None = None,
    expires_in_days: int | None = None,
) -> dict[str, Any]:
    """A new user and their first key (shown once); optionally a member of a workspace."""
    caller.require_owner("create principals")
    auth.check_principal_name(name)
    if (workspace is None) != (role is None):
        raise InvalidInput("give both workspace and role, or neither")
    if role is not None:
        auth.check_role(role)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace) if workspace else None
        who = store.create_principal(session, name=name)
        if ws is not None and role is not None:
            store.set_membership(session, workspace=ws, principal=who, role=role)
        row, key = auth.issue_key(
            session, principal=who, label="first key", expires_in_days=expires_in_days
        )
        session.commit()
        return {**principal_info(who), "key": key, "key_info": auth.key_info(row, who)}


def list_principals(platform: Platform, caller: Caller) -> list[dict[str, Any]]:
    caller.require_owner("list principals")
    with platform.session() as session:
        return [principal_info(p) for p in store.list_principals(session)]


def whoami(platform: Platform, caller: Caller) -> dict[str, Any]:
    return {
        "principal": caller.principal,
        "key_id": caller.key_id,
        "is_owner": caller.is_owner,
        "workspaces": dict(sorted(caller.roles.items())),
    }


def create_key(
    platform: Platform,
    caller: Caller,
    *,
    principal: str | None,
    label: str,
    expires_in_days: int | None,
) -> dict[str, Any]:
    """A key for yourself, or (the owner only) for another principal."""
    target = principal or caller.principal
    if target != caller.principal:
        caller.require_owner("make keys for other principals")
    with platform.session() as session:
        who = store.get_principal(session, name=target)
        row, key = auth.issue_key(
            session, principal=who, label=label, expires_in_days=expires_in_days
        )
        session.commit()
        return {**auth.key_info(row, who), "key": key}


def list_keys(platform: Platform, caller: Caller, *, principal: str | None) -> list[dict[str, Any]]:
    target = principal or caller.principal
    if target != caller.principal:
        caller.require_owner("list other principals' keys")
    with platform.session() as session:
        who = store.get_principal(session, name=target)
        return [auth.key_info(k, who) for k in store.list_keys(session, principal=who)]


def revoke_key(platform: Platform, caller: Caller, *, key_id: str) -> dict[str, Any]:
    """Your own keys, or any key for the owner, or a service key of a workspace you admin."""
    with platform.session() as session:
        found = store.find_key(session, key_id=key_id)
        if found is None:
            raise NotFound(f"API key {key_id!r} does not exist")
        key, who = found
        mine = who.name == caller.principal or caller.is_owner
        if not mine and not _admins_service(session, caller, who):
            raise NotFound(f"API key {key_id!r} does not exist")
        store.revoke_key(session, key=key)
        session.commit()
        return auth.key_info(key, who)


def _admins_service(session: Any, caller: Caller, who: store.Principal) -> bool:
    if who.kind != "service":
        return False
    workspaces = store.memberships_of(session, principal=who)
    names = {ws.id: ws.name for ws in store.list_workspaces(session)}
    return any(caller.role_in(names[ws_id]) == "admin" for ws_id in workspaces)


def create_service_key(
    platform: Platform,
    caller: Caller,
    *,
    workspace: str,
    name: str,
    role: str,
    expires_in_days: int | None,
) -> dict[str, Any]:
    """A workspace admin's service account (e.g. for CI): a principal that is a member of
    this workspace only, with one key. Its name is ``<workspace>-<name>``."""
    caller.require(workspace, "admin")
    auth.check_role(role)
    full = check_name(f"{workspace}-{name}"[:63], kind="service account")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        who = store.create_principal(session, name=full, kind="service")
        store.set_membership(session, workspace=ws, principal=who, role=role)
        row, key = auth.issue_key(
            session, principal=who, label=name, expires_in_days=expires_in_days
        )
        session.commit()
        return {**auth.key_info(row, who), "key": key, "role": role}


def list_service_keys(
    platform: Platform, caller: Caller, *, workspace: str
) -> list[dict[str, Any]]:
    caller.require(workspace, "admin")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        out = []
        for m, p in store.list_memberships(session, workspace=ws):
            if p.kind == "service":
                out += [
                    auth.key_info(k, p) | {"role": m.role}
                    for k in store.list_keys(session, principal=p)
                ]
        return out


def refuse_unless(condition: bool, message: str, hint: str | None = None) -> None:
    if not condition:
        raise Forbidden(message, hint=hint)
