"""Tenants and API keys. Keys are shown once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.models import ApiKey, Tenant, new_id, utcnow

KEY_PREFIX = "calm_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # don't write on every request


class AdminError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _add_key(session: Session, tenant_id: str, key: str, name: str = "") -> ApiKey:
    row = ApiKey(id=new_id("key"), tenant_id=tenant_id, name=name, prefix=key[:12], key_hash=hash_key(key))
    session.add(row)
    return row


def create_api_key(session: Session, tenant_id: str, name: str = "") -> str:
    """A new key for the tenant; returns the secret (never stored in clear)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    _add_key(session, tenant_id, key, name)
    session.flush()
    return key


def _create(session: Session, name: str) -> tuple[str, str]:
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise AdminError(f"a tenant named {name!r} already exists")
    tenant = Tenant(id=new_id("tenant"), name=name)
    session.add(tenant)
    session.flush()
    return tenant.id, create_api_key(session, tenant.id, name="initial")


def create_tenant(name: str, *, session: Session | None = None) -> tuple[str, str]:
    """Creates a tenant and its first API key; returns (tenant_id, api_key)."""
    if not name.strip():
        raise AdminError("the tenant name is empty")
    if session is not None:
        return _create(session, name)
    with session_scope() as s:
        return _create(s, name)


def ensure_tenant_key(session: Session, name: str, key: str) -> str:
    """Idempotent bootstrap: the tenant `name` exists and `key` is one of its keys."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=name)
        session.add(tenant)
        session.flush()
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if existing is None:
        _add_key(session, tenant.id, key, name="bootstrap")
    elif existing.tenant_id != tenant.id:
        raise AdminError("the bootstrap key belongs to another tenant")
    session.flush()
    return tenant.id


def revoke_api_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def authenticate(session: Session, key: str) -> str | None:
    """The tenant id of a valid, unrevoked key, else None. Touches last_used_at (coarsely)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row.tenant_id
