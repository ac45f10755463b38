"""The one Celery task. The API sends it by name ("calm.run_merge"), never importing this."""

from __future__ import annotations

from typing import Any

from core.queue import MERGE_TASK
from worker.celery_app import app
from worker.runner import run_merge_job


@app.task(name=MERGE_TASK, bind=True, ignore_result=True)
def run_merge(self: Any, job_id: str) -> str:
    """Claim the job (a duplicate delivery is a no-op), merge, store, record, finish.
    A *redelivered* message (its worker died) may take over a job left `running` whose
    progress has been silent for `runner.STALE_AFTER_S`."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return run_merge_job(job_id, takeover_stale=redelivered)
