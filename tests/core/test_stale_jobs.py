"""The stuck-job reaper (core.jobs.requeue_or_fail_stale), its heartbeat (core.jobs.touch_job)
and `calm-service reap-jobs`, on SQLite and PostgreSQL. A dead worker is simulated by moving
the job's last write (`updated_at`) into the past."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session
from svc_fixtures import core_job_files, merge_body

from core import jobs
from core.cli import main as service_cli
from core.job_request import JobCreate
from core.models import MergeJob, utcnow
from core.settings import Settings
from core.storage import LocalStorage

STALE_S = Settings().stale_job_after_s


def new_job(session: Session, storage: LocalStorage, settings: Settings, tenant: str) -> str:
    ids = core_job_files(session, storage, settings, tenant)
    body = JobCreate.model_validate(merge_body(ids["base"], ids["checkpoints"], ids["datasets"]))
    return jobs.create_job(session, tenant, body, settings=settings)[0].id


def running_job(session: Session, storage: LocalStorage, settings: Settings, tenant: str,
                silent_s: float = 0.0) -> str:  # fmt: skip
    """A job claimed by a worker whose last write was `silent_s` ago."""
    job_id = new_job(session, storage, settings, tenant)
    assert jobs.claim_job(session, job_id, "worker-1")
    age(session, job_id, silent_s)
    return job_id


def age(session: Session, job_id: str, silent_s: float) -> None:
    past = utcnow() - timedelta(seconds=silent_s)
    session.execute(update(MergeJob).where(MergeJob.id == job_id).values(updated_at=past))
    session.commit()


def row(session: Session, job_id: str) -> MergeJob:
    job = session.get(MergeJob, job_id, populate_existing=True)
    assert job is not None
    return job


def test_a_silent_running_job_fails_with_worker_lost(session, storage, settings, tenant) -> None:
    lost = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    alive = running_job(session, storage, settings, tenant, silent_s=STALE_S - 60)
    queued = new_job(session, storage, settings, tenant)  # waiting in the queue is not stale
    age(session, queued, 10 * STALE_S)

    ended = set(jobs.requeue_or_fail_stale(session, utcnow()))
    assert lost in ended and not ended & {alive, queued}
    job = row(session, lost)
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert "stopped responding" in job.error_message and "resubmit" in job.error_message
    assert job.finished_at is not None and job.progress < 1.0
    last = jobs.list_events(session, lost)[-1]
    assert (last.level, last.seq) == ("error", job.event_seq) and "stopped responding" in last.message
    assert (row(session, alive).status, row(session, queued).status) == ("running", "queued")
    assert lost not in jobs.requeue_or_fail_stale(session, utcnow())  # once only
    assert not jobs.finish_job(session, lost, "succeeded")  # the dead worker cannot come back


def test_a_pending_cancel_ends_as_cancelled(session, storage, settings, tenant) -> None:
    job_id = running_job(session, storage, settings, tenant)
    assert jobs.cancel_job(session, tenant, job_id).cancel_requested
    age(session, job_id, STALE_S + 1)
    assert job_id in jobs.requeue_or_fail_stale(session)
    job = row(session, job_id)
    assert (job.status, job.error_code) == ("cancelled", None)
    assert jobs.list_events(session, job_id)[-1].message == "cancelled: the worker stopped responding"


def test_a_heartbeat_keeps_a_quiet_job_alive(session, storage, settings, tenant) -> None:
    job_id = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    assert jobs.touch_job(session, job_id)
    assert job_id not in jobs.requeue_or_fail_stale(session, utcnow())
    assert row(session, job_id).status == "running"
    # The threshold is a setting; `now` is the caller's clock.
    later = utcnow() + timedelta(seconds=120)
    assert job_id in jobs.requeue_or_fail_stale(session, later, stale_after_s=60)
    assert not jobs.touch_job(session, job_id)  # finished: nothing to keep alive


def test_reap_jobs_command(session, storage, settings, tenant, cli_env, capsys, tmp_path) -> None:
    job_id = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    assert service_cli(["--data-dir", str(tmp_path / "var"), "reap-jobs"]) == 0
    assert job_id in capsys.readouterr().out
    assert row(session, job_id).error_code == "worker_lost"
