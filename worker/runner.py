"""What `calm.run_merge` does, step by step; each step opens its own short DB session.

The merge itself runs outside any transaction: progress and cancellation go through
:class:`JobHooks`, which throttles both locally so a chatty merge costs few DB round trips.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core import jobs, outbox
from core.db import session_scope
from core.job_plan import service_run
from core.job_request import JobCreate
from core.models import MergeJob
from core.queue import QueueUnavailable
from core.settings import get_settings
from core.storage import Storage, get_storage
from worker import lifecycle
from worker.housekeeping import Heartbeat
from worker.lifecycle import worker_name

log = logging.getLogger("calm.worker")
CANCEL_CHECK_INTERVAL_S = 0.5
MERGE_SHARE = 0.98  # of a job's progress; storing the artifacts ("save") is the rest, "done" the end


class JobHooks:
    """`on_progress` / `should_cancel` callbacks for calm.merge, bound to one job's attempt.
    `should_cancel` is also how a worker that is shutting down stops the merge (handback)."""

    def __init__(self, job_id: str, min_interval_s: float | None = None, attempt: int | None = None) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.min_interval_s = (
            get_settings().progress_min_interval_s if min_interval_s is None else min_interval_s
        )
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_check = 0.0
        self._cancelled = False

    def merge_progress(self, p: Any) -> None:
        """The library's progress (its last stage is "merged" at 1.0), scaled into the merge's
        share of the job: the worker's own "save" follows, and finish_job's "done" ends it."""
        self.on_progress(_progress(p.stage, p.fraction * MERGE_SHARE, p.message, p.metrics))

    def on_progress(self, p: Any) -> None:
        """calm.progress.Progress -> job stage/progress + an event (stage changes always)."""
        now = time.monotonic()
        changed = p.stage != self._last_stage
        if not changed and p.fraction < 1.0 and now - self._last_write < self.min_interval_s:
            return
        try:
            with session_scope() as s:
                jobs.update_progress(
                    s, self.job_id, p.stage, p.fraction, p.message, dict(p.metrics),
                    min_interval_s=0.0 if changed else self.min_interval_s, attempt=self.attempt,
                )  # fmt: skip
        except SQLAlchemyError:  # a database hiccup must not kill a long merge
            log.warning("merge %s: progress not recorded", self.job_id, exc_info=True)
            return
        self._last_write, self._last_stage = now, p.stage

    def should_cancel(self) -> bool:
        return self.cancel_requested() or lifecycle.handback_due()

    def cancel_requested(self) -> bool:
        """The user asked to cancel (checked in the database at most every 0.5 s)."""
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            try:
                with session_scope() as s:
                    self._cancelled = jobs.is_cancel_requested(s, self.job_id)
            except SQLAlchemyError:  # asked again at the next check
                log.warning("merge %s: cancellation not checked", self.job_id, exc_info=True)
        return self._cancelled


def claim(job_id: str, takeover_stale: bool = False) -> int | None:
    """The attempt number, if this worker got the job. A redelivered message may take over a
    `running` job silent for settings.stale_job_after_s (its worker died; a live one writes
    progress every stage and a heartbeat every minute) that has attempts left."""
    with session_scope() as s:
        stale = get_settings().stale_job_after_s if takeover_stale else None
        return jobs.claim_attempt(s, job_id, worker_name(), stale_after_s=stale)


def build_spec(job_id: str, storage: Storage) -> tuple[Any, Any, JobCreate]:
    """The job's spec with its files as local paths (a cached download on object storage), the
    run options (core.job_plan.service_run: this worker's device and data cap, the request's
    batch sizes and precision), and the request with file ids (what spec.json records)."""
    from calm.spec import MergeRequest

    with session_scope() as s:
        job = s.get(MergeJob, job_id)
        if job is None:
            raise LookupError(f"no merge job {job_id!r}")
        by_id = JobCreate.from_stored(job.request)
        local = MergeRequest.model_validate(jobs.spec_for_job(s, job, storage))
    run, _ = service_run(local.run, get_settings())
    return local, run, by_id


def store_artifacts(job_id: str, attempt: int, result: Any, storage: Storage,
                    spec: Any = None) -> dict[str, str]:
    """calm.save_result into a staging folder, then each file to the attempt's result prefix
    (a rename on local storage, a streamed multipart upload on S3). Nothing points at these
    keys until finish_job commits them, so readers never see a partial result. Returns
    name -> storage key of every file written (names as in calm.result_files.RESULT_FILES)."""
    from calm import save_result

    prefix = jobs.result_prefix(job_id, attempt)
    tmp = Path(tempfile.mkdtemp(dir=storage.staging_dir(), prefix=f"{job_id}-"))
    try:
        paths = {name: Path(p) for name, p in save_result(result, tmp, spec).items()}
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            storage.put_file(f"{prefix}/{file.relative_to(tmp).as_posix()}", file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: f"{prefix}/{p.relative_to(tmp).as_posix()}" for name, p in paths.items()}


def record_outputs(job_id: str, result: Any, keys: dict[str, str]) -> None:
    """Mask rows (per task: the masks file + per-tensor density) and evaluation rows."""
    densities, overall = result.mask_density(), result.overall_density()
    with session_scope() as s:
        for task, density in densities.items():
            jobs.record_masks(s, job_id, task, keys["masks"], density, overall[task])
        jobs.record_evaluations(s, job_id, result.report)


def finish(job_id: str, attempt: int, status: str, code: str | None = None, message: str | None = None,
           keys: dict[str, str] | None = None) -> bool:  # fmt: skip
    with session_scope() as s:
        return jobs.finish_job(s, job_id, status, code, message, result_paths=keys, attempt=attempt)


def hand_back(job_id: str, attempt: int) -> None:
    """Returns the job to the queue (the worker is shutting down) and publishes it again."""
    reason = f"the worker shut down; the run went past its {get_settings().worker_shutdown_grace_s:g} s grace"
    with session_scope() as s:
        if jobs.hand_back(s, job_id, attempt, reason):
            try:
                outbox.publish_job(s, job_id)
            except QueueUnavailable:
                log.warning("merge %s handed back; the broker is down, the outbox will publish it", job_id)


def run_merge_job(job_id: str, takeover_stale: bool = False) -> str:
    """Claim, merge, store, record, finish. Returns the final status ("skipped" when the job
    was not claimable: a duplicate delivery, a cancelled or a finished job; "handed_back" when
    the worker is shutting down and the job was returned to the queue)."""
    from pydantic import ValidationError

    from calm import CalmError, MergeCancelled, merge

    attempt = claim(job_id, takeover_stale)
    if attempt is None:
        log.info("merge %s: not claimable (duplicate delivery or no longer queued)", job_id)
        return "skipped"
    storage = get_storage()
    hooks = JobHooks(job_id, attempt=attempt)
    keys: dict[str, str] | None = None
    try:
        with Heartbeat(job_id, attempt=attempt):  # keeps a long, quiet stage from looking abandoned
            spec, run, by_id = build_spec(job_id, storage)
            result = merge(spec, run=run, on_progress=hooks.merge_progress, should_cancel=hooks.should_cancel)
            if hooks.cancel_requested():
                raise MergeCancelled("cancelled after the merge finished")
            hooks.on_progress(_progress("save", MERGE_SHARE, "storing artifacts"))
            keys = store_artifacts(job_id, attempt, result, storage, by_id)
            record_outputs(job_id, result, keys)
        status, error = "succeeded", (None, None)
    except MergeCancelled:
        if lifecycle.shutdown_requested() and not hooks.cancel_requested():
            hand_back(job_id, attempt)
            log.warning("merge %s: handed back (worker shutting down)", job_id)
            return "handed_back"
        status, error = "cancelled", (None, None)
    except (CalmError, ValidationError) as e:
        status, error = "failed", _error_of(e)
    except Exception as e:
        status, error = "failed", _unexpected(job_id, e)
    if status != "succeeded":
        keys = None
    finished = finish(job_id, attempt, status, *error, keys=keys)
    if not finished:  # another attempt took over meanwhile: drop only what this one stored
        storage.delete(jobs.result_prefix(job_id, attempt))
    elif status != "succeeded":  # the job is over without a result: keep none of its files
        storage.delete(jobs.result_prefix(job_id))
    for earlier in range(1, attempt if finished and status == "succeeded" else 1):
        storage.delete(jobs.result_prefix(job_id, earlier))  # what lost runs had begun to store
    log.info("merge %s: %s%s", job_id, status, f" ({error[0]}: {error[1]})" if error[0] else "")
    return status


def _error_of(e: Exception) -> tuple[str, str]:
    from pydantic import ValidationError

    from calm import CalmError
    from calm.spec_errors import explain

    if isinstance(e, CalmError):
        return e.code, e.message
    problems = explain(e, model=JobCreate) if isinstance(e, ValidationError) else [e]
    return "invalid_spec", "the job's spec is invalid: " + "; ".join(map(str, problems))


def _unexpected(job_id: str, e: Exception) -> tuple[str, str]:
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(e, SoftTimeLimitExceeded):
        return "time_limit_exceeded", f"the merge ran past {get_settings().job_time_limit_s} s"
    log.exception("merge %s failed unexpectedly", job_id)
    return "internal_error", f"internal error ({type(e).__name__}); the worker log has the traceback"


def _progress(stage: str, fraction: float, message: str, metrics: dict[str, float] | None = None) -> Any:
    from calm.progress import Progress

    return Progress(stage, fraction, message, dict(metrics or {}))
