"""`calm.run_merge` executed for real (through Celery's task machinery, in this process) on
the tiny digits suite: success, duplicate delivery, cancellation, library and internal errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from worker_helpers import WorkerEnv, offline_merge, rewrite_request, suite_spec

from calm.result_files import RESULT_FILES
from core import jobs
from core.db import session_scope
from core.models import Evaluation, JobEvent, Mask, MergeJob
from core.settings import get_settings
from worker import runner
from worker.tasks import run_merge

pytestmark = pytest.mark.timeout(300)


def run(job_id: str) -> str:
    """One delivery of the task message, as a worker would execute it."""
    return run_merge.apply(args=[job_id]).get()


def job_row(job_id: str) -> MergeJob:
    with session_scope() as s:
        return s.get(MergeJob, job_id)


def rows(model: Any, job_id: str) -> list[Any]:
    with session_scope() as s:
        return list(s.scalars(select(model).where(model.job_id == job_id)))


def events(job_id: str) -> list[JobEvent]:
    return sorted(rows(JobEvent, job_id), key=lambda e: e.seq)


def test_success_stores_artifacts_rows_and_events(worker_env: WorkerEnv) -> None:
    job_id = worker_env.submit()
    assert run(job_id) == "succeeded"

    job = job_row(job_id)
    assert (job.status, job.stage, job.progress, job.error_code) == ("succeeded", "done", 1.0, None)
    assert job.started_at is not None and job.finished_at >= job.started_at
    storage = worker_env.storage
    prefix = jobs.result_prefix(job_id, 1)
    assert job.attempt == 1 and prefix == f"results/{job_id}/attempt-1"
    assert (job.result_key, job.masks_key, job.report_key) == (
        f"{prefix}/merged.safetensors", f"{prefix}/masks.safetensors", f"{prefix}/report.json")
    assert all(storage.exists(k) for k in (job.result_key, job.masks_key, job.report_key))
    assert {p.name for p in storage.path(prefix).iterdir()} == set(RESULT_FILES.values())
    recorded = json.loads(storage.path(f"{prefix}/spec.json").read_text())
    assert recorded["model"]["checkpoint"] == job_row(job_id).request["model"]["checkpoint"]  # a file id
    leftovers = list(storage.staging_dir().iterdir())
    assert leftovers == [], "the staging folder of the result was not cleaned up"

    # The stored checkpoint is exactly the library's offline result for the same spec.
    expected = offline_merge(suite_spec(worker_env.suite))
    merged = load_file(str(storage.path(job.result_key)))
    assert merged.keys() == expected.state_dict.keys()
    assert all(torch.equal(merged[k], v) for k, v in expected.state_dict.items())

    masks = {m.task: m for m in rows(Mask, job_id)}
    assert set(masks) == set(expected.masks) and len(masks) >= 1
    for task, m in masks.items():
        assert m.storage_key == job.masks_key
        assert m.density == pytest.approx(expected.mask_density()[task])
        assert 0.0 < m.overall_density < 1.0
    evals = {(e.model_kind, e.task): e for e in rows(Evaluation, job_id)}
    tasks = [t.name for t in worker_env.suite.tasks]
    assert set(evals) == {(k, t) for k in ("zero_shot", "individual", "merged") for t in tasks}
    for (kind, task), e in evals.items():
        assert e.accuracy == pytest.approx(expected.report["accuracy"][kind][task])
        assert e.sample_count == expected.report["samples"][task] > 0

    log = events(job_id)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    stages = [e.stage for e in log]
    assert stages[:3] == ["validating", "queued", "starting"]
    assert "pseudo_labels" in stages and any(s and s.startswith("mask:") for s in stages)
    changes = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    assert changes[3] == "load" and changes[-3:] == ["merged", "save", "done"], changes
    assert stages.count("done") == 1 and len(changes) == len(set(changes) - {"evaluate"}) + \
        changes.count("evaluate")  # stages in order: none comes back (evaluate: once per merge)
    assert log[-1].message == "succeeded" and log[-1].fraction == 1.0
    fractions = [e.fraction for e in log if e.fraction is not None]
    assert fractions == sorted(fractions), "progress went backwards"


def test_duplicate_delivery_is_a_no_op(worker_env: WorkerEnv) -> None:
    job_id = worker_env.submit(options={"epochs": 1, "lr_grid": [1.0]}, evaluate=False)
    assert run(job_id) == "succeeded"
    before = (job_row(job_id).finished_at, len(events(job_id)))
    assert run(job_id) == "skipped"  # the same message delivered again
    assert (job_row(job_id).finished_at, len(events(job_id))) == before
    assert job_row(job_id).status == "succeeded"

    # A redelivery while the first worker still runs the job: the claim fails, nothing runs.
    other = worker_env.submit(options={"epochs": 1, "lr_grid": [1.0]}, evaluate=False, seed=5)
    with session_scope() as s:
        assert jobs.claim_job(s, other, "first-worker")
    assert run(other) == "skipped"
    job = job_row(other)
    assert (job.status, job.worker_id, job.result_key) == ("running", "first-worker", None)


def test_cancel_during_merge_stops_it_without_artifacts(
    worker_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = worker_env.submit()
    original = runner.JobHooks.on_progress

    def on_progress(self: runner.JobHooks, p: Any) -> None:
        original(self, p)
        if p.stage.startswith("mask:"):  # the user cancels over the API mid-optimisation
            with session_scope() as s:
                jobs.cancel_job(s, worker_env.tenant, job_id)
            self._last_check = 0.0  # next check goes to the database

    monkeypatch.setattr(runner.JobHooks, "on_progress", on_progress)
    assert run(job_id) == "cancelled"
    job = job_row(job_id)
    assert (job.status, job.cancel_requested, job.result_key) == ("cancelled", True, None)
    assert not worker_env.storage.path(jobs.result_prefix(job_id)).exists()
    assert rows(Mask, job_id) == [] and rows(Evaluation, job_id) == []
    messages = [e.message for e in events(job_id)]
    assert "cancellation requested" in messages and messages[-1] == "cancelled"
    assert not any(m.startswith("evaluat") for m in messages), "the merge ran on after cancel"


def test_cancelled_before_start_is_never_run(worker_env: WorkerEnv) -> None:
    job_id = worker_env.submit()
    with session_scope() as s:
        jobs.cancel_job(s, worker_env.tenant, job_id)
    assert run(job_id) == "skipped"
    assert job_row(job_id).status == "cancelled"
    assert [e.stage for e in events(job_id)].count("starting") == 0


def test_library_error_fails_the_job_with_its_code(worker_env: WorkerEnv) -> None:
    # 3 tasks cannot have 5 sequential tasks: the API refuses it, but a job queued before
    # that rule existed reaches the worker, which re-validates and fails it cleanly.
    job_id = worker_env.submit(options={"epochs": 1})
    rewrite_request(job_id, options={"num_sequential": 5, "epochs": 1})
    assert run(job_id) == "failed"
    job = job_row(job_id)
    assert job.error_code == "invalid_spec"
    assert "options.num_sequential: must be between 1 and T−1" in job.error_message and job.result_key is None
    assert events(job_id)[-1].level == "error"
    assert not worker_env.storage.path(jobs.result_prefix(job_id)).exists()


def test_corrupted_input_fails_with_a_data_error(worker_env: WorkerEnv) -> None:
    job_id = worker_env.submit(options={"epochs": 1})
    with session_scope() as s:
        spec = jobs.spec_for_job(s, s.get(MergeJob, job_id), worker_env.storage)
    path = spec["tasks"][1]["unlabeled"]
    with open(path, "r+b") as f:  # storage rot after validation: header now garbage
        f.write(b"\xff" * 64)
    assert run(job_id) == "failed"
    job = job_row(job_id)
    file_id = Path(path).stem
    assert job.error_code == "invalid_data" and file_id in job.error_message, job.error_message


def test_unexpected_exception_is_internal_error(
    worker_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import calm

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(calm, "merge", boom)
    job_id = worker_env.submit()
    assert run(job_id) == "failed"
    job = job_row(job_id)
    assert job.error_code == "internal_error"
    assert "RuntimeError" in job.error_message and "disk on fire" not in job.error_message
    assert "disk on fire" in caplog.text  # the traceback is in the worker log


def test_redelivery_takes_over_only_a_stale_running_job(worker_env: WorkerEnv) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from core.models import utcnow

    job_id = worker_env.submit(options={"epochs": 1, "lr_grid": [1.0]}, evaluate=False)
    with session_scope() as s:
        assert jobs.claim_job(s, job_id, "dead-worker")
    assert runner.run_merge_job(job_id, takeover_stale=True) == "skipped"  # still fresh
    with session_scope() as s:  # the dead worker's last progress write was long ago
        past = utcnow() - timedelta(seconds=get_settings().stale_job_after_s + 60)
        s.execute(update(MergeJob).where(MergeJob.id == job_id).values(updated_at=past))
    assert run(job_id) == "skipped"  # a plain duplicate never takes over
    assert runner.run_merge_job(job_id, takeover_stale=True) == "succeeded"
    job = job_row(job_id)
    assert job.worker_id != "dead-worker" and job.result_key is not None
