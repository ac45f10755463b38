"""Worker upkeep on SQLite and PostgreSQL: the sweep at start-up (Celery `worker_ready`) and
after each job retries the runs of dead workers and purges uploads; the heartbeat keeps a
quiet merge from being taken for one; the periodic sweeper and the beat task run it alone."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from worker_helpers import WorkerEnv, rewrite_request

from core import jobs
from core.db import session_scope
from core.models import MergeJob, Upload, utcnow
from core.uploads import create_upload, part_key, record_part
from worker.housekeeping import Heartbeat, sweep_at_start
from worker.tasks import run_merge

pytestmark = pytest.mark.timeout(300)
FAST = {"options": {"epochs": 1, "lr_grid": [1.0]}, "evaluate": False}


def lost_worker_job(env: WorkerEnv) -> str:
    """A job claimed by a worker that then died: no write for longer than the threshold."""
    job_id = env.submit(**FAST)
    past = utcnow() - timedelta(seconds=env.settings.stale_job_after_s + 60)
    with session_scope() as s:
        assert jobs.claim_job(s, job_id, "dead-worker")
        s.execute(update(MergeJob).where(MergeJob.id == job_id).values(updated_at=past))
    return job_id


def status(job_id: str) -> tuple[str, str | None]:
    with session_scope() as s:
        job = s.get(MergeJob, job_id)
        return job.status, job.error_code


def test_sweep_at_start_ends_lost_jobs_and_purges_uploads(worker_env: WorkerEnv) -> None:
    job_id = lost_worker_job(worker_env)
    storage = worker_env.storage
    with session_scope() as s:
        upload = create_upload(s, worker_env.settings, worker_env.tenant, filename="x.safetensors",
                               purpose="checkpoint", size=10, sha256=None)  # fmt: skip
        key = part_key(upload, 1)
        record_part(s, storage, upload, 1, key, *storage.write_stream(key, [b"12345"]))
        s.execute(update(Upload).where(Upload.id == upload.id).values(expires_at=utcnow()))
    orphan = f"uploads/{worker_env.tenant}/upload-gone-00001-0123456789ab.part"
    storage.write_stream(orphan, [b"left by a crash"])
    old = time.time() - worker_env.settings.upload_expiry_s - 60
    os.utime(storage.path(orphan), (old, old))

    sweep_at_start(sender=None)  # what Celery's worker_ready signal calls
    assert status(job_id) == ("queued", None)  # attempt 2 of 2 is waiting in the broker
    with session_scope() as s:
        assert s.get(Upload, upload.id).status == "expired"
    assert not storage.exists(key) and not storage.exists(orphan)


def test_each_job_run_is_followed_by_a_sweep(worker_env: WorkerEnv) -> None:
    lost = lost_worker_job(worker_env)
    # 3 tasks cannot have 5 sequential tasks: this job fails fast, then the worker sweeps.
    quick = worker_env.submit(options={"epochs": 1})
    rewrite_request(quick, options={"num_sequential": 5, "epochs": 1})
    assert run_merge.apply(args=[quick]).get() == "failed"
    assert status(lost) == ("queued", None)
    assert run_merge.apply(args=[lost]).get() == "succeeded"  # the retry, as attempt 2
    with session_scope() as s:
        assert s.get(MergeJob, lost).attempt == 2


def last_write_age_s(job_id: str) -> float:
    with session_scope() as s:
        return (utcnow() - s.get(MergeJob, job_id).updated_at).total_seconds()


def test_heartbeat_keeps_a_running_job_fresh(worker_env: WorkerEnv) -> None:
    job_id = lost_worker_job(worker_env)  # silent for longer than the threshold...
    with Heartbeat(job_id, interval_s=0.05) as beat:  # ...until its worker's heartbeat beats
        deadline = time.monotonic() + 10
        while last_write_age_s(job_id) > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        with session_scope() as s:
            assert job_id not in jobs.requeue_or_fail_stale(s)
    assert not beat._thread.is_alive()
    assert status(job_id) == ("running", None)
    with session_scope() as s:
        assert jobs.finish_job(s, job_id, "cancelled")
    with Heartbeat(job_id, interval_s=0.01) as beat:  # a finished job: the beat stops by itself
        beat._thread.join(timeout=5)
        assert not beat._thread.is_alive()


def test_the_periodic_sweeper_and_the_beat_task_run_by_themselves(worker_env: WorkerEnv) -> None:
    from core.housekeeping import PeriodicSweeper
    from worker.beat import HOUSEKEEPING_QUEUE, HOUSEKEEPING_TASK, create_beat_app

    app = create_beat_app()
    entry = app.conf.beat_schedule["housekeeping"]
    assert entry["task"] == HOUSEKEEPING_TASK and entry["options"]["queue"] == HOUSEKEEPING_QUEUE
    assert entry["schedule"] == worker_env.settings.reaper_period_s == 30.0  # min(900 / 2, 30)
    job_id = lost_worker_job(worker_env)
    assert app.tasks[HOUSEKEEPING_TASK].apply().get()["lost"] == {job_id: "requeued"}

    with session_scope() as s:  # lost again, on its last attempt: the loop fails it
        assert jobs.claim_attempt(s, job_id, "dead-again") == 2
    lost_again = utcnow() - timedelta(seconds=worker_env.settings.stale_job_after_s + 60)
    with session_scope() as s:
        s.execute(update(MergeJob).where(MergeJob.id == job_id).values(updated_at=lost_again))
    with PeriodicSweeper(interval_s=0.1) as sweeper:
        deadline = time.monotonic() + 30
        while status(job_id)[0] != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sweeper.passes >= 1 and status(job_id) == ("failed", "worker_lost")
