"""core.jobs against real databases: claim, events, progress, cancel, finish, results, spec."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from svc_fixtures import core_job_files, merge_body

from calm.spec import MergeRequest
from core import jobs
from core.errors import ServiceError
from core.job_request import JobCreate
from core.models import Evaluation, JobEvent, MergeJob, utcnow
from core.settings import Settings
from core.storage import LocalStorage


def new_job(session: Session, storage: LocalStorage, settings: Settings, tenant: str) -> MergeJob:
    ids = core_job_files(session, storage, settings, tenant)
    body = JobCreate.model_validate(merge_body(ids["base"], ids["checkpoints"], ids["datasets"]))
    job, created = jobs.create_job(session, tenant, body, settings=settings)
    assert created and job.status == "queued"
    return job


def seqs(session: Session, job_id: str) -> list[int]:
    return list(session.scalars(select(JobEvent.seq).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_create_job_stores_explicit_options_and_events(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    assert job.request["options"]["epochs"] == 2  # given
    assert job.request["options"]["ratio"] == 0.9  # default made explicit
    roles = {f"tasks.{i}.{kind}" for i in (0, 1) for kind in ("checkpoint", "unlabeled")}
    assert {f.role for f in job.files} == {"model.checkpoint", *roles}
    assert seqs(session, job.id) == [1, 2]


def test_claim_job_is_idempotent(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    assert jobs.claim_job(session, job.id, "w1") is True
    assert jobs.claim_job(session, job.id, "w1") is False  # redelivered message
    assert jobs.claim_job(session, job.id, "w2") is False
    row = session.get(MergeJob, job.id, populate_existing=True)
    assert (row.status, row.worker_id, row.stage) == ("running", "w1", "starting")
    assert row.started_at is not None
    # A running job whose worker went silent can be taken over, a fresh one cannot.
    assert jobs.claim_job(session, job.id, "w3", stale_after_s=3600) is False
    session.execute(
        update(MergeJob).where(MergeJob.id == job.id).values(updated_at=utcnow() - timedelta(hours=2))
    )
    session.commit()
    assert jobs.claim_job(session, job.id, "w3", stale_after_s=3600) is True


def test_concurrent_claims_have_one_winner(
    factory: sessionmaker[Session], session, storage, settings, tenant
) -> None:
    job = new_job(session, storage, settings, tenant)
    n = 8
    barrier = threading.Barrier(n)
    results: list[bool] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        with factory() as s:
            barrier.wait()
            won = jobs.claim_job(s, job.id, f"w{i}")
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * (n - 1) + [True]


def test_concurrent_events_get_gap_free_seqs(
    factory: sessionmaker[Session], session, storage, settings, tenant
) -> None:
    job = new_job(session, storage, settings, tenant)
    n, per = 4, 10
    barrier = threading.Barrier(n)

    def write(i: int) -> None:
        with factory() as s:
            barrier.wait()
            for k in range(per):
                jobs.append_event(s, job.id, f"thread {i} event {k}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seqs(session, job.id) == list(range(1, 2 + n * per + 1))


def test_update_progress_is_throttled_except_on_stage_change(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    assert jobs.update_progress(session, job.id, "load", 0.1, "before claim") is False  # not running
    jobs.claim_job(session, job.id, "w")
    assert jobs.update_progress(session, job.id, "load", 0.1, min_interval_s=60) is True
    assert jobs.update_progress(session, job.id, "load", 0.2, min_interval_s=60) is False
    assert (
        jobs.update_progress(
            session, job.id, "mask:task0", 0.5, "epoch 1", {"loss": 1.5, "bad": float("nan")}
        )
        is True
    )
    assert jobs.update_progress(session, job.id, "mask:task0", 0.6, min_interval_s=0) is True
    row = session.get(MergeJob, job.id, populate_existing=True)
    assert (row.stage, row.progress) == ("mask:task0", 0.6)
    last = jobs.list_events(session, job.id, after_seq=0)[-2]
    assert (last.stage, last.fraction, last.metrics) == ("mask:task0", 0.5, {"loss": 1.5, "bad": None})


def test_cancel_lifecycle(session, storage, settings, tenant) -> None:
    queued = new_job(session, storage, settings, tenant)
    assert jobs.cancel_job(session, tenant, queued.id).status == "cancelled"
    assert jobs.claim_job(session, queued.id, "w") is False
    running = new_job(session, storage, settings, tenant)
    jobs.claim_job(session, running.id, "w")
    assert jobs.is_cancel_requested(session, running.id) is False
    job = jobs.cancel_job(session, tenant, running.id)
    assert (job.status, job.cancel_requested) == ("running", True)
    assert jobs.is_cancel_requested(session, running.id) is True
    assert jobs.finish_job(session, running.id, "cancelled") is True
    with pytest.raises(ServiceError) as e:
        jobs.cancel_job(session, tenant, running.id)
    assert (e.value.status, e.value.code) == (409, "job_already_finished")
    with pytest.raises(ServiceError) as e:
        jobs.cancel_job(session, "tenant-other", running.id)
    assert e.value.status == 404


def test_finish_records_results_once(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    jobs.claim_job(session, job.id, "w")
    prefix = jobs.result_prefix(job.id)
    paths = {"merged": storage.path(f"{prefix}/merged.safetensors"), "masks": f"{prefix}/masks.safetensors"}
    assert jobs.finish_job(session, job.id, "succeeded", result_paths=paths, storage=storage) is True
    assert jobs.finish_job(session, job.id, "failed", "boom", "late failure") is False
    row = session.get(MergeJob, job.id, populate_existing=True)
    assert (row.status, row.progress, row.error_code) == ("succeeded", 1.0, None)
    assert (row.result_key, row.masks_key) == (f"{prefix}/merged.safetensors", f"{prefix}/masks.safetensors")
    failed = new_job(session, storage, settings, tenant)
    assert jobs.finish_job(session, failed.id, "failed", "invalid_data", "head has NaN")
    row = session.get(MergeJob, failed.id, populate_existing=True)
    assert (row.status, row.error_code, row.error_message) == ("failed", "invalid_data", "head has NaN")
    assert jobs.list_events(session, failed.id)[-1].level == "error"


def test_masks_and_evaluations(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    overall = jobs.record_masks(session, job.id, "task0", "results/x/masks.safetensors", {"a": 0.5, "b": 0.0},
                                0.375)  # fmt: skip
    assert overall == pytest.approx(0.375)
    assert jobs.record_masks(session, job.id, "task0", "k", {"a": 1.0}, 1.0) == 1.0  # replaced
    report = {
        "accuracy": {"merged": {"task0": 0.9, "task1": 0.8, "average": 0.85}, "zero_shot": {"task0": 0.5}},
        "samples": {"task0": 100, "task1": 50},
    }
    assert jobs.record_evaluations(session, job.id, report) == 3
    rows = session.scalars(
        select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.model_kind)
    ).all()
    assert [(r.model_kind, r.task, r.accuracy, r.sample_count) for r in rows] == [
        ("merged", "task0", 0.9, 100), ("merged", "task1", 0.8, 50), ("zero_shot", "task0", 0.5, 100),
    ]  # fmt: skip


def test_spec_for_job_is_a_valid_merge_spec_with_local_paths(session, storage, settings, tenant) -> None:
    job = new_job(session, storage, settings, tenant)
    spec = MergeRequest.model_validate(jobs.spec_for_job(session, job, storage))
    assert spec.seed == 7 and spec.method_options().epochs == 2
    assert spec.model.checkpoint.is_file() and spec.model.checkpoint.suffix == ".safetensors"
    assert all(t.unlabeled.is_file() and t.checkpoint.is_file() for t in spec.tasks)
    assert spec.model.custom_config is not None


def test_idempotency_key_is_per_tenant_and_body(session, storage, settings, tenant) -> None:
    ids = core_job_files(session, storage, settings, tenant)
    body = JobCreate.model_validate(merge_body(ids["base"], ids["checkpoints"], ids["datasets"]))
    first, created = jobs.create_job(session, tenant, body, idempotency_key="k1", settings=settings)
    again, created_again = jobs.create_job(session, tenant, body, idempotency_key="k1", settings=settings)
    assert created and not created_again and again.id == first.id
    with pytest.raises(ServiceError) as e:
        jobs.create_job(
            session, tenant, body.model_copy(update={"seed": 8}), idempotency_key="k1", settings=settings
        )
    assert (e.value.status, e.value.code) == (409, "idempotency_conflict")
