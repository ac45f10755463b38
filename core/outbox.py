"""The enqueue outbox: every committed `queued` job reaches the broker.

The job row is the outbox entry. A job is committed `queued` with `published_at` NULL (by the
API, or by a requeue of a lost or handed-back run); whoever committed it publishes the
`calm.run_merge` message and then stamps `published_at`. If that process dies in between (or
the broker was briefly down), `publish_pending` — run by the periodic sweeper — finds queued
jobs still unstamped after settings.outbox_grace_s and publishes them.

A message may therefore be published twice (the API and the sweeper racing, a crash after the
send but before the stamp). That is harmless: the worker's claim is a conditional UPDATE
(`WHERE status='queued'`), so the second delivery finds nothing to claim and is acknowledged.
The stamp is fenced by `attempt`, so a late stamp from an earlier cycle never marks a job that
was requeued since as published.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import MergeJob, utcnow
from core.queue import QueueUnavailable, enqueue_merge
from core.settings import Settings, get_settings

log = logging.getLogger("calm.outbox")


def publish_job(session: Session, job_id: str, settings: Settings | None = None) -> bool:
    """Sends the job's message, then stamps `published_at` (committed). Raises
    QueueUnavailable when the broker is down (the job stays in the outbox). False when the
    job is no longer queued (nothing sent); True once the message is sent."""
    attempt = session.scalar(
        select(MergeJob.attempt).where(MergeJob.id == job_id, MergeJob.status == "queued")
    )
    session.rollback()
    if attempt is None:
        return False
    enqueue_merge(job_id, settings)
    session.execute(
        update(MergeJob)
        .where(MergeJob.id == job_id, MergeJob.attempt == attempt, MergeJob.published_at.is_(None))
        .values(published_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return True


def pending(session: Session, grace_s: float, limit: int) -> list[str]:
    """Queued jobs not stamped as published for longer than `grace_s`, oldest first."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    stmt = (
        select(MergeJob.id)
        .where(MergeJob.status == "queued", MergeJob.published_at.is_(None), MergeJob.updated_at < cutoff)
        .order_by(MergeJob.updated_at)
        .limit(limit)
    )
    ids = list(session.scalars(stmt))
    session.rollback()
    return ids


def publish_pending(session: Session, grace_s: float | None = None, limit: int = 500) -> list[str]:
    """Publishes every job left in the outbox for `grace_s` (default settings.outbox_grace_s);
    returns their ids. Stops at the first broker error (logged; the next sweep retries)."""
    grace_s = get_settings().outbox_grace_s if grace_s is None else grace_s
    done: list[str] = []
    for job_id in pending(session, grace_s, limit):
        try:
            if publish_job(session, job_id):
                done.append(job_id)
        except QueueUnavailable:
            log.warning("outbox: the broker is unreachable; %s job(s) wait for the next sweep",
                        len(pending(session, grace_s, limit)))  # fmt: skip
            break
    return done
