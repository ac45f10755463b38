"""Runs that lost their worker (core.stale_jobs): the reaper retries them as the next attempt
and fails them `worker_lost` after the last; a pending cancel wins; the heartbeat and the
attempt fence; a graceful hand-back; `calm-service reap-jobs`. SQLite and PostgreSQL; a dead
worker is simulated by moving the job's last write (`updated_at`) into the past."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session
from svc_fixtures import core_job_files, merge_body

from core import jobs
from core.job_request import JobCreate
from core.models import MergeJob, utcnow
from core.settings import Settings
from core.storage import LocalStorage
from service.cli import main as service_cli

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


def test_a_lost_run_is_retried_then_fails_worker_lost(session, storage, settings, tenant) -> None:
    lost = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    alive = running_job(session, storage, settings, tenant, silent_s=STALE_S - 60)
    queued = new_job(session, storage, settings, tenant)  # waiting in the queue is not stale
    age(session, queued, 10 * STALE_S)

    ended = jobs.requeue_or_fail_stale(session, utcnow())
    assert ended[lost] == "requeued" and not ended.keys() & {alive, queued}
    job = row(session, lost)
    assert (job.status, job.attempt, job.max_attempts, job.published_at) == ("queued", 1, 2, None)
    last = jobs.list_events(session, lost)[-1]
    assert last.level == "warning" and "attempt 1 of 2 lost" in last.message and "attempt 2" in last.message
    assert not jobs.finish_job(session, lost, "succeeded", attempt=1)  # the dead run cannot come back
    assert jobs.claim_attempt(session, lost, "worker-2") == 2
    assert not jobs.update_progress(session, lost, "x", 0.5, attempt=1, min_interval_s=0)  # fenced
    assert not jobs.touch_job(session, lost, attempt=1) and jobs.touch_job(session, lost, attempt=2)

    age(session, lost, STALE_S + 60)  # the second run is lost too: no attempts left
    assert jobs.requeue_or_fail_stale(session, utcnow())[lost] == "failed"
    job = row(session, lost)
    assert (job.status, job.error_code, job.attempt) == ("failed", "worker_lost", 2)
    assert "stopped responding" in job.error_message and "resubmit" in job.error_message
    assert "2 attempt" in job.error_message and job.finished_at is not None
    last = jobs.list_events(session, lost)[-1]
    assert (last.level, last.seq) == ("error", job.event_seq)
    assert (row(session, alive).status, row(session, queued).status) == ("running", "queued")
    assert lost not in jobs.requeue_or_fail_stale(session, utcnow())  # once only


def test_a_pending_cancel_ends_as_cancelled(session, storage, settings, tenant) -> None:
    job_id = running_job(session, storage, settings, tenant)
    assert jobs.cancel_job(session, tenant, job_id).cancel_requested
    age(session, job_id, STALE_S + 1)
    assert jobs.requeue_or_fail_stale(session)[job_id] == "cancelled"
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
    assert jobs.requeue_or_fail_stale(session, later, stale_after_s=60)[job_id] == "requeued"
    assert not jobs.touch_job(session, job_id)  # no longer running: nothing to keep alive


def test_stale_takeover_needs_attempts_left(session, storage, settings, tenant) -> None:
    job_id = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    assert jobs.claim_attempt(session, job_id, "w2", stale_after_s=STALE_S) == 2  # a redelivery
    age(session, job_id, STALE_S + 60)
    assert jobs.claim_attempt(session, job_id, "w3", stale_after_s=STALE_S) is None  # that was the last
    assert jobs.requeue_or_fail_stale(session)[job_id] == "failed"


def test_hand_back_requeues_without_counting_the_attempt(session, storage, settings, tenant) -> None:
    job_id = running_job(session, storage, settings, tenant)
    assert not jobs.hand_back(session, job_id, 2, "shutting down")  # not this worker's attempt
    assert jobs.hand_back(session, job_id, 1, "shutting down")
    job = row(session, job_id)
    assert (job.status, job.attempt, job.published_at, job.worker_id) == ("queued", 0, None, None)
    assert "handed back during attempt 1: shutting down" in jobs.list_events(session, job_id)[-1].message
    assert jobs.claim_attempt(session, job_id, "w2") == 1


def test_reap_jobs_command(session, storage, settings, tenant, cli_env, capsys, tmp_path) -> None:
    job_id = running_job(session, storage, settings, tenant, silent_s=STALE_S + 60)
    assert service_cli(["--data-dir", str(tmp_path / "var"), "reap-jobs"]) == 0
    out = capsys.readouterr().out
    assert f"{job_id}: requeued" in out and "published" in out
    job = row(session, job_id)
    assert job.status == "queued" and job.published_at is not None
    bodies = [base64.b64decode(json.loads(p.read_bytes())["body"])
              for p in (settings.storage_dir.parent / "broker" / "queue").glob("*.msg")]  # fmt: skip
    assert sum(job_id.encode() in b for b in bodies) == 1
