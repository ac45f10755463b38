"""The periodic sweep in production: Celery beat + the `housekeeping` queue (no torch here).

    celery -A worker.beat worker --beat -Q housekeeping --pool solo --concurrency 1

(docker-compose's `beat` service). Beat sends `calm.housekeeping` every
settings.reaper_period_s (stale_job_after_s / 2, at most 30 s); the same process consumes it
from its own queue, so a sweep never waits behind a merge on a busy GPU worker. Messages
expire after one period: a sweeper that was down does not face a backlog. Run one such
service (a second one is harmless, every step being idempotent, but does nothing useful).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.housekeeping import safe_sweep
from core.queue import make_celery
from core.settings import get_settings

HOUSEKEEPING_TASK = "calm.housekeeping"
HOUSEKEEPING_QUEUE = "housekeeping"


def create_beat_app() -> Celery:
    app = make_celery("calm-beat")
    period = get_settings().reaper_period_s
    app.conf.update(
        task_default_queue=HOUSEKEEPING_QUEUE,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        beat_schedule={
            "housekeeping": {
                "task": HOUSEKEEPING_TASK,
                "schedule": period,
                "options": {"queue": HOUSEKEEPING_QUEUE, "expires": period},
            }
        },
    )
    app.task(name=HOUSEKEEPING_TASK, ignore_result=True)(housekeeping)
    return app


def housekeeping() -> dict[str, Any]:
    """One sweep (core.housekeeping.sweep); returns what it did."""
    result = safe_sweep()
    return {} if result is None else {"lost": result.lost_jobs, "published": result.published}


app = create_beat_app()
