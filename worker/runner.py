"""What `calm.run_merge` does, step by step; each step opens its own short DB session.

The merge itself runs outside any transaction: progress and cancellation go through
:class:`JobHooks`, which throttles both locally so a chatty merge costs few DB round trips.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from calm.result_files import RESULT_FILES
from core import jobs
from core.db import session_scope
from core.job_request import JobCreate
from core.models import MergeJob
from core.settings import get_settings
from core.storage import LocalStorage, get_storage
from worker.housekeeping import Heartbeat

log = logging.getLogger("calm.worker")
CANCEL_CHECK_INTERVAL_S = 0.5


class JobHooks:
    """`on_progress` / `should_cancel` callbacks for calm.merge, bound to one job."""

    def __init__(self, job_id: str, min_interval_s: float | None = None) -> None:
        self.job_id = job_id
        self.min_interval_s = (
            get_settings().progress_min_interval_s if min_interval_s is None else min_interval_s
        )
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._last_check = 0.0
        self._cancelled = False

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
                    min_interval_s=0.0 if changed else self.min_interval_s,
                )  # fmt: skip
        except SQLAlchemyError:  # a database hiccup must not kill a long merge
            log.warning("merge %s: progress not recorded", self.job_id, exc_info=True)
            return
        self._last_write, self._last_stage = now, p.stage

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            try:
                with session_scope() as s:
                    self._cancelled = jobs.is_cancel_requested(s, self.job_id)
            except SQLAlchemyError:  # asked again at the next check
                log.warning("merge %s: cancellation not checked", self.job_id, exc_info=True)
        return self._cancelled


def worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def claim(job_id: str, takeover_stale: bool = False) -> bool:
    """A redelivered message may take over a `running` job silent for settings.stale_job_after_s
    (its worker died; a live one writes progress every stage and a heartbeat every minute)."""
    with session_scope() as s:
        stale = get_settings().stale_job_after_s if takeover_stale else None
        return jobs.claim_job(s, job_id, worker_name(), stale_after_s=stale)


def build_spec(job_id: str, storage: LocalStorage, file_ids: bool = False) -> Any:
    """The job's calm.spec.MergeSpec, device from settings, its files as local paths (to run)
    or, with `file_ids`, as the job's file ids (what the result's spec.json records)."""
    from calm.spec import MergeSpec

    device = get_settings().worker_device
    with session_scope() as s:
        job = s.get(MergeJob, job_id)
        if job is None:
            raise LookupError(f"no merge job {job_id!r}")
        if file_ids:
            data = JobCreate.model_validate(job.request).to_spec_dict(str, device=device)
        else:
            data = jobs.spec_for_job(s, job, storage, device=device)
    return MergeSpec.model_validate(data)


def store_artifacts(job_id: str, result: Any, storage: LocalStorage, spec: Any = None) -> dict[str, str]:
    """calm.save_result into a temp folder inside storage, then one rename to the job's
    result folder, so readers never see a partial result. Returns name -> storage key of
    every file written (names as in calm.result_files.RESULT_FILES)."""
    from calm import save_result

    prefix = jobs.result_prefix(job_id)
    final = storage.path(prefix)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        written = save_result(result, tmp, spec)
        if final.exists():  # left by an earlier, interrupted attempt at this job
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: f"{prefix}/{RESULT_FILES[name]}" for name in written}


def record_outputs(job_id: str, result: Any, keys: dict[str, str]) -> None:
    """Mask rows (per task: the masks file + per-tensor density) and evaluation rows."""
    densities = result.mask_density()
    with session_scope() as s:
        for task, density in densities.items():
            numel = {name: int(m.numel()) for name, m in result.masks[task].items()}
            jobs.record_masks(s, job_id, task, keys["masks"], density, numel=numel)
        jobs.record_evaluations(s, job_id, result.report)


def finish(job_id: str, status: str, code: str | None = None, message: str | None = None,
           keys: dict[str, str] | None = None) -> bool:  # fmt: skip
    with session_scope() as s:
        return jobs.finish_job(s, job_id, status, code, message, result_paths=keys)


def discard_artifacts(job_id: str, storage: LocalStorage) -> None:
    storage.delete(jobs.result_prefix(job_id))


def run_merge_job(job_id: str, takeover_stale: bool = False) -> str:
    """Claim, merge, store, record, finish. Returns the final status ("skipped" when the job
    was not claimable: a duplicate delivery, a cancelled or a finished job)."""
    from celery.exceptions import SoftTimeLimitExceeded
    from pydantic import ValidationError

    from calm import CalmError, MergeCancelled, merge

    if not claim(job_id, takeover_stale):
        log.info("merge %s: not claimable (duplicate delivery or no longer queued)", job_id)
        return "skipped"
    storage = get_storage()
    hooks = JobHooks(job_id)
    keys: dict[str, str] | None = None
    try:
        with Heartbeat(job_id):  # keeps the job from looking abandoned in a long, quiet stage
            result = merge(build_spec(job_id, storage), hooks.on_progress, hooks.should_cancel)
            if hooks.should_cancel():
                raise MergeCancelled("cancelled after the merge finished")
            hooks.on_progress(_progress("save", 1.0, "storing artifacts"))
            keys = store_artifacts(job_id, result, storage, build_spec(job_id, storage, file_ids=True))
            record_outputs(job_id, result, keys)
        status, error = "succeeded", (None, None)
    except MergeCancelled:
        status, error = "cancelled", (None, None)
    except CalmError as e:
        status, error = "failed", (e.code, e.message)
    except ValidationError as e:
        status, error = "failed", ("invalid_spec", f"the job's spec is invalid: {e}")
    except SoftTimeLimitExceeded:
        limit = get_settings().job_time_limit_s
        status, error = "failed", ("time_limit_exceeded", f"the merge ran past {limit} s")
    except Exception as e:
        log.exception("merge %s failed unexpectedly", job_id)
        status, error = "failed", ("internal_error", f"internal error ({type(e).__name__}); "
                                   "the worker log has the traceback")  # fmt: skip
    if status != "succeeded":
        discard_artifacts(job_id, storage)
        keys = None
    finish(job_id, status, *error, keys=keys)
    log.info("merge %s: %s%s", job_id, status, f" ({error[0]}: {error[1]})" if error[0] else "")
    return status


def _progress(stage: str, fraction: float, message: str) -> Any:
    from calm.progress import Progress

    return Progress(stage, fraction, message)
