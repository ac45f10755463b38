"""Jobs whose worker died: a heartbeat keeps live ones fresh, a reaper ends silent ones.

A worker writes progress at every stage and, while a merge runs, touches the job's
`updated_at` every minute or so (`touch_job`, from a heartbeat thread). A job still `running`
whose `updated_at` is older than settings.stale_job_after_s therefore has no live worker (the
process or the machine died, or it was killed past its hard time limit). `requeue_or_fail_stale`
ends such jobs: `failed` with code `worker_lost`, or `cancelled` if a cancel was pending.
They are not put back on the queue automatically: a job that kills its worker (out of memory,
say) would loop; the message tells the user to resubmit.

Every change is one conditional UPDATE (`status='running' AND updated_at < cutoff`), so
several workers sweeping at once, and a heartbeat racing the sweep, are safe.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.job_events import add_event
from core.models import MergeJob, utcnow
from core.settings import get_settings

WORKER_LOST = "worker_lost"


def touch_job(session: Session, job_id: str) -> bool:
    """Heartbeat: marks a running job as alive (updated_at = now) and commits; False when it
    is no longer running."""
    result: Any = session.execute(
        update(MergeJob)
        .where(MergeJob.id == job_id, MergeJob.status == "running")
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def lost_message(stale_after_s: float) -> str:
    minutes = stale_after_s / 60
    return (
        f"the worker running this job stopped responding (no progress or heartbeat for over "
        f"{minutes:g} min; it crashed, was killed or lost its machine). Nothing was saved; "
        "resubmit the job to run it again."
    )


def _end_one(session: Session, job: Any, cutoff: datetime, now: datetime, message: str) -> bool:
    """`job`: a (id, cancel_requested, stage) row."""
    cancelled = bool(job.cancel_requested)
    values: dict[str, Any] = {"status": "cancelled", "finished_at": now, "updated_at": now}
    if not cancelled:
        values.update(status="failed", error_code=WORKER_LOST, error_message=message)
    result: Any = session.execute(
        update(MergeJob)
        .where(MergeJob.id == job.id, MergeJob.status == "running", MergeJob.updated_at < cutoff)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # a heartbeat or the worker itself got there first
        session.rollback()
        return False
    text = "cancelled: the worker stopped responding" if cancelled else f"failed: {message}"
    add_event(session, job.id, text, level="warning" if cancelled else "error", stage=job.stage)
    session.commit()
    return True


def requeue_or_fail_stale(
    session: Session, now: datetime | None = None, *, stale_after_s: float | None = None, limit: int = 200
) -> list[str]:
    """Ends `running` jobs silent for longer than `stale_after_s` (default
    settings.stale_job_after_s) as of `now`: `failed` / worker_lost (or `cancelled` when a
    cancel was requested), each with an event. Returns the ids of the jobs it ended."""
    now = now or utcnow()
    stale_after_s = get_settings().stale_job_after_s if stale_after_s is None else stale_after_s
    cutoff = now - timedelta(seconds=stale_after_s)
    stmt = (
        select(MergeJob.id, MergeJob.cancel_requested, MergeJob.stage)
        .where(MergeJob.status == "running", MergeJob.updated_at < cutoff)
        .order_by(MergeJob.updated_at)
        .limit(limit)
    )
    stale = list(session.execute(stmt))
    session.rollback()  # end the read; each job gets its own short write transaction
    message = lost_message(stale_after_s)
    return [job.id for job in stale if _end_one(session, job, cutoff, now, message)]
