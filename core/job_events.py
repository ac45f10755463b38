"""Job events: an append-only log per job with a gap-free, monotonic `seq`.

`seq` comes from an atomic `UPDATE merge_jobs SET event_seq = event_seq + 1 ... RETURNING`, so
concurrent writers (the worker's progress, the API's cancel) never collide.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import JobEvent, MergeJob, utcnow

LEVELS = ("debug", "info", "warning", "error")


def clean_number(value: Any) -> float | None:
    """JSON-safe float (NaN/Inf -> None; PostgreSQL's json rejects them)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def clean_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        out[str(k)] = v if isinstance(v, str | bool) else clean_number(v)
    return out


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    stage: str | None = None,
    fraction: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> JobEvent:
    """Appends an event in the caller's transaction (no commit); returns it."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    seq = session.execute(
        update(MergeJob)
        .where(MergeJob.id == job_id)
        .values(event_seq=MergeJob.event_seq + 1)
        .returning(MergeJob.event_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if seq is None:
        raise LookupError(f"no merge job {job_id!r}")
    event = JobEvent(
        job_id=job_id,
        seq=seq,
        created_at=utcnow(),
        level=level,
        stage=stage,
        message=message[:4000],
        fraction=None if fraction is None else clean_number(min(max(fraction, 0.0), 1.0)),
        metrics=clean_metrics(metrics),
    )
    session.add(event)
    session.flush()
    return event


def append_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    stage: str | None = None,
    fraction: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """Appends an event and commits; returns its seq."""
    event = add_event(session, job_id, message, level=level, stage=stage, fraction=fraction, metrics=metrics)
    session.commit()
    return event.seq


def list_events(session: Session, job_id: str, after_seq: int = 0, limit: int = 100) -> list[JobEvent]:
    """Events with seq > after_seq, oldest first."""
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return list(session.scalars(stmt))
