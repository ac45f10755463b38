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


def find_tenant(session: Session, ref: str) -> Tenant:
    """A tenant by id or name."""
    row = session.get(Tenant, ref) or session.scalar(select(Tenant).where(Tenant.name == ref))
    if row is None:
        raise AdminError(f"no tenant with id or name {ref!r}")
    return row


def find_key(session: Session, ref: str) -> ApiKey:
    """An API key by id or by its (non-secret) prefix; the prefix must be unambiguous."""
    row = session.get(ApiKey, ref)
    if row is not None:
        return row
    rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == ref).limit(2)))
    if len(rows) != 1:
        what = "is ambiguous" if rows else "matches no API key id or prefix"
        raise AdminError(f"{ref!r} {what}")
    return rows[0]


def list_keys(session: Session, tenant_ref: str | None = None) -> list[tuple[ApiKey, str]]:
    """(key, tenant name) of every key, or of one tenant's, oldest first; never secrets."""
    stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_ref is not None:
        stmt = stmt.where(ApiKey.tenant_id == find_tenant(session, tenant_ref).id)
    return [(k, name) for k, name in session.execute(stmt.order_by(ApiKey.created_at, ApiKey.id))]


def key_state(row: ApiKey) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None:
        return "expired" if row.expires_at <= utcnow() else f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC"
    return "active"


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revokes a key (by id or prefix) at once; False when it already was."""
    try:
        row = find_key(session, key_id)
    except AdminError:
        return False
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def rotate_api_key(
    session: Session, key_ref: str, grace_s: float = 0.0, name: str = ""
) -> tuple[ApiKey, str]:
    """A new key for the same tenant; the old one stops working after `grace_s` seconds
    (at once when 0). Returns (old key row, new secret)."""
    old = find_key(session, key_ref)
    if old.revoked_at is not None:
        raise AdminError(f"key {old.prefix} ({old.id}) is revoked; create a new key instead")
    secret = create_api_key(session, old.tenant_id, name or old.name)
    if grace_s > 0:
        old.expires_at = utcnow() + timedelta(seconds=grace_s)
    else:
        old.revoked_at = utcnow()
    session.flush()
    return old, secret


def set_quota(
    session: Session, tenant_ref: str, *, active_jobs: int | None = None, stored_bytes: int | None = None,
    rate_per_s: float | None = None,
) -> Tenant:  # fmt: skip
    """Overrides a tenant's quotas (0 resets one to the settings' default)."""
    row = find_tenant(session, tenant_ref)
    for attr, value in (("max_active_jobs", active_jobs), ("max_stored_bytes", stored_bytes),
                        ("rate_limit_per_s", rate_per_s)):  # fmt: skip
        if value is not None:
            if value < 0:
                raise AdminError(f"{attr} must be >= 0")
            setattr(row, attr, value or None)
    session.flush()
    return row


def authenticate(session: Session, key: str) -> str | None:
    """The tenant id of a valid key (unrevoked, unexpired, its tenant present), else None.
    Touches last_used_at (coarsely)."""
    if not key or len(key) > 256:
        return None
    row = session.scalar(
        select(ApiKey).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key))
    )
    now = utcnow()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row.tenant_id
