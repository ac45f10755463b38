"""Tenants and API keys: keys are stored hashed, revocable, and resolve to their tenant."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.admin import (
    AdminError,
    authenticate,
    create_api_key,
    create_tenant,
    ensure_tenant_key,
    revoke_api_key,
)
from core.models import ApiKey


def test_keys_are_hashed_and_resolve_to_their_tenant(session: Session) -> None:
    name = f"acme-{uuid.uuid4().hex[:6]}"
    tenant_id, key = create_tenant(name, session=session)
    session.commit()
    row = session.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant_id))
    assert row is not None and key not in (row.key_hash, row.prefix) and key.startswith(row.prefix)
    assert authenticate(session, key) == tenant_id
    assert row.last_used_at is not None
    assert authenticate(session, key + "x") is None
    second = create_api_key(session, tenant_id, "ci")
    session.commit()
    assert revoke_api_key(session, row.id) is True
    session.commit()
    assert authenticate(session, key) is None and authenticate(session, second) == tenant_id
    with pytest.raises(AdminError):
        create_tenant(name, session=session)


def test_bootstrap_key_is_idempotent(session: Session) -> None:
    name, key = f"boot-{uuid.uuid4().hex[:6]}", f"calm_{uuid.uuid4().hex}"
    first = ensure_tenant_key(session, name, key)
    assert ensure_tenant_key(session, name, key) == first
    session.commit()
    assert authenticate(session, key) == first
