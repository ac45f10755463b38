"""All merge-job state changes, so the API routes and the worker task stay thin.

Every function takes a Session and commits its own unit of work. State changes are single
conditional UPDATEs (`... WHERE status = 'queued'`), so concurrent workers, redelivered Celery
messages and cancels race safely.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import ServiceError, not_found
from core.job_events import add_event, append_event, clean_number, list_events
from core.job_plan import merge_plan, service_run
from core.job_request import JobCreate
from core.job_results import record_evaluations, record_masks, result_prefix, spec_for_job, storage_keys
from core.job_validation import check_compatibility, normalise, request_hash, resolve_files
from core.models import FINISHED_STATUSES, JobFile, MergeJob, new_id, utcnow
from core.settings import Settings, get_settings
from core.stale_jobs import (
    WORKER_LOST,
    hand_back,
    requeue_or_fail_lost,
    requeue_or_fail_stale,
    running,
    touch_job,
)
from core.storage import LocalStorage

__all__ = [
    "WORKER_LOST", "append_event", "cancel_job", "claim_attempt", "claim_job", "create_job",
    "discard_job", "finish_job", "get_job", "plan_job", "hand_back", "is_cancel_requested", "list_events",
    "record_evaluations", "record_masks", "requeue_or_fail_lost", "requeue_or_fail_stale",
    "result_prefix", "spec_for_job", "touch_job", "update_progress",
]  # fmt: skip
ACTIVE = ("validating", "queued", "running")


def get_job(session: Session, tenant_id: str, job_id: str) -> MergeJob:
    """The tenant's job, else 404 job_not_found (also for other tenants' ids)."""
    job = session.get(MergeJob, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        raise not_found("job", job_id)
    return job


def _by_key(session: Session, tenant_id: str, key: str, digest: str) -> MergeJob | None:
    job = session.scalar(
        select(MergeJob).where(MergeJob.tenant_id == tenant_id, MergeJob.idempotency_key == key)
    )
    if job is not None and job.request_hash != digest:
        raise ServiceError(
            "idempotency_conflict",
            f"Idempotency-Key {key!r} was used for job {job.id} with a different request body",
            status=409,
        )
    return job


def create_job(
    session: Session,
    tenant_id: str,
    body: JobCreate,
    *,
    idempotency_key: str | None = None,
    settings: Settings | None = None,
) -> tuple[MergeJob, bool]:
    """Validates `body` and inserts a `queued` job; returns (job, created). With a known
    Idempotency-Key and the same body, returns the earlier job and False. The caller enqueues
    the job after this returns (the row is committed first, so a worker can claim it)."""
    settings = settings or get_settings()
    request = normalise(body)
    digest = request_hash(request)
    if idempotency_key and (job := _by_key(session, tenant_id, idempotency_key, digest)):
        return job, False
    files = resolve_files(session, tenant_id, body, settings)
    data_notes = check_compatibility(body, files)
    now = utcnow()
    job = MergeJob(
        id=new_id("merge"), tenant_id=tenant_id, status="validating", request=request,
        request_hash=digest, method=body.method, seed=body.seed, meta=dict(body.metadata),
        idempotency_key=idempotency_key, created_at=now, updated_at=now, progress=0.0,
        attempt=0, max_attempts=settings.max_attempts, published_at=None,
        files=[JobFile(role=role, file_id=f.id) for role, f in files.items()],
    )  # fmt: skip
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # a concurrent twin took the key, or a file was just deleted
        session.rollback()
        if idempotency_key and (job := _by_key(session, tenant_id, idempotency_key, digest)):
            return job, False
        raise ServiceError("file_not_found", "a referenced file was deleted meanwhile", 404) from None
    _, notes = service_run(body.run, settings)
    add_event(session, job.id, "; ".join(["request validated", *notes]), stage="validating")
    for note in data_notes:
        add_event(session, job.id, note, level="warning", stage="validating")
    job.status = "queued"
    add_event(session, job.id, "queued", stage="queued", fraction=0.0)
    session.commit()
    session.refresh(job)
    return job, True


def plan_job(session: Session, tenant_id: str, body: JobCreate, *, settings: Settings | None = None
             ) -> dict[str, Any]:  # fmt: skip
    """A dry run: every check `create_job` makes (but the job quota), then the resolved plan
    (core.job_plan.merge_plan). Creates nothing."""
    settings = settings or get_settings()
    request = normalise(body)
    files = resolve_files(session, tenant_id, body, settings, quota=False)
    data_notes = check_compatibility(body, files)
    session.rollback()
    return merge_plan(body, request, settings, data_notes)


def discard_job(session: Session, job_id: str) -> bool:
    """Deletes a job that never reached the queue (enqueueing failed), so a retry with the same
    Idempotency-Key starts afresh. Only a still-queued job is deleted."""
    result = session.execute(
        delete(MergeJob)
        .where(MergeJob.id == job_id, MergeJob.status == "queued")
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def claim_attempt(
    session: Session, job_id: str, worker: str, *, stale_after_s: float | None = None
) -> int | None:
    """Atomically moves a queued job to running for `worker` as its next attempt; returns
    that attempt's number (1, 2, ...), or None if someone else has it, it was cancelled, or it
    is finished. With `stale_after_s`, a running job whose last write is older than that (its
    worker died) and that has attempts left is taken over as the next attempt."""
    now = utcnow()
    claimable = MergeJob.status == "queued"
    if stale_after_s is not None:
        cutoff = now - timedelta(seconds=stale_after_s)
        claimable = or_(claimable, and_(MergeJob.status == "running", MergeJob.updated_at < cutoff,
                                        MergeJob.attempt < MergeJob.max_attempts))  # fmt: skip
    attempt = session.execute(
        update(MergeJob)
        .where(MergeJob.id == job_id, claimable, MergeJob.cancel_requested.is_(False))
        .values(
            status="running", worker_id=worker, started_at=now, updated_at=now, stage="starting",
            progress=0.0, attempt=MergeJob.attempt + 1,
        )  # fmt: skip
        .returning(MergeJob.attempt, MergeJob.max_attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if attempt is None:
        session.rollback()
        return None
    note = f"attempt {attempt[0]} of {attempt[1]} claimed by {worker}"
    add_event(session, job_id, note, stage="starting", fraction=0.0, metrics={"attempt": attempt[0]})
    session.commit()
    return int(attempt[0])


def claim_job(session: Session, job_id: str, worker: str, *, stale_after_s: float | None = None) -> bool:
    """`claim_attempt`, as a yes/no."""
    return claim_attempt(session, job_id, worker, stale_after_s=stale_after_s) is not None


def update_progress(
    session: Session,
    job_id: str,
    stage: str,
    fraction: float,
    message: str = "",
    metrics: dict[str, Any] | None = None,
    *,
    min_interval_s: float | None = None,
    attempt: int | None = None,
) -> bool:
    """Records progress of a running job (stage, fraction, an event). Writes at most once per
    `min_interval_s` (default settings.progress_min_interval_s) unless the stage changes or
    the fraction reaches 1, and only while the job is on `attempt` (if given). Returns whether
    it wrote."""
    if min_interval_s is None:
        min_interval_s = get_settings().progress_min_interval_s
    job = session.get(MergeJob, job_id, populate_existing=True)
    if job is None or job.status != "running" or attempt not in (None, job.attempt):
        return False
    now = utcnow()
    fraction = clean_number(min(max(fraction, 0.0), 1.0)) or 0.0
    recent = (now - job.updated_at).total_seconds() < min_interval_s
    if job.stage == stage and recent and fraction < 1.0:
        return False
    result: Any = session.execute(
        update(MergeJob)
        .where(running(job_id, attempt))
        .values(stage=stage[:64], progress=fraction, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    add_event(session, job_id, message or stage, stage=stage[:64], fraction=fraction, metrics=metrics)
    session.commit()
    return True


def is_cancel_requested(session: Session, job_id: str) -> bool:
    row = session.execute(
        select(MergeJob.status, MergeJob.cancel_requested).where(MergeJob.id == job_id)
    ).first()
    return row is None or row.cancel_requested or row.status == "cancelled"


def cancel_job(session: Session, tenant_id: str, job_id: str) -> MergeJob:
    """Queued -> cancelled now; running -> cancel_requested (the worker stops at its next
    check); finished -> 409 job_already_finished."""
    job = get_job(session, tenant_id, job_id)
    now = utcnow()
    for from_status, values, note in (
        (("validating", "queued"), {"status": "cancelled", "finished_at": now}, "cancelled"),
        (("running",), {}, "cancellation requested"),
    ):
        result = session.execute(
            update(MergeJob)
            .where(MergeJob.id == job_id, MergeJob.status.in_(from_status))
            .values(cancel_requested=True, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            add_event(session, job_id, note, level="warning", stage=job.stage)
            session.commit()
            return get_job(session, tenant_id, job_id)
    session.rollback()
    job = get_job(session, tenant_id, job_id)
    if job.status in FINISHED_STATUSES:
        raise ServiceError("job_already_finished", f"job {job_id} is already {job.status}", 409)
    return job


def finish_job(
    session: Session,
    job_id: str,
    status: str,
    error_code: str | None = None,
    error_message: str | None = None,
    result_paths: dict[str, Any] | None = None,
    *,
    storage: LocalStorage | None = None,
    attempt: int | None = None,
) -> bool:
    """Ends a job: `succeeded` (with result_paths {"merged","masks","report"}: storage keys,
    or paths under `storage`'s root), `failed` (error code + message) or `cancelled`.
    With `attempt` (a worker ending its run), only a job still running that attempt is ended.
    Returns False if the job had already finished (or moved on to another attempt)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {FINISHED_STATUSES}")
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now}
    if status == "succeeded":
        values.update(stage="done", progress=1.0)
    if error_code or error_message:
        values.update(error_code=(error_code or "internal_error")[:64], error_message=error_message)
    if result_paths:
        values.update(storage_keys(result_paths, storage))
    where = running(job_id, attempt) if attempt is not None else MergeJob.status.in_(ACTIVE)
    result = session.execute(
        update(MergeJob)
        .where(MergeJob.id == job_id, where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    text = status if not error_message else f"{status}: {error_message}"
    level = {"succeeded": "info", "failed": "error", "cancelled": "warning"}[status]
    add_event(session, job_id, text, level=level, stage=values.get("stage"), fraction=values.get("progress"))
    session.commit()
    return True
