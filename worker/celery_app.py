"""The worker's Celery app: the queue client's broker config plus at-least-once delivery.

- ``task_acks_late``: a message is acknowledged only after the task returns, so a job whose
  whole worker died is redelivered (after the Redis visibility timeout); the task's
  idempotent claim (``UPDATE ... WHERE status='queued'``) makes a second delivery a no-op.
- ``task_reject_on_worker_lost`` is off: when only the pool process dies, the main process
  acknowledges the message and worker.lifecycle requeues the job as its next attempt and
  publishes it afresh (the original message, redelivered while the row still said `running`,
  would only be skipped).
- ``worker_prefetch_multiplier=1``: a busy worker holds no queued jobs another could run.
- Time limits from settings: the soft limit raises inside the merge (the job fails with
  ``time_limit_exceeded``), the hard limit kills the child a minute later.
"""

from __future__ import annotations

from celery import Celery

from core.queue import MERGE_QUEUE, make_celery
from core.settings import get_settings

HARD_LIMIT_GRACE_S = 60


def create_worker_app() -> Celery:
    app = make_celery("calm-worker")
    limit = get_settings().job_time_limit_s
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=limit,
        task_time_limit=limit + HARD_LIMIT_GRACE_S,
        task_default_queue=MERGE_QUEUE,
        task_create_missing_queues=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
        imports=("worker.tasks",),
    )
    return app


app = create_worker_app()
