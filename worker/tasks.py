"""The one Celery task. The API sends it by name ("calm.run_merge"), never importing this.

Housekeeping (core.housekeeping) runs when the worker is ready and after each job it ran; the
lifecycle handlers (worker.lifecycle) release the job of a pool process that died and hand a
job back when the worker is shut down."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready

from core.queue import MERGE_TASK
from worker import lifecycle
from worker.celery_app import app
from worker.housekeeping import safe_sweep, sweep_at_start
from worker.runner import run_merge_job

worker_ready.connect(sweep_at_start, weak=False)
lifecycle.connect()


@app.task(name=MERGE_TASK, bind=True, ignore_result=True)
def run_merge(self: Any, job_id: str) -> str:
    """Claim the job (a duplicate delivery is a no-op), merge, store, record, finish, then
    sweep. A *redelivered* message (its worker died) may take over a job left `running` whose
    progress has been silent for settings.stale_job_after_s."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    status = run_merge_job(job_id, takeover_stale=redelivered)
    if status not in ("skipped", "handed_back"):  # no work done, or shutting down: no upkeep owed
        safe_sweep()
    return status
