"""API keys, principals and roles: who the caller is and what they may do where.

A key reads ``lm_<key id>_<secret>``: the key id (12 hex characters) finds the row, the
secret (32 random bytes) is checked against the stored sha256 in constant time. A key of 256
random bits needs no slow hash: nobody can guess it, and the hash only keeps a stolen database
from being a list of working keys. Keys are shown once, when they are made.

Roles are per workspace — ``viewer`` reads, ``editor`` changes models, pipelines,
deployments and rollouts, ``admin`` manages members, service keys and the workspace — and the
server ``owner`` (made on first start, its key written to ``LASTMILE_HOME/admin.key``, mode
0600) is admin everywhere and the only one who creates workspaces and principals. A resource
in a workspace the caller is not a member of answers 404, so its existence is not revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlmodel import Session

from manager import store
from manager.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from manager.names import KEY_RE, check_name
from manager.private_files import write_secret
from manager.services.context import Platform

log = logging.getLogger(__name__)

ROLE_RANK = {"viewer": 1, "editor": 2, "admin": 3}
OWNER_NAME = "owner"
OWNER_KEY_FILE = "admin.key"
MAX_KEY_DAYS = 3650


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one request, with its roles by workspace name."""

    principal: str
    key_id: str
    is_owner: bool
    roles: dict[str, str] = field(default_factory=dict)

    def role_in(self, workspace: str) -> str | None:
        return "admin" if self.is_owner else self.roles.get(workspace)

    def require(self, workspace: str, role: str) -> str:
        """The caller's role in ``workspace`` if at least ``role``; a non-member gets the
        same 404 as for a workspace that does not exist."""
        have = self.role_in(workspace)
        if have is None:
            raise NotFound(f"workspace {workspace!r} does not exist")
        if ROLE_RANK[have] < ROLE_RANK[role]:
            raise Forbidden(
                f"{self.principal!r} is {have} in workspace {workspace!r}; this needs {role}",
                hint="ask a workspace admin: lastmile workspace member add",
            )
        return have

    def require_owner(self, what: str) -> None:
        if not self.is_owner:
            raise Forbidden(f"only the server owner may {what}", hint="use the owner's key")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"lm_{key_id}_{secrets.token_urlsafe(32)}"


def issue_key(
    session: Session,
    *,
    principal: store.Principal,
    label: str = "",
    expires_in_days: int | None = None,
) -> tuple[store.ApiKey, str]:
    """Make a key for ``principal``; the key itself is returned once and never stored."""
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_KEY_DAYS:
        raise InvalidInput(
            f"expires_in_days must be between 1 and {MAX_KEY_DAYS}, not {expires_in_days}"
        )
    key_id, key = new_key()
    expires = (
        datetime.now(timezone.utc) + timedelta(days=expires_in_days)
        if expires_in_days is not None
        else None
    )
    row = store.add_key(
        session,
        principal=principal,
        key_id=key_id,
        secret_sha256=hash_key(key),
        label=label,
        expires_at=expires,
    )
    return row, key


def _aware(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts


def authenticate(platform: Platform, authorization: str | None) -> Caller:
    """The caller for an ``Authorization: Bearer <key>`` header; anything else is a 401."""
    hint = "send Authorization: Bearer <key> (lastmile login stores one for the CLI)"
    if not authorization:
        raise Unauthenticated("this call needs an API key", hint=hint)
    scheme, _, token = authorization.partition(" ")
    match = KEY_RE.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        raise Unauthenticated("the Authorization header is not a Lastmile API key", hint=hint)
    with platform.session() as session:
        found = store.find_key(session, key_id=match.group(1))
        # compare even when the id is unknown, so timing does not tell ids apart
        expected = found[0].secret_sha256 if found else "0" * 64
        if not hmac.compare_digest(expected, hash_key(match.group(0))) or found is None:
            raise Unauthenticated("unknown API key", hint=hint)
        key, principal = found
        now = datetime.now(timezone.utc)
        if key.revoked_at is not None:
            raise Unauthenticated(f"API key {key.key_id} was revoked", hint="use another key")
        expires = _aware(key.expires_at)
        if expires is not None and expires <= now:
            raise Unauthenticated(f"API key {key.key_id} has expired", hint="make a new key")
        roles = {}
        by_id = store.memberships_of(session, principal=principal)
        for ws in store.list_workspaces(session):
            if ws.id in by_id:
                roles[ws.name] = by_id[ws.id]
        last = _aware(key.last_used_at)
        if last is None or now - last > timedelta(minutes=1):
            key.last_used_at = now
            session.add(key)
            session.commit()
        return Caller(
            principal=principal.name,
            key_id=key.key_id,
            is_owner=principal.is_owner,
            roles=roles,
        )


def ensure_owner(platform: Platform) -> str | None:
    """Make the server owner and its key on first start; returns the new key, else None.

    The key goes to ``LASTMILE_HOME/admin.key`` (mode 0600, created exclusively).
    """
    home = platform.settings.home
    with platform.session() as session:
        if store.find_owner(session) is not None:
            return None
        owner = store.create_principal(session, name=OWNER_NAME, is_owner=True)
        _row, key = issue_key(session, principal=owner, label="created at first start")
        path = home / OWNER_KEY_FILE
        write_secret(path, key)
        session.commit()
    log.warning("server owner created; its API key is in %s", path)
    return key


def check_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise InvalidInput(f"unknown role {role!r}", hint="use viewer, editor or admin")
    return role


def key_info(key: store.ApiKey, principal: store.Principal) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "principal": principal.name,
        "label": key.label,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    }


def check_principal_name(name: str) -> str:
    return check_name(name, kind="principal")
