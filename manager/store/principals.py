"""Principals and their API keys. Keys are stored as sha256 of a 256-bit random secret."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from manager.errors import Conflict, NotFound
from manager.store.entities import ApiKey, Principal, utcnow


def create_principal(
    session: Session, *, name: str, kind: str = "user", is_owner: bool = False
) -> Principal:
    principal = Principal(name=name, kind=kind, is_owner=is_owner)
    session.add(principal)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"principal {name!r} already exists", hint="pick another name") from exc
    return principal


def get_principal(session: Session, *, name: str) -> Principal:
    found = session.exec(select(Principal).where(Principal.name == name)).first()
    if not found:
        raise NotFound(f"principal {name!r} does not exist", hint="lastmile principal list")
    return found


def find_owner(session: Session) -> Principal | None:
    return session.exec(select(Principal).where(col(Principal.is_owner).is_(True))).first()


def list_principals(session: Session) -> Sequence[Principal]:
    return session.exec(select(Principal).order_by(Principal.name)).all()


def add_key(
    session: Session,
    *,
    principal: Principal,
    key_id: str,
    secret_sha256: str,
    label: str,
    expires_at: datetime | None,
) -> ApiKey:
    key = ApiKey(
        key_id=key_id,
        principal_id=principal.id,  # type: ignore[arg-type]
        secret_sha256=secret_sha256,
        label=label,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key


def find_key(session: Session, *, key_id: str) -> tuple[ApiKey, Principal] | None:
    row = session.exec(
        select(ApiKey, Principal).where(
            ApiKey.key_id == key_id, ApiKey.principal_id == Principal.id
        )
    ).first()
    return (row[0], row[1]) if row else None


def list_keys(session: Session, *, principal: Principal) -> Sequence[ApiKey]:
    return session.exec(
        select(ApiKey).where(ApiKey.principal_id == principal.id).order_by(col(ApiKey.id))
    ).all()


def revoke_key(session: Session, *, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.flush()
    return key


def get_key(session: Session, *, key_id: str) -> tuple[ApiKey, Principal]:
    found = find_key(session, key_id=key_id)
    if found is None:
        raise NotFound(f"API key {key_id!r} does not exist")
    return found
