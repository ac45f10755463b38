"""Runs that lost their worker: retried as a new attempt, or failed once attempts run out.

A worker writes progress at every stage and, while a merge runs, touches the job's
`updated_at` every minute or so (`touch_job`, from a heartbeat thread). A job still `running`
whose `updated_at` is older than settings.stale_job_after_s therefore has no live worker (the
process or the machine died, or it was killed past its hard time limit).

`requeue_or_fail_lost` ends such a run: while `attempt < max_attempts` the job goes back to
`queued` (its outbox mark cleared, so core.outbox publishes it again) and the next claim runs
it as attempt n+1; after the last attempt it fails with `worker_lost` (a job that kills its
worker every time, e.g. out of memory, does not loop); a pending cancel makes it `cancelled`.
`hand_back` is the graceful variant (a worker shutting down returns its job unfinished): the
job is queued again and the attempt is not counted.

Every change is one conditional UPDATE (`status='running'` plus the caller's fence: the
attempt, a cutoff on `updated_at` or the worker id), so reapers on several machines, a
heartbeat racing the sweep and a worker finishing at the same moment are all safe.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.orm import Session

from core.job_events import add_event
from core.models import MergeJob, utcnow
from core.settings import get_settings

WORKER_LOST = "worker_lost"
REQUEUED, FAILED, CANCELLED = "requeued", "failed", "cancelled"


def running(job_id: str, attempt: int | None = None) -> ColumnElement[bool]:
    """The fence of a worker's writes: the job is running, and still on `attempt` if given."""
    cond = (MergeJob.id == job_id) & (MergeJob.status == "running")
    return cond if attempt is None else cond & (MergeJob.attempt == attempt)


def touch_job(session: Session, job_id: str, attempt: int | None = None) -> bool:
    """Heartbeat: marks a running job (on `attempt`) as alive and commits; False when it is
    no longer running, or has been taken over by another attempt."""
    result: Any = session.execute(
        update(MergeJob)
        .where(running(job_id, attempt))
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def lost_message(stale_after_s: float) -> str:
    minutes = stale_after_s / 60
    return (
        f"the worker running this job stopped responding (no progress or heartbeat for over "
        f"{minutes:g} min; it crashed, was killed or lost its machine)"
    )


def requeue_or_fail_lost(
    session: Session, job_id: str, reason: str, *, fence: ColumnElement[bool] | None = None
) -> str | None:
    """Ends the current run of a running job whose worker is gone (`reason` says how) and
    commits: REQUEUED (attempts left), FAILED (worker_lost) or CANCELLED (a cancel was
    pending). None when the job is not running or `fence` no longer holds."""
    where = running(job_id) & (fence if fence is not None else true())
    columns = (MergeJob.attempt, MergeJob.max_attempts, MergeJob.cancel_requested, MergeJob.stage)
    row = session.execute(select(*columns).where(where)).first()
    if row is None:
        session.rollback()
        return None
    now = utcnow()
    if row.cancel_requested:
        outcome, values = CANCELLED, {"status": "cancelled", "finished_at": now}
        text, level = "cancelled: the worker stopped responding", "warning"
    elif row.attempt < row.max_attempts:
        outcome = REQUEUED
        values = {"status": "queued", "stage": "queued", "progress": 0.0, "published_at": None}
        text = (f"attempt {row.attempt} of {row.max_attempts} lost: {reason}; "
                f"retrying as attempt {row.attempt + 1}")  # fmt: skip
        level = "warning"
    else:
        outcome, level = FAILED, "error"
        message = f"{reason}. All {row.max_attempts} attempt(s) were lost; resubmit the job to run it again."
        values = {"status": "failed", "finished_at": now, "error_code": WORKER_LOST, "error_message": message}
        text = f"failed: {message}"
    result: Any = session.execute(
        update(MergeJob)
        .where(where, MergeJob.attempt == row.attempt)
        .values(updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # a heartbeat, the worker itself or another reaper got there first
        session.rollback()
        return None
    add_event(session, job_id, text, level=level, stage=values.get("stage", row.stage), fraction=None)
    session.commit()
    return outcome


def hand_back(session: Session, job_id: str, attempt: int, reason: str) -> bool:
    """A live worker returns its unfinished run (e.g. it is shutting down): the job is queued
    again, to be published, and this attempt is not counted. Commits; False if not running."""
    result: Any = session.execute(
        update(MergeJob)
        .where(running(job_id, attempt))
        .values(status="queued", stage="queued", progress=0.0, published_at=None, worker_id=None,
                attempt=attempt - 1, updated_at=utcnow())  # fmt: skip
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    add_event(session, job_id, f"handed back during attempt {attempt}: {reason}; it will restart",
              level="warning", stage="queued", fraction=0.0)  # fmt: skip
    session.commit()
    return True


def requeue_or_fail_stale(
    session: Session, now: datetime | None = None, *, stale_after_s: float | None = None, limit: int = 200
) -> dict[str, str]:
    """Ends the run of every `running` job silent for longer than `stale_after_s` (default
    settings.stale_job_after_s) as of `now` (see `requeue_or_fail_lost`). Returns
    {job id: outcome} for the jobs it changed; requeued ones still need publishing."""
    now = now or utcnow()
    stale_after_s = get_settings().stale_job_after_s if stale_after_s is None else stale_after_s
    cutoff = now - timedelta(seconds=stale_after_s)
    stmt = (
        select(MergeJob.id)
        .where(MergeJob.status == "running", MergeJob.updated_at < cutoff)
        .order_by(MergeJob.updated_at)
        .limit(limit)
    )
    stale = list(session.scalars(stmt))
    session.rollback()  # end the read; each job gets its own short write transaction
    reason = lost_message(stale_after_s)
    outcomes = {job_id: requeue_or_fail_lost(session, job_id, reason, fence=MergeJob.updated_at < cutoff)
                for job_id in stale}  # fmt: skip
    return {job_id: outcome for job_id, outcome in outcomes.items() if outcome is not None}
