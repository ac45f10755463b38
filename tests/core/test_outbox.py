"""The enqueue outbox (core.outbox) on SQLite and PostgreSQL with the filesystem broker: a job
committed but never published (the API died in between) is published by the sweeper; a
duplicate publication stays a no-op for the claim; the stamp is fenced by the attempt."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from sqlalchemy import update
from test_stale_jobs import age, new_job, row

from core import jobs, outbox
from core.housekeeping import reap_and_publish
from core.models import MergeJob


def published_ids(broker_dir: Path) -> list[str]:
    bodies = [json.loads(base64.b64decode(json.loads(p.read_bytes())["body"]))
              for p in (broker_dir / "queue").glob("*.msg")]  # fmt: skip
    return [body[0][0] for body in bodies]


def test_a_stranded_job_is_published_by_the_sweeper(session, storage, settings, tenant, cli_env) -> None:
    broker = settings.storage_dir.parent / "broker"
    job_id = new_job(session, storage, settings, tenant)  # committed; the API died before publishing
    assert row(session, job_id).published_at is None
    assert job_id not in outbox.publish_pending(session, grace_s=60)  # the API may still be at it
    age(session, job_id, 61)
    assert job_id in reap_and_publish(session)[1]
    assert row(session, job_id).published_at is not None and published_ids(broker).count(job_id) == 1
    assert job_id not in outbox.publish_pending(session, grace_s=0)  # stamped: published once

    # A crash after the send but before the stamp: published twice, claimed once.
    session.execute(update(MergeJob).where(MergeJob.id == job_id).values(published_at=None))
    session.commit()
    assert job_id in outbox.publish_pending(session, grace_s=0)
    assert published_ids(broker).count(job_id) == 2
    assert jobs.claim_job(session, job_id, "w1") and not jobs.claim_job(session, job_id, "w2")
    assert not outbox.publish_job(session, job_id)  # running: nothing to publish


def test_a_late_stamp_never_marks_a_requeued_job(session, storage, settings, tenant, cli_env) -> None:
    job_id = new_job(session, storage, settings, tenant)
    assert jobs.claim_attempt(session, job_id, "w1") == 1
    age(session, job_id, settings.stale_job_after_s + 60)
    assert jobs.requeue_or_fail_stale(session)[job_id] == "requeued"
    # An API stamp from before the first claim (attempt 0) arrives only now: it must not match.
    stale_stamp = update(MergeJob).where(MergeJob.id == job_id, MergeJob.attempt == 0,
                                         MergeJob.published_at.is_(None))  # fmt: skip
    assert session.execute(stale_stamp.values(published_at=None)).rowcount == 0
    session.rollback()
    assert outbox.publish_job(session, job_id) and row(session, job_id).published_at is not None
