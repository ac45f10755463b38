"""Cursor pagination over a tenant's rows, newest first; the cursor is the last row's id."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from core.errors import ServiceError

T = TypeVar("T")
MAX_LIMIT = 100


def page(
    session: Session,
    model: type[T],
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    where: tuple[Any, ...] = (),
) -> tuple[list[T], bool]:
    """Rows of `model` for the tenant ordered by (created_at, id) descending, strictly after
    the row `after`; returns (rows, has_more). Uses the (tenant_id, created_at, id) index."""
    m: Any = model
    stmt: Select[Any] = select(m).where(m.tenant_id == tenant_id, *where)
    if after:
        cursor = session.execute(
            select(m.created_at, m.id).where(m.id == after, m.tenant_id == tenant_id)
        ).first()
        if cursor is None:
            raise ServiceError("invalid_cursor", f"after={after!r} is not an id in this list")
        stmt = stmt.where(
            or_(
                m.created_at < cursor.created_at,
                and_(m.created_at == cursor.created_at, m.id < cursor.id),
            )
        )
    limit = max(1, min(limit, MAX_LIMIT))
    rows = list(session.scalars(stmt.order_by(m.created_at.desc(), m.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
